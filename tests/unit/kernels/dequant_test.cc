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
  EXPECT_FALSE(DequantizeToF32(static_cast<GgmlType>(15), in, 32, out).ok());  // Q8_K
  EXPECT_FALSE(DequantizeToF32(GgmlType::kQ4_K, in, 32, out).ok());            // 256 per block
  EXPECT_TRUE(DequantizeToF32(GgmlType::kQ4_0, in, 0, out).ok());
  EXPECT_FALSE(QuantizeFromF32(GgmlType::kQ8_0, out, -32, in).ok());
}

// ----- K-quants: hand-built super-blocks of 256 (layouts in kernels/cpu/kquants.cc) -----

std::vector<uint8_t> Repeat(uint8_t byte, int n) { return std::vector<uint8_t>(n, byte); }

void Put(std::vector<uint8_t>& block, std::initializer_list<uint8_t> bytes) {
  block.insert(block.end(), bytes.begin(), bytes.end());
}

TEST(DequantKQuantTest, Q2_KBlock) {
  // scales[s] = s | (15 - s) << 4: sub-block s (16 elements) has scale s and min 15 - s.
  // qs all 0xe4 (fields 0, 1, 2, 3 from the low bits): q = (e % 128) / 32.
  // d = 0.5 (0x3800), dmin = 0.25 (0x3400): x[e] = 0.5 * s * q - 0.25 * (15 - s), s = e / 16.
  std::vector<uint8_t> block;
  for (int s = 0; s < 16; ++s) block.push_back(static_cast<uint8_t>(s | ((15 - s) << 4)));
  const std::vector<uint8_t> qs = Repeat(0xe4, 64);
  block.insert(block.end(), qs.begin(), qs.end());
  Put(block, {0x00, 0x38, 0x00, 0x34});
  ASSERT_EQ(block.size(), 84u);
  const std::vector<float> x = Dequant(GgmlType::kQ2_K, block, 256);
  for (int e = 0; e < 256; ++e) {
    const int s = e / 16, q = e % 128 / 32;
    EXPECT_EQ(x[e], 0.5f * s * q - 0.25f * (15 - s)) << e;
  }
  EXPECT_EQ(x[0], -3.75f);   // s 0, q 0
  EXPECT_EQ(x[255], 22.5f);  // s 15, q 3, min 0
}

TEST(DequantKQuantTest, Q3_KBlock) {
  // hmask all 0x0f: the high bit is set for the first 128 elements (no -4) and clear after.
  // qs all 0xe4: low bits = (e % 128) / 32. So q = (e % 128) / 32 - (e < 128 ? 0 : 4).
  // scales: bytes 0..7 = i | (8 + i) << 4 give the low 4 bits s of sub-block s; byte 8 = 0xe4
  // gives high bits 0, 1, 2, 3 to sub-blocks 0, 4, 8, 12; bytes 9..11 = 0x02 give high bits 2 to
  // sub-blocks 1, 2, 3. Scale = (low | high << 4) - 32, tabulated below. d = 0.5 (0x3800).
  std::vector<uint8_t> block = Repeat(0x0f, 32);
  const std::vector<uint8_t> qs = Repeat(0xe4, 64);
  block.insert(block.end(), qs.begin(), qs.end());
  for (int i = 0; i < 8; ++i) block.push_back(static_cast<uint8_t>(i | ((8 + i) << 4)));
  Put(block, {0xe4, 0x02, 0x02, 0x02, 0x00, 0x38});
  ASSERT_EQ(block.size(), 110u);
  const int scale[16] = {-32, 1, 2, 3, -12, -27, -26, -25, 8, -23, -22, -21, 28, -19, -18, -17};
  const std::vector<float> x = Dequant(GgmlType::kQ3_K, block, 256);
  for (int e = 0; e < 256; ++e) {
    const int q = e % 128 / 32 - (e < 128 ? 0 : 4);
    EXPECT_EQ(x[e], 0.5f * scale[e / 16] * q) << e;
  }
  EXPECT_EQ(x[16 * 12 + 5], 0.5f * 28 * -2);  // element 197: second half, field 2
}

