// Small-batch GEMV kernels (decode steps) against the CPU fp32 GEMM (and SwiGLU) on the same
// bf16-rounded inputs, at the projection shapes of the real model and of Llama-3-8B; with and
// without programmatic dependent launch (same bits), and their argument checks.
#include "kernels/cuda/gemv.cuh"

#include <cmath>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/gemm.h"
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
                                           GemvCase{1, 6144, 4096}, GemvCase{4, 4096, 4096},
                                           GemvCase{1, 4096, 14336}, GemvCase{2, 1000, 8},
                                           GemvCase{3, 77, 1032}));

// silu(x·W_gateᵀ) * (x·W_upᵀ) to bf16 against the CPU GEMM + SwiGLU (1 bf16 ulp after the fp32
// accumulation tolerance); gate inputs scaled so silu sees both signs and its curved part.
TEST(GemvSwiGluTest, MatchesCpuGemmThenSwiGlu) {
  XKV_SKIP_WITHOUT_GPU();
  for (auto [m, f, k] : {std::tuple<int64_t, int64_t, int64_t>{1, 1536, 576},
                         {4, 1536, 576},
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
  EXPECT_EQ(code(5, 8, 16, 16, 16, 8), absl::StatusCode::kInvalidArgument);  // m > 4
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
  EXPECT_TRUE(cuda::GemvSupports(4, 4096, 4096, 4096));
}

}  // namespace
}  // namespace xkv::gpu_test
