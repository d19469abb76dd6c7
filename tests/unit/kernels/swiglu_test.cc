#include "kernels/cpu/swiglu.h"

#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/fast_math.h"

namespace xkv::cpu {
namespace {

// Tolerance: relative 1e-6 (FastExp is within a few ulp of exp).
TEST(SwiGluTest, MatchesNaiveReferenceOnFusedLayout) {
  const int64_t rows = 5, dim = 100;
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(-12.f, 12.f);
  std::vector<float> fused(rows * 2 * dim);  // [rows, gate | up]
  for (float& v : fused) v = u(rng);
  std::vector<float> out(rows * dim);
  ASSERT_TRUE(
      LaunchSwiGlu(fused.data(), 2 * dim, fused.data() + dim, 2 * dim, rows, dim, out.data(), dim)
          .ok());
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < dim; ++i) {
      const double g = fused[r * 2 * dim + i], up = fused[r * 2 * dim + dim + i];
      const double want = g / (1.0 + std::exp(-g)) * up;
      EXPECT_NEAR(out[r * dim + i], want, 1e-6 * (1 + std::abs(want)));
    }
  }
  // In place over the gate half.
  ASSERT_TRUE(LaunchSwiGlu(fused.data(), 2 * dim, fused.data() + dim, 2 * dim, rows, dim,
                           fused.data(), 2 * dim)
                  .ok());
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < dim; ++i) EXPECT_EQ(fused[r * 2 * dim + i], out[r * dim + i]);
  }
}

TEST(FastExpTest, CloseToExpOverSoftmaxRange) {
  for (float x = -87.f; x <= 88.f; x += 0.0137f) {
    const double want = std::exp(double(x));
    EXPECT_NEAR(FastExp(x), want, 3e-7 * want) << x;
  }
  EXPECT_LT(FastExp(-1000.f), 1e-37f);
  EXPECT_EQ(FastExp(0.f), 1.f);
}

TEST(SwiGluTest, RejectsBadStride) {
  std::vector<float> a(8);
  EXPECT_FALSE(LaunchSwiGlu(a.data(), 2, a.data(), 4, 1, 4, a.data(), 4).ok());
}

}  // namespace
}  // namespace xkv::cpu