// Q4_K / Q5_K scales: 6-bit scale and min per 32-element sub-block, packed in 12 bytes.
//   bytes 0..3: scales 0..3 (low 6 bits); their top 2 bits are the high bits of scales 4..7
//   bytes 4..7: mins 0..3 (low 6 bits); their top 2 bits are the high bits of mins 4..7
//   bytes 8..11: low 4 bits of scales 4..7 | low 4 bits of mins 4..7 << 4
// Chosen: byte 3 = 0x44 (scale 3 = 4, scale 7 high bits 1), byte 7 = 0x83 (min 3 = 3, min 7 high
// bits 2), byte 8 = 0x21 (scale 4 = 1, min 4 = 2), byte 11 = 0x5f (scale 7 = 15 | 1 << 4 = 31,
// min 7 = 5 | 2 << 4 = 37).
constexpr uint8_t kK4Scales[12] = {0x01, 0x02, 0x03, 0x44, 0x00, 0x01,
                                   0x02, 0x83, 0x21, 0x00, 0x00, 0x5f};
constexpr int kK4Scale[8] = {1, 2, 3, 4, 1, 0, 0, 31};
constexpr int kK4Min[8] = {0, 1, 2, 3, 2, 0, 0, 37};

// d = 1 (0x3c00), dmin = 0.5 (0x3800), the scales above, then (Q5_K) 32 bytes of qh.
std::vector<uint8_t> K4Header(const std::vector<uint8_t>& qh) {
  std::vector<uint8_t> block = {0x00, 0x3c, 0x00, 0x38};
  block.insert(block.end(), std::begin(kK4Scales), std::end(kK4Scales));
  block.insert(block.end(), qh.begin(), qh.end());
  return block;
}

// Nibbles: byte 32c + l holds element 64c + l (low) and 64c + 32 + l (high); the bytes are
// l % 16 | (15 - l % 16) << 4, so even sub-blocks hold l % 16 and odd ones 15 - l % 16.
void AppendK4Nibbles(std::vector<uint8_t>& block) {
  for (int i = 0; i < 128; ++i) block.push_back(static_cast<uint8_t>(i % 16 | (15 - i % 16) << 4));
}

int K4Nibble(int e) { return e / 32 % 2 == 0 ? e % 16 : 15 - e % 16; }

TEST(DequantKQuantTest, Q4_KBlock) {
  std::vector<uint8_t> block = K4Header({});
  AppendK4Nibbles(block);
  ASSERT_EQ(block.size(), 144u);
  const std::vector<float> x = Dequant(GgmlType::kQ4_K, block, 256);
  for (int e = 0; e < 256; ++e) {
    const int s = e / 32;
    EXPECT_EQ(x[e], 1.0f * kK4Scale[s] * K4Nibble(e) - 0.5f * kK4Min[s]) << e;
  }
  EXPECT_EQ(x[32], 29.5f);      // sub-block 1, q 15: 2 * 15 - 0.5
  EXPECT_EQ(x[224], 446.5f);    // sub-block 7, q 15: 31 * 15 - 18.5
  EXPECT_EQ(x[255], -18.5f);    // sub-block 7, q 0
  EXPECT_EQ(x[64 + 3], 8.0f);   // sub-block 2, q 3: 9 - 1
  EXPECT_EQ(x[160 + 9], 0.0f);  // sub-block 5: scale and min 0
}

TEST(DequantKQuantTest, Q5_KBlock) {
  // qh[l] = 0xaa for l < 16, else 0: bits 1, 3, 5, 7 add 16 to the odd sub-blocks' first 16.
  std::vector<uint8_t> qh = Repeat(0xaa, 16);
  qh.resize(32, 0x00);
  std::vector<uint8_t> block = K4Header(qh);
  AppendK4Nibbles(block);
  ASSERT_EQ(block.size(), 176u);
  const std::vector<float> x = Dequant(GgmlType::kQ5_K, block, 256);
  for (int e = 0; e < 256; ++e) {
    const int s = e / 32, q = K4Nibble(e) + (s % 2 == 1 && e % 32 < 16 ? 16 : 0);
    EXPECT_EQ(x[e], 1.0f * kK4Scale[s] * q - 0.5f * kK4Min[s]) << e;
  }
  EXPECT_EQ(x[32], 61.5f);    // 2 * 31 - 0.5
  EXPECT_EQ(x[224], 942.5f);  // 31 * 31 - 18.5
  EXPECT_EQ(x[240], 446.5f);  // element 16 of sub-block 7: no fifth bit, 31 * 15 - 18.5
}

