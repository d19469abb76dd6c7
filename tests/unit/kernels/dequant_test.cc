#include "kernels/cpu/dequant.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "kernels/cpu/half.h"

namespace xkv::cpu {
namespace {

using ::testing::TestWithParam;

std::vector<float> Dequant(GgmlType type, const std::vector<uint8_t>& bytes, int64_t n) {
  std::vector<float> out(n, -12345.f);
  EXPECT_TRUE(DequantizeToF32(type, bytes.data(), n, out.data()).ok());
  return out;
}

std::vector<uint8_t> Quant(GgmlType type, const std::vector<float>& x) {
  const auto traits = GetGgmlTypeTraits(static_cast<uint32_t>(type));
  std::vector<uint8_t> out(x.size() / traits->block_elements * traits->block_bytes, 0xAA);
  EXPECT_TRUE(QuantizeFromF32(type, x.data(), static_cast<int64_t>(x.size()), out.data()).ok());
  return out;
}

std::vector<uint8_t> Hex(const char* hex) {
  std::vector<uint8_t> out;
  for (size_t i = 0; hex[i] && hex[i + 1]; i += 2) {
    out.push_back(static_cast<uint8_t>(std::stoi(std::string(hex + i, 2), nullptr, 16)));
  }
  return out;
}

// ----- fp16 / bf16 -----

TEST(HalfTest, KnownF16Encodings) {
  EXPECT_EQ(F32ToF16(1.0f), 0x3c00);
  EXPECT_EQ(F32ToF16(-2.0f), 0xc000);
  EXPECT_EQ(F32ToF16(65504.0f), 0x7bff);                          // largest finite
  EXPECT_EQ(F32ToF16(65519.0f), 0x7bff);                          // below the halfway point
  EXPECT_EQ(F32ToF16(65520.0f), 0x7c00);                          // halfway rounds to even = inf
  EXPECT_EQ(F32ToF16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);      // tie -> even (down)
  EXPECT_EQ(F32ToF16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);  // tie -> even (up)
  EXPECT_EQ(F32ToF16(std::ldexp(1.0f, -24)), 0x0001);             // smallest subnormal
  EXPECT_EQ(F32ToF16(std::ldexp(1.0f, -25)), 0x0000);             // tie -> even zero
  EXPECT_EQ(F32ToF16(3 * std::ldexp(1.0f, -25)), 0x0002);         // 1.5 ulp tie -> 2
  EXPECT_EQ(F32ToF16(std::ldexp(1023.9f, -24)), 0x0400);  // rounds up into the smallest normal
  EXPECT_EQ(F32ToF16(-0.0f), 0x8000);
  EXPECT_EQ(F32ToF16(std::numeric_limits<float>::infinity()), 0x7c00);
  EXPECT_EQ(F32ToF16(-std::numeric_limits<float>::infinity()), 0xfc00);
  const uint16_t nan = F32ToF16(std::numeric_limits<float>::quiet_NaN());
  EXPECT_EQ(nan & 0x7c00, 0x7c00);
  EXPECT_NE(nan & 0x03ff, 0);
  EXPECT_EQ(F32ToF16(1e-10f), 0x0000);
}

TEST(HalfTest, EveryF16RoundTripsExactly) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = F16ToF32(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(F16ToF32(F32ToF16(f)))) << h;
      continue;
    }
    EXPECT_EQ(F32ToF16(f), h) << "h=0x" << std::hex << h;
  }
  EXPECT_EQ(F16ToF32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(F16ToF32(0x3555), 0.333251953125f);
}

