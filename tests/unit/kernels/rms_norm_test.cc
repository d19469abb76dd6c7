#include "kernels/cpu/rms_norm.h"

#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace xkv::cpu {
namespace {

// Tolerance: relative 1e-6 against a double-precision reference.
TEST(RmsNormTest, MatchesNaiveReferenceAndWorksInPlace) {
  const int64_t rows = 7, dim = 576;
  const float eps = 1e-5f;
  std::mt19937 rng(2);
  std::uniform_real_distribution<float> u(-3.f, 3.f);
  std::vector<float> x(rows * dim), w(dim);
  for (float& v : x) v = u(rng);
  for (float& v : w) v = u(rng);
  std::vector<float> out(x.size());
  ASSERT_TRUE(LaunchRmsNorm(x.data(), w.data(), rows, dim, eps, out.data()).ok());
  for (int64_t r = 0; r < rows; ++r) {
    double ss = 0;
    for (int64_t i = 0; i < dim; ++i) ss += double(x[r * dim + i]) * x[r * dim + i];
    const double scale = 1.0 / std::sqrt(ss / dim + eps);
    for (int64_t i = 0; i < dim; ++i) {
      const double want = x[r * dim + i] * scale * w[i];
      EXPECT_NEAR(out[r * dim + i], want, 1e-6 * (1 + std::abs(want)));
    }
  }
  std::vector<float> inplace = x;
  ASSERT_TRUE(LaunchRmsNorm(inplace.data(), w.data(), rows, dim, eps, inplace.data()).ok());
  EXPECT_EQ(inplace, out);
}

TEST(RmsNormTest, RejectsBadArguments) {
  std::vector<float> x(4), w(4);
  EXPECT_FALSE(LaunchRmsNorm(x.data(), w.data(), 1, 0, 1e-5f, x.data()).ok());
  EXPECT_FALSE(LaunchRmsNorm(x.data(), nullptr, 1, 4, 1e-5f, x.data()).ok());
}

}  // namespace
}  // namespace xkv::cpu