TEST(DequantKQuantTest, Q6_KBlock) {
  // ql all 0x21 (low nibble 1, high 2), qh all 0xe4 (2-bit fields 0, 1, 2, 3): within each 128
  // elements, the four groups of 32 get q = 1 | 0 << 4, 1 | 1 << 4, 2 | 2 << 4, 2 | 3 << 4, minus
  // 32: -31, -15, 2, 18. scales[s] = s - 8 for sub-block s = e / 16; d = 0.25 (0x3400).
  // ql[5] = 0xf3 changes element 5 (q 3 - 32 = -29) and element 69 (q 15 | 2 << 4 - 32 = 15).
  std::vector<uint8_t> block = Repeat(0x21, 128);
  block[5] = 0xf3;
  const std::vector<uint8_t> qh = Repeat(0xe4, 64);
  block.insert(block.end(), qh.begin(), qh.end());
  for (int s = 0; s < 16; ++s) block.push_back(static_cast<uint8_t>(static_cast<int8_t>(s - 8)));
  Put(block, {0x00, 0x34});
  ASSERT_EQ(block.size(), 210u);
  const int group_q[4] = {-31, -15, 2, 18};
  const std::vector<float> x = Dequant(GgmlType::kQ6_K, block, 256);
  for (int e = 0; e < 256; ++e) {
    int q = group_q[e % 128 / 32];
    if (e == 5) q = -29;
    if (e == 69) q = 15;
    EXPECT_EQ(x[e], 0.25f * (e / 16 - 8) * q) << e;
  }
  EXPECT_EQ(x[5], 58.0f);    // 0.25 * -8 * -29
  EXPECT_EQ(x[255], 31.5f);  // 0.25 * 7 * 18
}

// The K-quant writer's quantizer (kernels/cpu/kquants.h) on normal data of magnitudes 1e-2..1e2 per
// super-block: each element within max_err of its super-block's largest |x|, and the mean relative
// error below rel_err. max_err: half a step (the sub-block's range / (2^bits - 1)), a full step
// where the symmetric types (Q3_K, Q6_K) clamp the extreme of the other sign, plus the rounding of
// the sub-block scales against the largest one; measured: Q2_K 0.31, Q3_K 0.21, Q4_K 0.063, Q5_K
// 0.031, Q6_K 0.018 (mean relative 0.22, 0.13, 0.054, 0.027, 0.016).
struct KQuantCase {
  GgmlType type;
  const char* name;
  float max_err;  // relative to the super-block's amax
  double rel_err;
};

class KQuantRoundTripTest : public TestWithParam<KQuantCase> {};

TEST_P(KQuantRoundTripTest, ErrorWithinSuperBlockBound) {
  const KQuantCase& c = GetParam();
  std::mt19937 rng(99);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int64_t n = 256 * 40;
  std::vector<float> x(n);
  for (int64_t i = 0; i < n; ++i) {
    const float scale = std::pow(10.0f, static_cast<float>(i / 256 % 5) - 2);
    x[i] = normal(rng) * scale + (i / 256 % 3 == 1 ? 2.0f * scale : 0.0f);  // some offset blocks
  }
  const std::vector<float> y = Dequant(c.type, Quant(c.type, x), n);
  double sum_err = 0, sum_abs = 0;
  for (int64_t b = 0; b < n / 256; ++b) {
    float amax = 0;
    for (int j = 0; j < 256; ++j) amax = std::max(amax, std::fabs(x[b * 256 + j]));
    for (int j = 0; j < 256; ++j) {
      const int64_t i = b * 256 + j;
      const float err = std::fabs(x[i] - y[i]);
      ASSERT_LE(err, c.max_err * amax) << c.name << " element " << i << " x=" << x[i];
      sum_err += err;
      sum_abs += std::fabs(x[i]);
    }
  }
  EXPECT_LT(sum_err / sum_abs, c.rel_err) << c.name;
  const std::vector<float> zeros(256, 0.0f);
  for (float v : Dequant(c.type, Quant(c.type, zeros), 256)) EXPECT_EQ(v, 0.0f) << c.name;
}

INSTANTIATE_TEST_SUITE_P(KQuants, KQuantRoundTripTest,
                         ::testing::Values(KQuantCase{GgmlType::kQ2_K, "Q2_K", 0.45f, 0.25},
                                           KQuantCase{GgmlType::kQ3_K, "Q3_K", 0.3f, 0.15},
                                           KQuantCase{GgmlType::kQ4_K, "Q4_K", 0.1f, 0.06},
                                           KQuantCase{GgmlType::kQ5_K, "Q5_K", 0.05f, 0.03},
                                           KQuantCase{GgmlType::kQ6_K, "Q6_K", 0.025f, 0.018}),
                         [](const auto& info) { return std::string(info.param.name); });

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
    default:  // K-quants: KQuantRoundTripTest
      return 0.0f;
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
