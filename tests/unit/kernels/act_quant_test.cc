#include "kernels/cpu/act_quant.h"

#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/half.h"

namespace xkv::cpu {
namespace {

TEST(ActQuantTest, RoundingFollowsGgmlVecDotTypes) {
  EXPECT_EQ(ActRoundingFor(GgmlType::kQ4_0), ActRounding::kQ8Blocks);
  EXPECT_EQ(ActRoundingFor(GgmlType::kQ4_1), ActRounding::kQ8Blocks);
  EXPECT_EQ(ActRoundingFor(GgmlType::kQ8_0), ActRounding::kQ8Blocks);
  EXPECT_EQ(ActRoundingFor(GgmlType::kF16), ActRounding::kF16);
  EXPECT_EQ(ActRoundingFor(GgmlType::kBF16), ActRounding::kBf16);
  EXPECT_EQ(ActRoundingFor(GgmlType::kF32), ActRounding::kNone);
  for (GgmlType k :
       {GgmlType::kQ2_K, GgmlType::kQ3_K, GgmlType::kQ4_K, GgmlType::kQ5_K, GgmlType::kQ6_K}) {
    EXPECT_EQ(ActRoundingFor(k), ActRounding::kQ8KBlocks);
  }
}

// A Q8_K block by hand: the element of largest magnitude is -2 → iscale = -127 / -2 = 63.5 and
// d = 1 / 63.5 (fp32, not fp16); q = round-half-even(x * 63.5), at most 127.
TEST(ActQuantTest, HandComputedQ8KBlock) {
  std::vector<float> x(512, 0.f);
  x[0] = -2.f;            // q = -127
  x[1] = 1.f;             // 63.5 → 64 (half to even)
  x[2] = 3.f / 63.5f;     // ~3 → 3
  x[3] = 2.f;             // 127
  x[255] = 0.5f / 63.5f;  // ~0.5: rounds to 0 or 1 depending on the fp32 product
  x[256] = 4.f;           // second block: iscale = -127 / 4, d = 1 / iscale (negative)
  x[257] = -1.f;
  std::vector<float> out(512, -1.f);
  ASSERT_TRUE(LaunchRoundActivations(ActRounding::kQ8KBlocks, x.data(), 2, 256, out.data()).ok());
  const float d = 1 / 63.5f;
  EXPECT_EQ(out[0], -127 * d);
  EXPECT_EQ(out[1], 64 * d);
  EXPECT_EQ(out[2], std::nearbyint(x[2] * 63.5f) * d);
  EXPECT_EQ(out[3], 127 * d);
  EXPECT_EQ(out[4], 0.f);
  EXPECT_EQ(out[255], std::nearbyint(x[255] * 63.5f) * d);
  const float iscale2 = -127.f / 4.f, d2 = 1 / iscale2;
  EXPECT_EQ(out[256], -127 * d2);                            // = 4
  EXPECT_EQ(out[257], std::nearbyint(-1.f * iscale2) * d2);  // 31.75 → 32
  EXPECT_EQ(std::nearbyint(-1.f * iscale2), 32.f);
  std::vector<float> zeros(256, 0.f);
  ASSERT_TRUE(
      LaunchRoundActivations(ActRounding::kQ8KBlocks, zeros.data(), 1, 256, zeros.data()).ok());
  for (float v : zeros) EXPECT_EQ(v, 0.f);
  EXPECT_FALSE(LaunchRoundActivations(ActRounding::kQ8KBlocks, x.data(), 2, 128, out.data()).ok());
}

// A block computed by hand: amax = 1.27 → d = 0.01, stored as fp16 0.01000213623046875 (0x2120).
TEST(ActQuantTest, HandComputedQ8Block) {
  std::vector<float> x(32, 0.25f);
  x[0] = 1.27f;    // q = 127
  x[1] = -0.635f;  // x * (127 / 1.27) is exactly -63.5 in fp32 → -64 (half to even)
  x[2] = 0.004f;   // 0.4 → 0
  x[3] = 0.006f;   // 0.6 → 1
  std::vector<float> out(32);
  ASSERT_TRUE(LaunchRoundActivations(ActRounding::kQ8Blocks, x.data(), 1, 32, out.data()).ok());
  const float d = 0.01000213623046875f;
  EXPECT_FLOAT_EQ(out[0], 127 * d);
  EXPECT_FLOAT_EQ(out[1], -64 * d);
  EXPECT_FLOAT_EQ(out[2], 0.f);
  EXPECT_FLOAT_EQ(out[3], d);
  EXPECT_FLOAT_EQ(out[4], 25 * d);  // 0.25 * 100 = 25
}

TEST(ActQuantTest, RandomBlocksAreIntegerMultiplesWithinHalfAStep) {
  std::mt19937 rng(7);
  std::normal_distribution<float> dist(0.f, 3.f);
  const int64_t rows = 5, cols = 96;
  std::vector<float> x(rows * cols), out(rows * cols);
  for (float& v : x) v = dist(rng);
  ASSERT_TRUE(
      LaunchRoundActivations(ActRounding::kQ8Blocks, x.data(), rows, cols, out.data()).ok());
  for (int64_t b = 0; b < rows * cols; b += 32) {
    float amax = 0;
    for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(x[b + i]));
    const float dh = F16ToF32(F32ToF16(amax / 127.f));
    for (int i = 0; i < 32; ++i) {
      const float q = out[b + i] / dh;
      EXPECT_NEAR(q, std::nearbyint(q), 1e-3f);
      EXPECT_LE(std::fabs(q), 127.5f);
      EXPECT_LE(std::fabs(out[b + i] - x[b + i]), amax / 254.f * 1.01f + 1e-6f);
    }
  }
}

TEST(ActQuantTest, HalfRoundingsAndInPlace) {
  std::vector<float> x = {1.0f + 1.0f / 4096, 3.14159265f, -2.5e-3f, 65504.f};
  std::vector<float> y = x;
  ASSERT_TRUE(LaunchRoundActivations(ActRounding::kF16, y.data(), 1, 4, y.data()).ok());
  EXPECT_EQ(y[0], 1.0f);  // 1 + 2^-12 is below half an fp16 ulp (2^-11)
  EXPECT_EQ(y[1], 3.140625f);
  EXPECT_EQ(y[3], 65504.f);
  std::vector<float> z = x;
  ASSERT_TRUE(LaunchRoundActivations(ActRounding::kBf16, z.data(), 1, 4, z.data()).ok());
  EXPECT_EQ(z[1], 3.140625f);
  std::vector<float> w = x;
  ASSERT_TRUE(LaunchRoundActivations(ActRounding::kNone, x.data(), 1, 4, w.data()).ok());
  EXPECT_EQ(w, x);
}

TEST(ActQuantTest, BadArguments) {
  std::vector<float> x(40, 1.f);
  EXPECT_FALSE(LaunchRoundActivations(ActRounding::kQ8Blocks, x.data(), 1, 40, x.data()).ok());
  EXPECT_FALSE(LaunchRoundActivations(ActRounding::kF16, nullptr, 1, 4, x.data()).ok());
  EXPECT_FALSE(LaunchRoundActivations(ActRounding::kF16, x.data(), -1, 4, x.data()).ok());
}

}  // namespace
}  // namespace xkv::cpu
