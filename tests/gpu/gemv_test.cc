// Small-batch GEMV kernels (decode steps) against the CPU fp32 GEMM (and SwiGLU) on the same
// bf16-rounded inputs, at the projection shapes of the real model and of Llama-3-8B; with and
// without programmatic dependent launch (same bits), and their argument checks. The fused
// RMSNorm + GEMV kernels against the CPU RMSNorm, bf16 rounding, then the CPU GEMM (+ SwiGLU).
#include "kernels/cuda/gemv.cuh"

#include <algorithm>
#include <cmath>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/rms_norm.h"
#include "kernels/cpu/swiglu.h"
#include "tests/gpu/gpu_test_util.h"

namespace xkv::gpu_test {
namespace {

struct GemvCase {
  int64_t m, n, k;
};

class GemvTest : public ::testing::TestWithParam<GemvCase> {};

// Tolerance as GemmTest: inputs in [-1, 1], fp32 accumulation over k terms in different orders.
TEST_P(GemvTest, MatchesCpu) {
  XKV_SKIP_WITHOUT_GPU();
  const GemvCase c = GetParam();
  const int64_t ldx = c.k + 8, ldy = c.n + 4;  // padded rows, as the engine's buffers may be
  const std::vector<float> x = RoundBf16(RandomVector(c.m * ldx, 1));
  const std::vector<float> w = RoundBf16(RandomVector(c.n * c.k, 2));
  const std::vector<float> y0 = RandomVector(c.m * ldy, 3);
  std::vector<float> want = y0;
  XKV_ASSERT_OK(cpu::LaunchGemm(x.data(), ldx, w.data(), c.k, want.data(), ldy, c.m, c.n, c.k,
                                /*accumulate=*/true));
  DeviceBuffer<__nv_bfloat16> d_x(ToBf16Bits(x)), d_w(ToBf16Bits(w));
  const float atol = 1e-4f * std::sqrt(static_cast<float>(c.k));
  std::vector<float> results[2];
  for (bool pdl : {false, true}) {
    DeviceBuffer<float> d_y(y0);
    XKV_ASSERT_OK(cuda::LaunchGemv(d_x.get(), ldx, d_w.get(), c.k, d_y.get(), ldy, c.m, c.n, c.k,
                                   /*accumulate=*/true, pdl, nullptr));
    results[pdl] = d_y.Download();
    EXPECT_TRUE(AllClose(results[pdl], want, atol, 1e-4f)) << "pdl " << pdl;
  }
  EXPECT_EQ(results[0], results[1]);
  std::vector<float> plain(c.m * ldy, 0.f);
  XKV_ASSERT_OK(cpu::LaunchGemm(x.data(), ldx, w.data(), c.k, plain.data(), ldy, c.m, c.n, c.k,
                                /*accumulate=*/false));
  DeviceBuffer<float> d_p(std::vector<float>(c.m * ldy, 0.f));
  XKV_ASSERT_OK(cuda::LaunchGemv(d_x.get(), ldx, d_w.get(), c.k, d_p.get(), ldy, c.m, c.n, c.k,
                                 /*accumulate=*/false, false, nullptr));
  EXPECT_TRUE(AllClose(d_p.Download(), plain, atol, 1e-4f));
}

INSTANTIATE_TEST_SUITE_P(ModelShapes, GemvTest,
                         ::testing::Values(GemvCase{1, 960, 576}, GemvCase{3, 576, 576},
                                           GemvCase{2, 576, 1536}, GemvCase{4, 49152, 576},
                                           GemvCase{8, 960, 576}, GemvCase{8, 49152, 576},
                                           GemvCase{5, 576, 1536}, GemvCase{7, 4096, 4096},
                                           GemvCase{6, 77, 1032}, GemvCase{1, 6144, 4096},
                                           GemvCase{4, 4096, 4096}, GemvCase{1, 4096, 14336},
                                           GemvCase{2, 1000, 8}, GemvCase{3, 77, 1032}));

// silu(x·W_gateᵀ) * (x·W_upᵀ) to bf16 against the CPU GEMM + SwiGLU (1 bf16 ulp after the fp32
// accumulation tolerance); gate inputs scaled so silu sees both signs and its curved part.
TEST(GemvSwiGluTest, MatchesCpuGemmThenSwiGlu) {
  XKV_SKIP_WITHOUT_GPU();
  for (auto [m, f, k] : {std::tuple<int64_t, int64_t, int64_t>{1, 1536, 576},
                         {4, 1536, 576},
                         {8, 1536, 576},
                         {1, 14336, 4096},
                         {3, 14336, 4096}}) {
    const std::vector<float> x = RoundBf16(RandomVector(m * k, 4));
    const std::vector<float> w = RoundBf16(RandomVector(2 * f * k, 5, -0.1f, 0.1f));
    std::vector<float> gu(m * 2 * f), want(m * f);
    XKV_ASSERT_OK(cpu::LaunchGemm(x.data(), k, w.data(), k, gu.data(), 2 * f, m, 2 * f, k, false));
    XKV_ASSERT_OK(cpu::LaunchSwiGlu(gu.data(), 2 * f, gu.data() + f, 2 * f, m, f, want.data(), f));
    DeviceBuffer<__nv_bfloat16> d_x(ToBf16Bits(x)), d_w(ToBf16Bits(w)), d_out(m * f);
    XKV_ASSERT_OK(
        cuda::LaunchGemvSwiGlu(d_x.get(), k, d_w.get(), k, d_out.get(), f, m, f, k, true, nullptr));
    const float atol = 1e-4f * std::sqrt(static_cast<float>(k));
    EXPECT_TRUE(AllClose(FromBf16Bits(d_out.Download<uint16_t>()), want, atol, 1.f / 128))
        << m << "x" << f << "x" << k;
  }
}

TEST(GemvArgsTest, RejectsWhatItCannotRun) {
  XKV_SKIP_WITHOUT_GPU();
  DeviceBuffer<__nv_bfloat16> x(64 * 64), w(64 * 64);
  DeviceBuffer<float> y(64 * 64);
  auto code = [&](int64_t m, int64_t n, int64_t k, int64_t ldx, int64_t ldw, int64_t ldy) {
    return cuda::LaunchGemv(x.get(), ldx, w.get(), ldw, y.get(), ldy, m, n, k, false, false,
                            nullptr)
        .code();
  };
  EXPECT_EQ(code(1, 8, 16, 16, 16, 8), absl::StatusCode::kOk);
  EXPECT_EQ(code(8, 8, 16, 16, 16, 8), absl::StatusCode::kOk);
  EXPECT_EQ(code(9, 8, 16, 16, 16, 8), absl::StatusCode::kInvalidArgument);  // m > 8
  EXPECT_EQ(code(0, 8, 16, 16, 16, 8), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(1, 8, 12, 16, 16, 8), absl::StatusCode::kInvalidArgument);  // k % 8
  EXPECT_EQ(code(1, 8, 16, 20, 16, 8), absl::StatusCode::kInvalidArgument);  // ldx % 8
  EXPECT_EQ(code(1, 8, 16, 16, 16, 7), absl::StatusCode::kInvalidArgument);  // ldy < n
  EXPECT_EQ(
      cuda::LaunchGemv(x.get() + 1, 16, w.get(), 16, y.get(), 8, 1, 8, 16, false, false, nullptr)
          .code(),
      absl::StatusCode::kInvalidArgument);  // misaligned
  EXPECT_EQ(
      cuda::LaunchGemvSwiGlu(x.get(), 16, w.get(), 16, nullptr, 8, 1, 8, 16, false, nullptr).code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(cuda::GemvSupports(1, 16, 16, 12));
  EXPECT_TRUE(cuda::GemvSupports(8, 4096, 4096, 4096));
  EXPECT_FALSE(cuda::GemvSupports(9, 4096, 4096, 4096));
}

constexpr float kEps = 1e-5f;

// The CPU reference of the fused kernels: RMSNorm (double sum) of h's rows, rounded to bf16 as
// the GEMV input, then the fp32 GEMM: y = bf16(RmsNorm(h) * gain) · Wᵀ, [m, n] rows n apart.
std::vector<float> CpuRmsNormGemm(const std::vector<float>& h, int64_t ldh,
                                  const std::vector<float>& gain, const std::vector<float>& w,
                                  int64_t m, int64_t n, int64_t k) {
  std::vector<float> x(m * k), y(m * n, 0.f);
  for (int64_t r = 0; r < m; ++r) std::copy_n(h.begin() + r * ldh, k, x.begin() + r * k);
  EXPECT_TRUE(cpu::LaunchRmsNorm(x.data(), gain.data(), m, k, kEps, x.data()).ok());
  x = RoundBf16(std::move(x));
  EXPECT_TRUE(cpu::LaunchGemm(x.data(), k, w.data(), k, y.data(), n, m, n, k, false).ok());
  return y;
}

// Tolerance: the GEMV's (fp32 summation order) plus two flipped bf16 roundings of the normalised
// input (the device sums h² in fp32, the CPU in double: a value at a rounding midpoint may go
// either way), each worth one bf16 ulp (2^-7 relative at most) of the largest input times the
// largest weight.
float FusedTolerance(int64_t k, float max_x, float max_w) {
  return 1e-4f * std::sqrt(static_cast<float>(k)) + 2.f * max_x * max_w / 128.f;
}

TEST(RmsNormGemvTest, MatchesCpuRmsNormThenGemm) {
  XKV_SKIP_WITHOUT_GPU();
  for (auto [m, n, k] : {std::tuple<int64_t, int64_t, int64_t>{1, 960, 576},
                         {3, 576, 576},
                         {8, 960, 576},
                         {8, 49152, 576},
                         {5, 77, 1032}}) {
    const int64_t ldh = k + 4;  // padded rows, 16-byte aligned
    const std::vector<float> h = RandomVector(m * ldh, 11, -3.f, 3.f);
    const std::vector<float> gain = RandomVector(k, 12, 0.5f, 1.5f);
    const std::vector<float> w = RoundBf16(RandomVector(n * k, 13));
    const std::vector<float> want = CpuRmsNormGemm(h, ldh, gain, w, m, n, k);
    DeviceBuffer<float> d_h(h), d_gain(gain);
    DeviceBuffer<__nv_bfloat16> d_w(ToBf16Bits(w));
    std::vector<float> results[2];
    for (bool pdl : {false, true}) {
      DeviceBuffer<float> d_y(std::vector<float>(m * n, 7.f));  // overwritten, not accumulated
      XKV_ASSERT_OK(cuda::LaunchRmsNormGemv(d_h.get(), ldh, d_gain.get(), kEps, d_w.get(), k,
                                            d_y.get(), n, m, n, k, pdl, nullptr));
      results[pdl] = d_y.Download();
    }
    // |RmsNorm(h)| <= sqrt(k) in theory; with h uniform it stays under 3 * 1.5 (gain).
    EXPECT_TRUE(AllClose(results[0], want, FusedTolerance(k, 4.5f, 1.f), 1e-4f))
        << m << "x" << n << "x" << k;
    EXPECT_EQ(results[0], results[1]) << "pdl changed bits at " << m << "x" << n << "x" << k;
  }
}

TEST(RmsNormGemvTest, SwiGluMatchesCpuRmsNormGemmThenSwiGlu) {
  XKV_SKIP_WITHOUT_GPU();
  for (auto [m, f, k] :
       {std::tuple<int64_t, int64_t, int64_t>{1, 1536, 576}, {8, 1536, 576}, {6, 64, 1032}}) {
    const std::vector<float> h = RandomVector(m * k, 14, -3.f, 3.f);
    const std::vector<float> gain = RandomVector(k, 15, 0.5f, 1.5f);
    const std::vector<float> w = RoundBf16(RandomVector(2 * f * k, 16, -0.1f, 0.1f));
    const std::vector<float> gu = CpuRmsNormGemm(h, k, gain, w, m, 2 * f, k);
    std::vector<float> want(m * f);
    XKV_ASSERT_OK(cpu::LaunchSwiGlu(gu.data(), 2 * f, gu.data() + f, 2 * f, m, f, want.data(), f));
    DeviceBuffer<float> d_h(h), d_gain(gain);
    DeviceBuffer<__nv_bfloat16> d_w(ToBf16Bits(w)), d_out(m * f);
    XKV_ASSERT_OK(cuda::LaunchRmsNormGemvSwiGlu(d_h.get(), k, d_gain.get(), kEps, d_w.get(), k,
                                                d_out.get(), f, m, f, k, true, nullptr));
    // silu'(g) <= 1.1 and |up| stays under a few units: the input tolerance carries over.
    EXPECT_TRUE(AllClose(FromBf16Bits(d_out.Download<uint16_t>()), want,
                         4.f * FusedTolerance(k, 4.5f, 0.1f), 1.f / 128))
        << m << "x" << f << "x" << k;
  }
}

TEST(RmsNormGemvTest, RejectsWhatItCannotRun) {
  XKV_SKIP_WITHOUT_GPU();
  DeviceBuffer<float> h(64 * 64), gain(64), y(64 * 64);
  DeviceBuffer<__nv_bfloat16> w(64 * 64), out(64 * 64);
  auto code = [&](const float* hp, int64_t ldh, const float* g, float eps, int64_t m, int64_t k) {
    return cuda::LaunchRmsNormGemv(hp, ldh, g, eps, w.get(), k, y.get(), 8, m, 8, k, false, nullptr)
        .code();
  };
  EXPECT_EQ(code(h.get(), 16, gain.get(), kEps, 8, 16), absl::StatusCode::kOk);
  EXPECT_EQ(code(h.get(), 20, gain.get(), kEps, 2, 16), absl::StatusCode::kOk);  // ldh % 4
  EXPECT_EQ(code(h.get(), 18, gain.get(), kEps, 2, 16), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(h.get(), 8, gain.get(), kEps, 2, 16), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(h.get(), 16, gain.get(), kEps, 9, 16), absl::StatusCode::kInvalidArgument);
  // 8 x 4096 bf16 inputs exceed the 48 KiB of shared memory; 8 x 3072 (exactly 48 KiB) leave no
  // room for the rows' scales (not launched either way).
  EXPECT_EQ(code(h.get(), 4096, gain.get(), kEps, 8, 4096), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(h.get(), 3072, gain.get(), kEps, 8, 3072), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(h.get(), 16, gain.get(), -1.f, 1, 16), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(h.get(), 16, nullptr, kEps, 1, 16), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(h.get() + 1, 16, gain.get(), kEps, 1, 16), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(h.get(), 16, gain.get() + 2, kEps, 1, 16), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cuda::LaunchRmsNormGemvSwiGlu(h.get(), 16, gain.get(), kEps, w.get(), 16, nullptr, 8, 1,
                                          8, 16, false, nullptr)
                .code(),
            absl::StatusCode::kInvalidArgument);
}

// The tensor-core kernels (m = kGemvMmaMinRows..8 token rows, k a multiple of 32) in all four
// variants (plain with and without accumulate, SwiGLU, fused RMSNorm, both) against the CPU, with
// and without programmatic dependent launch (same bits), and against the CUDA-core kernels: the
// same rows in calls of at most kGemvMmaMinRows - 1 rows (same inputs, also the same bf16
// normalised rows: only the fp32 summation order differs). n = 77 (not a multiple of the 8- or
// 16-row tile) and n = 8 exercise the clamped tail tile, k = 32 a single k block, k = 1536 more k
// blocks than warps.
struct MmaCase {
  int64_t n, k;
};

class GemvMmaTest : public ::testing::TestWithParam<MmaCase> {};
static_assert(cuda::kGemvMmaMinRows >= 2, "the CUDA-core reference needs calls of >= 1 row");

TEST_P(GemvMmaTest, MatchesCpuAndCudaCoreKernels) {
  XKV_SKIP_WITHOUT_GPU();
  const auto [n, k] = GetParam();
  ASSERT_EQ(k % 32, 0);
  const int64_t ldy = n + 4;
  for (int64_t m = cuda::kGemvMmaMinRows; m <= cuda::kGemvMaxRows; ++m) {
    for (int variant = 0; variant < 5; ++variant) {
      const bool accumulate = variant == 1, glu = variant == 2 || variant == 4, norm = variant >= 3;
      const std::string what = absl::StrCat("m=", m, " n=", n, " k=", k, " accumulate=", accumulate,
                                            " glu=", glu, " norm=", norm);
      const uint32_t seed = static_cast<uint32_t>(100 * m + 10 * variant);
      const int64_t ld_in = norm ? k + 4 : k + 8, w_rows = glu ? 2 * n : n;
      const float max_x = norm ? 4.5f : 1.f, max_w = glu ? 0.1f : 1.f;
      // in: h (norm) or x, [m, ld_in]; x: the bf16 GEMV input rows, [m, k].
      const std::vector<float> in = norm ? RandomVector(m * ld_in, seed, -3.f, 3.f)
                                         : RoundBf16(RandomVector(m * ld_in, seed));
      const std::vector<float> gain = RandomVector(k, seed + 1, 0.5f, 1.5f);
      std::vector<float> x(m * k);
      for (int64_t r = 0; r < m; ++r) std::copy_n(in.begin() + r * ld_in, k, x.begin() + r * k);
      if (norm) {
        XKV_ASSERT_OK(cpu::LaunchRmsNorm(x.data(), gain.data(), m, k, kEps, x.data()));
        x = RoundBf16(std::move(x));
      }
      const std::vector<float> w = RoundBf16(RandomVector(w_rows * k, seed + 2, -max_w, max_w));
      std::vector<float> prod(m * w_rows), out(m * n);
      XKV_ASSERT_OK(cpu::LaunchGemm(x.data(), k, w.data(), k, prod.data(), w_rows, m, w_rows, k,
                                    /*accumulate=*/false));
      if (glu) {
        XKV_ASSERT_OK(
            cpu::LaunchSwiGlu(prod.data(), 2 * n, prod.data() + n, 2 * n, m, n, out.data(), n));
      } else {
        for (int64_t r = 0; r < m; ++r) std::copy_n(prod.begin() + r * n, n, out.begin() + r * n);
      }
      // The outputs start as y0 (bf16-rounded for the bf16 outputs); padding stays y0.
      const std::vector<float> y0 =
          glu ? RoundBf16(RandomVector(m * ldy, seed + 3)) : RandomVector(m * ldy, seed + 3);
      std::vector<float> want = y0;
      for (int64_t r = 0; r < m; ++r) {
        for (int64_t c = 0; c < n; ++c) {
          want[r * ldy + c] = (accumulate ? y0[r * ldy + c] : 0.f) + out[r * n + c];
        }
      }
      DeviceBuffer<float> d_h(norm ? in : std::vector<float>{}), d_gain(gain);
      DeviceBuffer<__nv_bfloat16> d_x(norm ? std::vector<uint16_t>{} : ToBf16Bits(in)),
          d_w(ToBf16Bits(w));
      // Runs rows [r0, r0 + rows) of the product into y (or y16).
      auto launch = [&](int64_t r0, int64_t rows, bool pdl, float* y, __nv_bfloat16* y16) {
        const float* h = norm ? d_h.get() + r0 * ld_in : nullptr;
        const __nv_bfloat16* xp = norm ? nullptr : d_x.get() + r0 * ld_in;
        if (norm && glu) {
          return cuda::LaunchRmsNormGemvSwiGlu(h, ld_in, d_gain.get(), kEps, d_w.get(), k,
                                               y16 + r0 * ldy, ldy, rows, n, k, pdl, nullptr);
        }
        if (norm) {
          return cuda::LaunchRmsNormGemv(h, ld_in, d_gain.get(), kEps, d_w.get(), k, y + r0 * ldy,
                                         ldy, rows, n, k, pdl, nullptr);
        }
        if (glu) {
          return cuda::LaunchGemvSwiGlu(xp, ld_in, d_w.get(), k, y16 + r0 * ldy, ldy, rows, n, k,
                                        pdl, nullptr);
        }
        return cuda::LaunchGemv(xp, ld_in, d_w.get(), k, y + r0 * ldy, ldy, rows, n, k, accumulate,
                                pdl, nullptr);
      };
      // The output of launch() over all m rows in calls of at most `per_call` rows.
      auto run = [&](int64_t per_call, bool pdl) -> std::vector<float> {
        DeviceBuffer<float> y(y0);
        DeviceBuffer<__nv_bfloat16> y16(ToBf16Bits(y0));
        for (int64_t r0 = 0; r0 < m; r0 += per_call) {
          const absl::Status st = launch(r0, std::min(per_call, m - r0), pdl, y.get(), y16.get());
          EXPECT_TRUE(st.ok()) << st << " " << what;
        }
        return glu ? FromBf16Bits(y16.Download<uint16_t>()) : y.Download();
      };
      const std::vector<float> mma = run(m, false);
      EXPECT_EQ(mma, run(m, true)) << "pdl changed bits, " << what;
      const float atol = 1e-4f * std::sqrt(static_cast<float>(k)) * max_x * max_w +
                         (norm ? 2.f * max_x * max_w / 128.f : 0.f);  // as FusedTolerance
      const float rtol = glu ? 1.f / 128 : 1e-4f;
      EXPECT_TRUE(AllClose(mma, want, glu ? 4.f * atol : atol, rtol)) << what;
      const float sum_atol = 2e-4f * std::sqrt(static_cast<float>(k)) * max_x * max_w;
      EXPECT_TRUE(AllClose(mma, run(cuda::kGemvMmaMinRows - 1, false), sum_atol, rtol))
          << "against the CUDA-core kernel, " << what;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, GemvMmaTest,
                         ::testing::Values(MmaCase{960, 576}, MmaCase{576, 576}, MmaCase{576, 1536},
                                           MmaCase{1536, 576}, MmaCase{77, 1056}, MmaCase{40, 96},
                                           MmaCase{8, 32}));

}  // namespace
}  // namespace xkv::gpu_test
