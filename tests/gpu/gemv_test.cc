// Small-batch GEMV kernels (decode steps) against the CPU fp32 GEMM (and SwiGLU) on the same
// bf16-rounded inputs, at the projection shapes of the real model and of Llama-3-8B; with and
// without programmatic dependent launch (same bits), and their argument checks. The fused
// RMSNorm + GEMV kernels against the CPU RMSNorm, bf16 rounding, then the CPU GEMM (+ SwiGLU).
#include "kernels/cuda/gemv.cuh"

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

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
  // 8 x 4096 bf16 inputs exceed the 48 KiB of shared memory; 8 x 3072 fit (not launched here).
  EXPECT_EQ(code(h.get(), 4096, gain.get(), kEps, 8, 4096), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(h.get(), 16, gain.get(), -1.f, 1, 16), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(h.get(), 16, nullptr, kEps, 1, 16), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(h.get() + 1, 16, gain.get(), kEps, 1, 16), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(h.get(), 16, gain.get() + 2, kEps, 1, 16), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cuda::LaunchRmsNormGemvSwiGlu(h.get(), 16, gain.get(), kEps, w.get(), 16, nullptr, 8, 1,
                                          8, 16, false, nullptr)
                .code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace xkv::gpu_test
