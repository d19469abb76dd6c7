#include "kernels/cpu/gemm.h"

#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace xkv::cpu {
namespace {

// Tolerance: 1e-4 absolute + 1e-5 relative against a double reference (k <= 300, inputs in [-1,1]).
// m = 1..3 take the per-row GEMV path, larger m the sgemm path.
class GemmTest : public ::testing::TestWithParam<int64_t> {};

TEST_P(GemmTest, MatchesNaiveWithStridesAndAccumulate) {
  const int64_t m = GetParam(), n = 23, k = 300, lda = 310, ldb = 305, ldc = 30;
  std::mt19937 rng(4);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<float> a(m * lda), b(n * ldb), c(m * ldc), c0;
  for (float& v : a) v = u(rng);
  for (float& v : b) v = u(rng);
  for (float& v : c) v = u(rng);
  c0 = c;
  for (bool acc : {false, true}) {
    c = c0;
    ASSERT_TRUE(LaunchGemm(a.data(), lda, b.data(), ldb, c.data(), ldc, m, n, k, acc).ok());
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < ldc; ++j) {
        if (j >= n) {
          EXPECT_EQ(c[i * ldc + j], c0[i * ldc + j]);  // padding untouched
          continue;
        }
        double want = acc ? c0[i * ldc + j] : 0.0;
        for (int64_t p = 0; p < k; ++p) want += double(a[i * lda + p]) * b[j * ldb + p];
        EXPECT_NEAR(c[i * ldc + j], want, 1e-4 + 1e-5 * std::abs(want));
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Rows, GemmTest, ::testing::Values(1, 3, 4, 19));

TEST(GemmArgsTest, RejectsBadLeadingDimension) {
  std::vector<float> a(4), b(4), c(4);
  EXPECT_FALSE(LaunchGemm(a.data(), 1, b.data(), 2, c.data(), 2, 2, 2, 2, false).ok());
}

TEST(GemmArgsTest, ThreadCountRoundTrips) {
  SetGemmThreads(1);
  EXPECT_EQ(GetGemmThreads(), 1);
}

}  // namespace
}  // namespace xkv::cpu