TEST(HalfTest, Bf16RoundsToNearestEven) {
  EXPECT_EQ(F32ToBf16(1.0f), 0x3f80);
  EXPECT_EQ(F32ToBf16(-3.0f), 0xc040);
  EXPECT_EQ(F32ToBf16(3.14159265f), 0x4049);
  EXPECT_EQ(F32ToBf16(BitsToFloat(0x3f808000u)), 0x3f80);  // tie -> even (down)
  EXPECT_EQ(F32ToBf16(BitsToFloat(0x3f818000u)), 0x3f82);  // tie -> even (up)
  EXPECT_EQ(F32ToBf16(BitsToFloat(0x3f808001u)), 0x3f81);  // above the tie
  EXPECT_EQ(F32ToBf16(std::numeric_limits<float>::infinity()), 0x7f80);
  EXPECT_TRUE(std::isnan(Bf16ToF32(F32ToBf16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_EQ(Bf16ToF32(0x4049), 3.140625f);
}

// ----- dequantization of hand-written blocks -----

TEST(DequantTest, F16Values) {
  // 1, -2, 65504, 2^-24, inf, -0, 0.333251953125, 2^-14 (little-endian u16 each).
  const std::vector<uint8_t> bytes = {0x00, 0x3c, 0x00, 0xc0, 0xff, 0x7b, 0x01, 0x00,
                                      0x00, 0x7c, 0x00, 0x80, 0x55, 0x35, 0x00, 0x04};
  const std::vector<float> x = Dequant(GgmlType::kF16, bytes, 8);
  EXPECT_EQ(x[0], 1.0f);
  EXPECT_EQ(x[1], -2.0f);
  EXPECT_EQ(x[2], 65504.0f);
  EXPECT_EQ(x[3], 5.9604644775390625e-8f);
  EXPECT_TRUE(std::isinf(x[4]) && x[4] > 0);
  EXPECT_TRUE(x[5] == 0.0f && std::signbit(x[5]));
  EXPECT_EQ(x[6], 0.333251953125f);
  EXPECT_EQ(x[7], 6.103515625e-05f);
}

TEST(DequantTest, Bf16Values) {
  // 1, -3, 3.140625, -inf
  const std::vector<uint8_t> bytes = {0x80, 0x3f, 0x40, 0xc0, 0x49, 0x40, 0x80, 0xff};
  const std::vector<float> x = Dequant(GgmlType::kBF16, bytes, 4);
  EXPECT_EQ(x[0], 1.0f);
  EXPECT_EQ(x[1], -3.0f);
  EXPECT_EQ(x[2], 3.140625f);
  EXPECT_TRUE(std::isinf(x[3]) && x[3] < 0);
}

TEST(DequantTest, Q8_0Block) {
  // d = fp16 0x3800 = 0.5; qs[j] = j - 16 as int8  ->  x[j] = (j - 16) * 0.5.
  std::vector<uint8_t> block = {0x00, 0x38};
  for (int j = 0; j < 32; ++j) block.push_back(static_cast<uint8_t>(static_cast<int8_t>(j - 16)));
  block[2 + 31] = 0x80;  // last qs = -128 -> -64
  const std::vector<float> x = Dequant(GgmlType::kQ8_0, block, 32);
  EXPECT_EQ(x[0], -8.0f);
  EXPECT_EQ(x[1], -7.5f);
  EXPECT_EQ(x[16], 0.0f);
  EXPECT_EQ(x[17], 0.5f);
  EXPECT_EQ(x[30], 7.0f);
  EXPECT_EQ(x[31], -64.0f);
}

TEST(DequantTest, Q4_0BlockLowNibblesFirst) {
  // d = fp16 0x4000 = 2; qs[j] = j | (15 - j) << 4:
  // x[j] = (j - 8) * 2 for j < 16, x[16 + j] = (15 - j - 8) * 2.
  std::vector<uint8_t> block = {0x00, 0x40};
  for (int j = 0; j < 16; ++j) block.push_back(static_cast<uint8_t>(j | ((15 - j) << 4)));
  const std::vector<float> x = Dequant(GgmlType::kQ4_0, block, 32);
  const float expected[32] = {-16, -14, -12, -10, -8, -6, -4,  -2,  0,   2,  4,
                              6,   8,   10,  12,  14, 14, 12,  10,  8,   6,  4,
                              2,   0,   -2,  -4,  -6, -8, -10, -12, -14, -16};
  for (int j = 0; j < 32; ++j) EXPECT_EQ(x[j], expected[j]) << j;
}

TEST(DequantTest, Q4_1Block) {
  // d = 0x3800 = 0.5, m = 0xbc00 = -1; qs[j] = j | (15 - j) << 4:
  // x[j] = j * 0.5 - 1, x[16 + j] = (15 - j) * 0.5 - 1.
  std::vector<uint8_t> block = {0x00, 0x38, 0x00, 0xbc};
  for (int j = 0; j < 16; ++j) block.push_back(static_cast<uint8_t>(j | ((15 - j) << 4)));
  // Two blocks: the second repeats the first with d = 1 (0x3c00), m = 0.
  std::vector<uint8_t> two = block;
  two.insert(two.end(), {0x00, 0x3c, 0x00, 0x00});
  two.insert(two.end(), block.begin() + 4, block.end());
  const std::vector<float> x = Dequant(GgmlType::kQ4_1, two, 64);
  EXPECT_EQ(x[0], -1.0f);
  EXPECT_EQ(x[1], -0.5f);
  EXPECT_EQ(x[15], 6.5f);
  EXPECT_EQ(x[16], 6.5f);
  EXPECT_EQ(x[31], -1.0f);
  EXPECT_EQ(x[32 + 5], 5.0f);
  EXPECT_EQ(x[32 + 16 + 5], 10.0f);
}

TEST(DequantTest, RejectsPartialBlocksAndNull) {
  float out[32];
  uint8_t in[64] = {};
  EXPECT_FALSE(DequantizeToF32(GgmlType::kQ4_0, in, 31, out).ok());
  EXPECT_FALSE(DequantizeToF32(GgmlType::kQ4_0, nullptr, 32, out).ok());
  EXPECT_FALSE(DequantizeToF32(static_cast<GgmlType>(12), in, 32, out).ok());
  EXPECT_TRUE(DequantizeToF32(GgmlType::kQ4_0, in, 0, out).ok());
  EXPECT_FALSE(QuantizeFromF32(GgmlType::kQ8_0, out, -32, in).ok());
}

// ----- quantization matches ggml's reference quantizers -----

// x[j] = ((7 j) mod 32 - 13) / 4, exact in fp32. Expected bytes from the python `gguf` package
// (gguf.quants.quantize, which mirrors ggml's quantize_row_*_ref), gguf 0.x in /tmp/gv.
std::vector<float> PatternBlock() {
  std::vector<float> x(32);
  for (int j = 0; j < 32; ++j) x[j] = static_cast<float>((j * 7) % 32 - 13) * 0.25f;
  return x;
}

TEST(QuantizeTest, Q8_0MatchesReference) {
  EXPECT_EQ(Quant(GgmlType::kQ8_0, PatternBlock()),
            Hex("8928a4d607386ab9eb1c4e7fcf003163b2e4154778c8f92a5cabdd0e4071c0f22355"));
}

TEST(QuantizeTest, Q4_0MatchesReference) {
  // amax 4.5 is positive -> d = 4.5 / -8 = -0.5625 (fp16 0xb880): the signed extreme maps to q=0.
  EXPECT_EQ(Quant(GgmlType::kQ4_0, PatternBlock()), Hex("80b87e4b08c4815c29d6a3704b18c5926d3a"));
}

TEST(QuantizeTest, Q4_1MatchesReference) {
  // min -3.25, max 4.5 -> d = 7.75 / 15 (fp16 0x3822), m = -3.25 (fp16 0xc280).
  EXPECT_EQ(Quant(GgmlType::kQ4_1, PatternBlock()),
            Hex("223880c280b3f72a6e91d5084c7fb3e62a5d91c4"));
}

TEST(QuantizeTest, AllZeroBlocksGiveZeros) {
  const std::vector<float> zeros(32, 0.0f);
  for (GgmlType t : {GgmlType::kQ8_0, GgmlType::kQ4_0, GgmlType::kQ4_1}) {
    const std::vector<float> back = Dequant(t, Quant(t, zeros), 32);
    for (float v : back) EXPECT_EQ(v, 0.0f);
  }
}

TEST(QuantizeTest, RejectsNonFiniteForBlockTypes) {
  std::vector<float> x(32, 1.0f);
  x[7] = std::numeric_limits<float>::quiet_NaN();
  std::vector<uint8_t> out(64);
  EXPECT_FALSE(QuantizeFromF32(GgmlType::kQ4_0, x.data(), 32, out.data()).ok());
  EXPECT_TRUE(QuantizeFromF32(GgmlType::kF16, x.data(), 32, out.data()).ok());
}

// ----- round trips on random data, error bounded per block -----

struct RoundTripCase {
  GgmlType type;
  const char* name;
};

class RoundTripTest : public TestWithParam<RoundTripCase> {};

// Largest allowed |x - dequant(quant(x))| for one element, given its block's statistics.
float Bound(GgmlType type, float x, float amax, float min, float max) {
  constexpr float kHalfRel = 1.0f / 1024;  // fp16 rounding of scales, with margin
  switch (type) {
    case GgmlType::kF32:
      return 0.0f;
    // Relative 2^-11 for normals; absolute half an ulp (2^-25) in the subnormal range.
    case GgmlType::kF16:
      return std::max(std::fabs(x) * kHalfRel / 2, std::ldexp(1.0f, -25));
    case GgmlType::kBF16:
      return std::fabs(x) / 256;
    case GgmlType::kQ8_0:
      return amax / 127 * 0.5f + amax * kHalfRel;
    // Step amax/8; the extreme of the opposite sign to `max` clamps to 15: up to one full step.
    case GgmlType::kQ4_0:
      return amax / 8 * 1.0f + amax * kHalfRel * 8;
    case GgmlType::kQ4_1:
      return (max - min) / 15 * 0.5f + (std::fabs(min) + (max - min)) * kHalfRel;
  }
  return 0.0f;
}

TEST_P(RoundTripTest, ErrorWithinBlockBound) {
  const GgmlType type = GetParam().type;
  std::mt19937 rng(1234);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int64_t n = 32 * 64;
  std::vector<float> x(n);
  for (int64_t i = 0; i < n; ++i) {
    const float scale = std::pow(10.0f, static_cast<float>(i / 32 % 5) - 2);  // blocks 1e-2..1e2
    x[i] = normal(rng) * scale + (i % 97 == 0 ? 3.0f * scale : 0.0f);
    if (x[i] == 0.0f) x[i] = scale;  // never zero
  }
  const std::vector<float> y = Dequant(type, Quant(type, x), n);
  double sum_err = 0, sum_abs = 0;
  for (int64_t b = 0; b < n / 32; ++b) {
    float amax = 0, min = x[b * 32], max = x[b * 32];
    for (int j = 0; j < 32; ++j) {
      const float v = x[b * 32 + j];
      amax = std::max(amax, std::fabs(v));
      min = std::min(min, v);
      max = std::max(max, v);
    }
    for (int j = 0; j < 32; ++j) {
      const int64_t i = b * 32 + j;
      const float err = std::fabs(x[i] - y[i]);
      ASSERT_LE(err, Bound(type, x[i], amax, min, max)) << "element " << i << " x=" << x[i];
      sum_err += err;
      sum_abs += std::fabs(x[i]);
    }
  }
  // Overall relative error, a coarse check that typical errors are well inside the bound.
  const double rel = sum_err / sum_abs;
  const double limit = type == GgmlType::kQ4_0 || type == GgmlType::kQ4_1 ? 0.15
                       : type == GgmlType::kQ8_0                          ? 0.01
                                                                          : 0.005;
  EXPECT_LT(rel, limit);
  if (type == GgmlType::kF32) {
    EXPECT_EQ(rel, 0.0);
  }
}

INSTANTIATE_TEST_SUITE_P(AllTypes, RoundTripTest,
                         ::testing::Values(RoundTripCase{GgmlType::kF32, "F32"},
                                           RoundTripCase{GgmlType::kF16, "F16"},
                                           RoundTripCase{GgmlType::kBF16, "BF16"},
                                           RoundTripCase{GgmlType::kQ8_0, "Q8_0"},
                                           RoundTripCase{GgmlType::kQ4_0, "Q4_0"},
                                           RoundTripCase{GgmlType::kQ4_1, "Q4_1"}),
                         [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace xkv::cpu
