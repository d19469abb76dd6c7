// The CPU reference of the seeded random fill: deterministic per (seed, index), seeds independent,
// values uniform in [-scale, scale) (checked against the defining formula element by element and
// by moments). The CUDA kernel is compared bit for bit with this in tests/gpu.
#include "kernels/cpu/random_fill.h"

#include <cmath>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/half.h"

namespace xkv {
namespace {

TEST(RandomFillTest, MatchesFormulaAndIsUniform) {
  constexpr int64_t kN = 200000;
  const float scale = 0.125f, step = RandomFillStep(scale);
  std::vector<uint16_t> a(kN), b(kN), c(kN);
  ASSERT_TRUE(cpu::LaunchRandomFill(7, kN, step, a.data()).ok());
  ASSERT_TRUE(cpu::LaunchRandomFill(7, kN, step, b.data()).ok());
  ASSERT_TRUE(cpu::LaunchRandomFill(8, kN, step, c.data()).ok());
  EXPECT_EQ(a, b);
  int64_t same = 0;
  double sum = 0, sq = 0;
  for (int64_t i = 0; i < kN; ++i) {
    const float v = cpu::Bf16ToF32(a[i]);
    ASSERT_EQ(a[i], cpu::F32ToBf16(static_cast<float>(RandomFillInt(7, i)) * step)) << i;
    ASSERT_GE(v, -scale);
    ASSERT_LE(v, scale);  // bf16 rounding may reach the bound itself
    same += a[i] == c[i];
    sum += v;
    sq += double(v) * v;
  }
  EXPECT_LT(same, kN / 50);  // another seed is another tensor
  const double mean = sum / kN, var = sq / kN - mean * mean;
  EXPECT_NEAR(mean, 0.0, 0.002);
  EXPECT_NEAR(var, scale * scale / 3.0, 0.02 * scale * scale);  // uniform: scale^2 / 3
}

TEST(RandomFillTest, BadArguments) {
  EXPECT_FALSE(cpu::LaunchRandomFill(1, -1, 1.f, nullptr).ok());
  EXPECT_FALSE(cpu::LaunchRandomFill(1, 4, 1.f, nullptr).ok());
  EXPECT_TRUE(cpu::LaunchRandomFill(1, 0, 1.f, nullptr).ok());
}

}  // namespace
}  // namespace xkv
