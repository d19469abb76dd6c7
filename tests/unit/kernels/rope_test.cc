#include "kernels/cpu/rope.h"

#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace xkv::cpu {
namespace {

// Naive reference in double: theta = pos * base^(-2i/rope_dims).
void NaiveRope(const std::vector<float>& x, int64_t n, int heads, int hd, int rope_dims,
               RopeMode mode, const std::vector<int64_t>& pos, float base,
               std::vector<double>& out) {
  out.assign(x.begin(), x.end());
  for (int64_t t = 0; t < n; ++t) {
    for (int h = 0; h < heads; ++h) {
      const int64_t o = (t * heads + h) * hd;
      for (int i = 0; i < rope_dims / 2; ++i) {
        const double theta = pos[t] * std::pow(double(base), -2.0 * i / rope_dims);
        const int i0 = mode == RopeMode::kNorm ? 2 * i : i;
        const int i1 = mode == RopeMode::kNorm ? 2 * i + 1 : i + rope_dims / 2;
        const double a = x[o + i0], b = x[o + i1];
        out[o + i0] = a * std::cos(theta) - b * std::sin(theta);
        out[o + i1] = a * std::sin(theta) + b * std::cos(theta);
      }
    }
  }
}

// Tolerance: 2e-6 absolute (inputs in [-1, 1], cos/sin rounded to fp32 once).
class RopeTest : public ::testing::TestWithParam<std::tuple<RopeMode, int>> {};

TEST_P(RopeTest, MatchesNaiveReferenceAtLargePositions) {
  const auto [mode, rope_dims] = GetParam();
  const int64_t n = 6;
  const int heads = 3, hd = 64;
  const float base = 100000.f;
  const std::vector<int64_t> pos = {0, 1, 7, 513, 2047, 8191};
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<float> x(n * heads * hd);
  for (float& v : x) v = u(rng);
  std::vector<float> cs(n * rope_dims);
  ASSERT_TRUE(LaunchRopeCache(pos.data(), n, rope_dims, base, cs.data()).ok());
  // Strided input (as in a fused QKV row) into a contiguous output.
  const int64_t stride = heads * hd + 10;
  std::vector<float> xs(n * stride, 99.f);
  for (int64_t t = 0; t < n; ++t) {
    std::copy(x.begin() + t * heads * hd, x.begin() + (t + 1) * heads * hd,
              xs.begin() + t * stride);
  }
  std::vector<float> out(n * heads * hd);
  ASSERT_TRUE(LaunchRope(xs.data(), stride, n, heads, hd, rope_dims, mode, cs.data(), out.data(),
                         heads * hd)
                  .ok());
  std::vector<double> want;
  NaiveRope(x, n, heads, hd, rope_dims, mode, pos, base, want);
  for (size_t i = 0; i < out.size(); ++i) EXPECT_NEAR(out[i], want[i], 2e-6) << i;
  // In place gives the same.
  std::vector<float> inplace = x;
  ASSERT_TRUE(LaunchRope(inplace.data(), heads * hd, n, heads, hd, rope_dims, mode, cs.data(),
                         inplace.data(), heads * hd)
                  .ok());
  EXPECT_EQ(inplace, out);
}

INSTANTIATE_TEST_SUITE_P(Modes, RopeTest,
                         ::testing::Combine(::testing::Values(RopeMode::kNorm, RopeMode::kNeox),
                                            ::testing::Values(64, 32)));

TEST(RopeCacheTest, RejectsNegativePositionAndOddDims) {
  const std::vector<int64_t> pos = {3, -1};
  std::vector<float> cs(2 * 64);
  EXPECT_FALSE(LaunchRopeCache(pos.data(), 2, 64, 10000.f, cs.data()).ok());
  EXPECT_FALSE(LaunchRopeCache(pos.data(), 1, 63, 10000.f, cs.data()).ok());
}

// llama 3.1's rope_freqs divide each frequency; linear scaling multiplies every angle.
TEST(RopeCacheTest, FrequencyFactorsAndLinearScaling) {
  const int dims = 16;
  const std::vector<int64_t> pos = {0, 3, 1000};
  std::vector<float> factors(dims / 2);
  for (int i = 0; i < dims / 2; ++i) factors[i] = 1.f + i;
  std::vector<float> cs(pos.size() * dims);
  ASSERT_TRUE(
      LaunchRopeCache(pos.data(), 3, dims, 10000.f, cs.data(), {0.5f, factors.data()}).ok());
  for (size_t t = 0; t < pos.size(); ++t) {
    for (int i = 0; i < dims / 2; ++i) {
      const double theta = 0.5 * pos[t] * std::pow(10000.0, -2.0 * i / dims) / factors[i];
      EXPECT_NEAR(cs[t * dims + 2 * i], std::cos(theta), 1e-6) << t << " " << i;
      EXPECT_NEAR(cs[t * dims + 2 * i + 1], std::sin(theta), 1e-6) << t << " " << i;
    }
  }
}

}  // namespace
}  // namespace xkv::cpu
