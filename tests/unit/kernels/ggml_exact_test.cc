#include "kernels/cpu/ggml_exact.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <iterator>
#include <limits>
#include <random>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "kernels/cpu/half.h"
#include "kernels/cpu/parallel_for.h"
#include "kernels/cpu/rms_norm.h"
#include "kernels/ggml_types.h"

#if defined(__AVX512F__) && defined(__AVX512DQ__)
#if defined(__GNUC__) && !defined(__clang__)
// GCC 12's _mm512_undefined_ps() trips -Wmaybe-uninitialized once inlined.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#define XKV_TEST_AVX512 1
#endif

namespace xkv::cpu::ggml {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

float RoundF16(float x) { return F16ToF32(F32ToF16(x)); }

// A product rounded to fp32 on its own. This file is built with GCC's default -ffp-contract=fast,
// which could fuse a product into a following addition; the bit-exact re-derivations below use
// Mul for every product that feeds a sum and spell out each fma they mean.
float Mul(float a, float b) {
  volatile float p = a * b;
  return p;
}

// The documented lane trees, written out: hsum_float_8 and GCC's _mm512_reduce_add_ps.
float Tree8(const float* l) {
  return ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
}

float Tree16(const float* l) {
  const float t[8] = {l[0] + l[8],  l[1] + l[9],  l[2] + l[10], l[3] + l[11],
                      l[4] + l[12], l[5] + l[13], l[6] + l[14], l[7] + l[15]};
  return Tree8(t);
}

float LeftToRight(const float* l, int n) {
  float s = 0.f;
  for (int i = 0; i < n; ++i) s += l[i];
  return s;
}

void PutU16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v & 0xff);
  p[1] = static_cast<uint8_t>(v >> 8);
}

// ---------------------------------------------------------------------------------------------
// QuantizeRow

// Three blocks computed by hand.
//  0: amax = |-63.5| → d = 0.5, id = 127 / 63.5 = 2 exactly, so q = round-half-even(2x).
//  1: amax = 1 → d = 1/127 (fp16 0x2008 = 0.00787353515625); Σq = 30·127 + 2·76 = 3962 and
//     s = fp16(d·3962) = fp16(31.1968…) = 31.203125 with the unrounded d (fp16(d) · 3962 would
//     give 31.1875).
//  2: all zeros → d = 0, q = 0, s = 0.
TEST(GgmlExactQuantizeTest, HandComputedBlocks) {
  std::vector<float> x(3 * kQBlock, 0.f);
  const float x0[10] = {1.25f, 1.75f, -1.25f, -63.5f, 0.2f, 0.3f, 10.f, -0.75f, 0.25f, 0.75f};
  // 2.5 → 2, 3.5 → 4, -2.5 → -2, -127 (the amax is negative), 0.4 → 0, 0.6 → 1, 20,
  // -1.5 → -2, 0.5 → 0, 1.5 → 2; the remaining 22 elements are 3 → 6.
  const int q0[10] = {2, 4, -2, -127, 0, 1, 20, -2, 0, 2};
  for (int i = 0; i < 10; ++i) x[i] = x0[i];
  for (int i = 10; i < 32; ++i) x[i] = 3.f;
  for (int i = 0; i < 30; ++i) x[32 + i] = 1.f;
  x[62] = x[63] = 76.f / 127.f;

  ActBlock out[3];
  QuantizeRow(x.data(), 3 * kQBlock, out);

  EXPECT_EQ(out[0].d, 0.5f);
  EXPECT_EQ(out[0].s, 15.f);  // Σq = -102 + 22·6 = 30
  for (int i = 0; i < 10; ++i) EXPECT_EQ(out[0].q[i], q0[i]) << "i=" << i;
  for (int i = 10; i < 32; ++i) EXPECT_EQ(out[0].q[i], 6) << "i=" << i;

  EXPECT_EQ(out[1].d, 0.00787353515625f);
  EXPECT_EQ(out[1].d, F16ToF32(0x2008));
  EXPECT_EQ(out[1].s, 31.203125f);
  for (int i = 0; i < 30; ++i) EXPECT_EQ(out[1].q[i], 127) << "i=" << i;
  EXPECT_EQ(out[1].q[30], 76);
  EXPECT_EQ(out[1].q[31], 76);

  EXPECT_EQ(out[2].d, 0.f);
  EXPECT_EQ(out[2].s, 0.f);
  for (int i = 0; i < 32; ++i) EXPECT_EQ(out[2].q[i], 0) << "i=" << i;
}

// Random blocks against the definition in double: q within half a step of x·127/amax, the
// amax element at ±127, d and s within fp16 rounding of amax/127 and (amax/127)·Σq.
TEST(GgmlExactQuantizeTest, RandomBlocksFollowDefinition) {
  std::mt19937 rng(11);
  std::normal_distribution<float> dist(0.f, 2.f);
  const int64_t k = 8 * kQBlock;
  std::vector<float> x(k);
  for (float& v : x) v = dist(rng);
  std::vector<ActBlock> out(k / kQBlock);
  QuantizeRow(x.data(), k, out.data());
  for (int64_t b = 0; b < k / kQBlock; ++b) {
    double amax = 0;
    for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(double(x[b * 32 + i])));
    const double d = amax / 127;
    int sum = 0, qmax = 0;
    for (int i = 0; i < 32; ++i) {
      const int q = out[b].q[i];
      EXPECT_LE(std::fabs(x[b * 32 + i] / d - q), 0.5 + 1e-4) << "b=" << b << " i=" << i;
      sum += q;
      qmax = std::max(qmax, std::abs(q));
    }
    EXPECT_EQ(qmax, 127);
    EXPECT_NEAR(out[b].d, d, d * 0x1.01p-11);
    EXPECT_NEAR(out[b].s, d * sum, std::fabs(d * sum) * 0x1.01p-11 + 1e-12);
  }
}

// ---------------------------------------------------------------------------------------------
// QuantMatrix::AppendRows

void ExpectBlock(const QuantMatrix::Block& b, float d, float m, const int* q) {
  EXPECT_EQ(b.d, d);
  EXPECT_EQ(b.m, m);
  for (int i = 0; i < 32; ++i) EXPECT_EQ(b.q[i], q[i]) << "i=" << i;
}

// 2 rows × 64 columns of Q4_1: 4 blocks of (fp16 d, fp16 m, 16 bytes: element j in the low
// nibble of byte j, element j + 16 in its high nibble).
struct Q4_1Fixture {
  std::vector<uint8_t> raw;
  float d[4], m[4];
  int q[4][32];
};

Q4_1Fixture MakeQ4_1Fixture() {
  Q4_1Fixture f;
  f.raw.assign(4 * 20, 0);
  const uint16_t dbits[4] = {0x3800, 0x2e66, 0x1c00, 0x3c00};
  const uint16_t mbits[4] = {0xbd00, 0xa4cd, 0x8000, 0x4000};
  std::mt19937 rng(3);
  for (int b = 0; b < 4; ++b) {
    uint8_t* p = f.raw.data() + 20 * b;
    PutU16(p, dbits[b]);
    PutU16(p + 2, mbits[b]);
    f.d[b] = F16ToF32(dbits[b]);
    f.m[b] = F16ToF32(mbits[b]);
    for (int j = 0; j < 16; ++j) {
      const uint8_t byte =
          b == 0 ? static_cast<uint8_t>(j | (15 - j) << 4) : static_cast<uint8_t>(rng() & 0xff);
      p[4 + j] = byte;
      f.q[b][j] = byte & 0x0f;
      f.q[b][j + 16] = byte >> 4;
    }
  }
  return f;
}

TEST(GgmlExactQuantMatrixTest, UnpacksQ4_1) {
  const Q4_1Fixture f = MakeQ4_1Fixture();
  // Block 0 by hand: d = 0.5, m = -1.25, q[j] = j, q[j + 16] = 15 - j.
  EXPECT_EQ(f.d[0], 0.5f);
  EXPECT_EQ(f.m[0], -1.25f);
  int q0[32];
  for (int j = 0; j < 16; ++j) {
    q0[j] = j;
    q0[j + 16] = 15 - j;
  }

  QuantMatrix w;
  EXPECT_TRUE(w.empty());
  ASSERT_TRUE(w.AppendRows(GgmlType::kQ4_1, f.raw.data(), f.raw.size(), 2, 64).ok());
  EXPECT_FALSE(w.empty());
  EXPECT_EQ(w.type(), GgmlType::kQ4_1);
  EXPECT_EQ(w.rows(), 2);
  EXPECT_EQ(w.cols(), 64);
  EXPECT_EQ(w.Bytes(), 4 * 24);  // per Q4_1 block: fp32 d and m, 16 packed bytes
  ExpectBlock(w.block(0, 0), 0.5f, -1.25f, q0);
  ExpectBlock(w.block(0, 1), f.d[1], f.m[1], f.q[1]);
  ExpectBlock(w.block(1, 0), f.d[2], f.m[2], f.q[2]);
  ExpectBlock(w.block(1, 1), f.d[3], f.m[3], f.q[3]);

  // Fused rows of the same type and width append after the first ones.
  ASSERT_TRUE(w.AppendRows(GgmlType::kQ4_1, f.raw.data() + 40, 40, 1, 64).ok());
  EXPECT_EQ(w.rows(), 3);
  ExpectBlock(w.block(2, 0), f.d[2], f.m[2], f.q[2]);
  ExpectBlock(w.block(2, 1), f.d[3], f.m[3], f.q[3]);
  ExpectBlock(w.block(0, 0), 0.5f, -1.25f, q0);
}

// 1 row × 64 columns of Q8_0: 2 blocks of (fp16 d, 32 int8).
TEST(GgmlExactQuantMatrixTest, UnpacksQ8_0) {
  std::vector<uint8_t> raw(2 * 34);
  PutU16(raw.data(), 0x3c00);       // 1.0
  PutU16(raw.data() + 34, 0xa000);  // -2^-7
  int q[2][32];
  std::mt19937 rng(4);
  std::uniform_int_distribution<int> dist(-128, 127);
  for (int i = 0; i < 32; ++i) {
    q[0][i] = 8 * i - 128;  // -128 .. 120
    q[1][i] = i == 31 ? 127 : dist(rng);
    raw[2 + i] = static_cast<uint8_t>(static_cast<int8_t>(q[0][i]));
    raw[36 + i] = static_cast<uint8_t>(static_cast<int8_t>(q[1][i]));
  }
  QuantMatrix w;
  ASSERT_TRUE(w.AppendRows(GgmlType::kQ8_0, raw.data(), raw.size(), 1, 64).ok());
  EXPECT_EQ(w.type(), GgmlType::kQ8_0);
  EXPECT_EQ(w.rows(), 1);
  EXPECT_EQ(w.cols(), 64);
  EXPECT_EQ(w.Bytes(), 2 * 36);  // per Q8_0 block: fp32 d, 32 int8
  ExpectBlock(w.block(0, 0), 1.f, 0.f, q[0]);
  ExpectBlock(w.block(0, 1), -0.0078125f, 0.f, q[1]);
}

TEST(GgmlExactQuantMatrixTest, RejectsBadRowsAndKeepsMatrix) {
  EXPECT_TRUE(IsExactQuantType(GgmlType::kQ4_1));
  EXPECT_TRUE(IsExactQuantType(GgmlType::kQ8_0));
  EXPECT_FALSE(IsExactQuantType(GgmlType::kF32));
  EXPECT_FALSE(IsExactQuantType(GgmlType::kQ4_0));

  const Q4_1Fixture f = MakeQ4_1Fixture();
  std::vector<uint8_t> q8(2 * 34, 1);
  const auto code = [](const absl::Status& s) { return s.code(); };
  constexpr auto kInvalid = absl::StatusCode::kInvalidArgument;

  QuantMatrix fresh;
  EXPECT_EQ(code(fresh.AppendRows(GgmlType::kF32, f.raw.data(), f.raw.size(), 1, 32)), kInvalid);
  EXPECT_EQ(code(fresh.AppendRows(GgmlType::kQ4_0, f.raw.data(), f.raw.size(), 1, 32)), kInvalid);
  EXPECT_EQ(code(fresh.AppendRows(GgmlType::kQ4_1, f.raw.data(), f.raw.size(), 1, 48)), kInvalid);
  EXPECT_EQ(code(fresh.AppendRows(GgmlType::kQ4_1, f.raw.data(), 39, 1, 64)), kInvalid);
  EXPECT_TRUE(fresh.empty());
  EXPECT_EQ(fresh.rows(), 0);

  QuantMatrix w;
  ASSERT_TRUE(w.AppendRows(GgmlType::kQ4_1, f.raw.data(), f.raw.size(), 2, 64).ok());
  const auto size = f.raw.size();
  // Unsupported type.
  EXPECT_EQ(code(w.AppendRows(GgmlType::kF32, f.raw.data(), size, 1, 64)), kInvalid);
  // Width not a multiple of 32, or not positive.
  EXPECT_EQ(code(w.AppendRows(GgmlType::kQ4_1, f.raw.data(), size, 1, 48)), kInvalid);
  EXPECT_EQ(code(w.AppendRows(GgmlType::kQ4_1, f.raw.data(), size, 1, 0)), kInvalid);
  EXPECT_EQ(code(w.AppendRows(GgmlType::kQ4_1, f.raw.data(), size, -1, 64)), kInvalid);
  // Short buffer (2 rows × 2 blocks × 20 bytes = 80 needed) and no buffer.
  EXPECT_EQ(code(w.AppendRows(GgmlType::kQ4_1, f.raw.data(), 79, 2, 64)), kInvalid);
  EXPECT_EQ(code(w.AppendRows(GgmlType::kQ4_1, nullptr, 80, 2, 64)), kInvalid);
  // Fused rows of another type or width.
  EXPECT_EQ(code(w.AppendRows(GgmlType::kQ8_0, q8.data(), q8.size(), 1, 64)), kInvalid);
  EXPECT_EQ(code(w.AppendRows(GgmlType::kQ4_1, f.raw.data(), size, 2, 32)), kInvalid);

  EXPECT_EQ(w.rows(), 2);
  EXPECT_EQ(w.cols(), 64);
  EXPECT_EQ(w.type(), GgmlType::kQ4_1);
  EXPECT_EQ(w.Bytes(), 4 * 24);  // per Q4_1 block: fp32 d and m, 16 packed bytes
  ExpectBlock(w.block(1, 1), f.d[3], f.m[3], f.q[3]);

  // A Q8_0 matrix refuses Q4_1 rows, and a short Q8_0 buffer (34 bytes per block).
  QuantMatrix w8;
  ASSERT_TRUE(w8.AppendRows(GgmlType::kQ8_0, q8.data(), q8.size(), 1, 64).ok());
  EXPECT_EQ(code(w8.AppendRows(GgmlType::kQ4_1, f.raw.data(), size, 1, 64)), kInvalid);
  EXPECT_EQ(code(w8.AppendRows(GgmlType::kQ8_0, q8.data(), 67, 1, 64)), kInvalid);
  EXPECT_EQ(w8.rows(), 1);
}

// ---------------------------------------------------------------------------------------------
// LaunchQuantMatmul

// Random weights as raw GGUF bytes, with their decoded values kept on the side.
struct RawWeights {
  GgmlType type;
  int64_t rows, cols;
  std::vector<uint8_t> bytes;
  std::vector<float> d, m;  // per block (fp16 values)
  std::vector<int> q;       // per element, rows × cols
};

RawWeights MakeWeights(GgmlType type, int64_t rows, int64_t cols, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dd(0.002f, 0.03f), md(-0.3f, 0.05f);
  std::uniform_int_distribution<int> nib(0, 15), i8(-128, 127);
  RawWeights w{type, rows, cols, {}, {}, {}, {}};
  const bool q4 = type == GgmlType::kQ4_1;
  const int64_t nb = rows * cols / kQBlock, block_bytes = q4 ? 20 : 34;
  w.bytes.assign(nb * block_bytes, 0);
  w.q.resize(rows * cols);
  for (int64_t b = 0; b < nb; ++b) {
    uint8_t* p = w.bytes.data() + b * block_bytes;
    const uint16_t d16 = F32ToF16(dd(rng));
    PutU16(p, d16);
    w.d.push_back(F16ToF32(d16));
    int* q = w.q.data() + b * kQBlock;
    if (q4) {
      const uint16_t m16 = F32ToF16(md(rng));
      PutU16(p + 2, m16);
      w.m.push_back(F16ToF32(m16));
      for (int j = 0; j < 32; ++j) q[j] = nib(rng);
      for (int j = 0; j < 16; ++j) p[4 + j] = static_cast<uint8_t>(q[j] | q[j + 16] << 4);
    } else {
      w.m.push_back(0.f);
      for (int j = 0; j < 32; ++j) {
        q[j] = i8(rng);
        p[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(q[j]));
      }
    }
  }
  return w;
}

std::vector<ActBlock> MakeActivations(int64_t m, int64_t cols, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.f, 1.5f);
  std::vector<float> x(m * cols);
  for (float& v : x) v = dist(rng);
  std::vector<ActBlock> a(m * cols / kQBlock);
  for (int64_t i = 0; i < m; ++i) QuantizeRow(x.data() + i * cols, cols, &a[i * cols / kQBlock]);
  return a;
}

struct RefDots {
  float exact;          // the documented order
  float left_to_right;  // lanes summed 0..7 instead of Sum8's tree
  float min_from_d;     // Q4_1's minimum term from fp16(d_a)·Σq_a instead of the block's s
};

// Scalar re-derivation of the documented block-dot order from the decoded GGUF values.
RefDots RefDot(const RawWeights& w, int64_t row, const ActBlock* a) {
  const int64_t nb = w.cols / kQBlock;
  const bool q4 = w.type == GgmlType::kQ4_1;
  float lanes[8] = {};
  float summs = 0.f, summs_d = 0.f;
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t wb = row * nb + b;
    const int* wq = w.q.data() + wb * kQBlock;
    if (q4) {
      // m and s are fp16 values, so m·s is exact in fp32 and fma(m, s, summs) equals
      // summs + m·s: the fma cannot be told apart, but using s (not d_a·Σq_a) can.
      summs = std::fma(w.m[wb], a[b].s, summs);
      int32_t sum_a = 0;
      for (int i = 0; i < 32; ++i) sum_a += a[b].q[i];
      summs_d = std::fma(w.m[wb], Mul(a[b].d, static_cast<float>(sum_a)), summs_d);
    }
    const float dd = Mul(w.d[wb], a[b].d);
    for (int k = 0; k < 8; ++k) {
      int32_t s = 0;
      for (int i = 4 * k; i < 4 * k + 4; ++i) s += wq[i] * static_cast<int32_t>(a[b].q[i]);
      lanes[k] = std::fma(dd, static_cast<float>(s), lanes[k]);
    }
  }
  const float tree = Tree8(lanes), seq = LeftToRight(lanes, 8);
  if (!q4) return {tree, seq, tree};
  return {tree + summs, seq + summs, tree + summs_d};
}

struct MatmulShape {
  int64_t rows, cols, m;
};

const MatmulShape kMatmulShapes[] = {{1, 32, 1}, {17, 96, 1}, {40, 256, 3}, {33, 64, 5}};

TEST(GgmlExactMatmulTest, MatchesDocumentedOrderBitwise) {
  ThreadPool pool(2);
  uint32_t seed = 100;
  for (const GgmlType type : {GgmlType::kQ4_1, GgmlType::kQ8_0}) {
    int tree_matters = 0, s_matters = 0;
    for (const MatmulShape& s : kMatmulShapes) {
      const RawWeights raw = MakeWeights(type, s.rows, s.cols, ++seed);
      QuantMatrix w;
      ASSERT_TRUE(w.AppendRows(type, raw.bytes.data(), raw.bytes.size(), s.rows, s.cols).ok());
      const std::vector<ActBlock> a = MakeActivations(s.m, s.cols, ++seed);
      const int64_t nb = s.cols / kQBlock, ldc = s.rows + 3;
      std::vector<RefDots> ref(s.m * s.rows);
      for (int64_t i = 0; i < s.m; ++i) {
        for (int64_t r = 0; r < s.rows; ++r) {
          ref[i * s.rows + r] = RefDot(raw, r, a.data() + i * nb);
          const RefDots& d = ref[i * s.rows + r];
          tree_matters += d.exact != d.left_to_right;
          s_matters += d.exact != d.min_from_d;
        }
      }
      std::mt19937 rng(++seed);
      std::uniform_real_distribution<float> init(-2.f, 2.f);
      std::vector<float> c0(s.m * ldc);
      for (float& v : c0) v = init(rng);
      for (const bool accumulate : {false, true}) {
        for (ThreadPool* p : {static_cast<ThreadPool*>(nullptr), &pool}) {
          SCOPED_TRACE(testing::Message() << "type " << static_cast<int>(type) << " rows " << s.rows
                                          << " cols " << s.cols << " m " << s.m << " accumulate "
                                          << accumulate << " pool " << (p != nullptr));
          std::vector<float> c = c0;
          ASSERT_TRUE(LaunchQuantMatmul(w, a.data(), s.m, c.data(), ldc, accumulate, p).ok());
          for (int64_t i = 0; i < s.m; ++i) {
            for (int64_t r = 0; r < s.rows; ++r) {
              const float dot = ref[i * s.rows + r].exact;
              const float want = accumulate ? c0[i * ldc + r] + dot : dot;
              ASSERT_EQ(FloatBits(c[i * ldc + r]), FloatBits(want))
                  << "i=" << i << " r=" << r << " got " << c[i * ldc + r] << " want " << want;
            }
            for (int64_t r = s.rows; r < ldc; ++r) EXPECT_EQ(c[i * ldc + r], c0[i * ldc + r]);
          }
        }
      }
    }
    // The data is such that the summation order (and Q4_1's use of s) changes some results, so
    // the bitwise comparison above pins them.
    EXPECT_GT(tree_matters, 0);
    if (type == GgmlType::kQ4_1) {
      EXPECT_GT(s_matters, 0);
    }
  }
}

// Against the dequantized product in double. Tight: Σ d_w·d_a·q_w·q_a + Σ m_w·s_a (Q4_1's minimum
// term uses the activation block's s). Loose: the true Σ (d_w·q_w + m_w)·(d_a·q_a), which differs
// by the fp16 roundings of s (≤ 2^-10 of |m_w·d·Σq_a| per block).
TEST(GgmlExactMatmulTest, MatchesDequantizedDotInDouble) {
  uint32_t seed = 500;
  for (const GgmlType type : {GgmlType::kQ4_1, GgmlType::kQ8_0}) {
    for (const MatmulShape& s : kMatmulShapes) {
      SCOPED_TRACE(testing::Message() << "type " << static_cast<int>(type) << " rows " << s.rows
                                      << " cols " << s.cols << " m " << s.m);
      const RawWeights raw = MakeWeights(type, s.rows, s.cols, ++seed);
      QuantMatrix w;
      ASSERT_TRUE(w.AppendRows(type, raw.bytes.data(), raw.bytes.size(), s.rows, s.cols).ok());
      const std::vector<ActBlock> a = MakeActivations(s.m, s.cols, ++seed);
      const int64_t nb = s.cols / kQBlock;
      std::vector<float> c(s.m * s.rows);
      ASSERT_TRUE(LaunchQuantMatmul(w, a.data(), s.m, c.data(), s.rows, false, nullptr).ok());
      for (int64_t i = 0; i < s.m; ++i) {
        for (int64_t r = 0; r < s.rows; ++r) {
          double scaled = 0, mins = 0, exact = 0, abs_sum = 0, s_slack = 0;
          for (int64_t b = 0; b < nb; ++b) {
            const ActBlock& ab = a[i * nb + b];
            const double wd = raw.d[r * nb + b], wm = raw.m[r * nb + b];
            int sum_a = 0;
            for (int j = 0; j < 32; ++j) {
              const double wq = raw.q[(r * nb + b) * 32 + j], aq = ab.q[j];
              const double term = wd * ab.d * wq * aq;
              scaled += term;
              abs_sum += std::fabs(term);
              exact += (wd * wq + wm) * (double(ab.d) * aq);
              sum_a += ab.q[j];
            }
            mins += wm * ab.s;
            abs_sum += std::fabs(wm * ab.s);
            s_slack += std::fabs(wm * ab.d * sum_a) * 0x1p-10 * 1.01;
          }
          const double got = c[i * s.rows + r];
          EXPECT_NEAR(got, scaled + mins, 2e-6 * abs_sum + 1e-30) << "i=" << i << " r=" << r;
          EXPECT_NEAR(got, exact, 2e-6 * abs_sum + s_slack + 1e-30) << "i=" << i << " r=" << r;
        }
      }
    }
  }
}

TEST(GgmlExactMatmulTest, RejectsBadArguments) {
  const RawWeights raw = MakeWeights(GgmlType::kQ8_0, 4, 64, 9);
  QuantMatrix w;
  ASSERT_TRUE(w.AppendRows(GgmlType::kQ8_0, raw.bytes.data(), raw.bytes.size(), 4, 64).ok());
  const std::vector<ActBlock> a = MakeActivations(2, 64, 10);
  std::vector<float> c(2 * 4, 5.f);
  QuantMatrix empty;
  EXPECT_FALSE(LaunchQuantMatmul(empty, a.data(), 1, c.data(), 4, false, nullptr).ok());
  EXPECT_FALSE(LaunchQuantMatmul(w, a.data(), 2, c.data(), 3, false, nullptr).ok());  // ldc < rows
  EXPECT_FALSE(LaunchQuantMatmul(w, a.data(), -1, c.data(), 4, false, nullptr).ok());
  EXPECT_FALSE(LaunchQuantMatmul(w, nullptr, 1, c.data(), 4, false, nullptr).ok());
  EXPECT_FALSE(LaunchQuantMatmul(w, a.data(), 1, nullptr, 4, false, nullptr).ok());
  for (float v : c) EXPECT_EQ(v, 5.f);
  EXPECT_TRUE(LaunchQuantMatmul(w, a.data(), 0, c.data(), 4, false, nullptr).ok());  // no rows
}

// ---------------------------------------------------------------------------------------------
// Sum8 / Sum16

TEST(GgmlExactSumTest, HandCasesWhereOrderMatters) {
  // The ulp of 1e8 is 8: left to right, every +1 next to ±1e8 is lost.
  const float l8[8] = {1e8f, 1.f, 1.f, 1.f, -1e8f, 1.f, 1.f, 1.f};
  EXPECT_EQ(Sum8(l8), 6.f);  // ((0 + 2) + (2 + 2))
  EXPECT_EQ(LeftToRight(l8, 8), 3.f);
  float l16[16];
  std::fill(l16, l16 + 16, 1.f);
  l16[0] = 1e8f;
  l16[8] = -1e8f;
  EXPECT_EQ(Sum16(l16), 14.f);  // pairs (i, i + 8): 0 and seven 2s
  EXPECT_EQ(LeftToRight(l16, 16), 7.f);
  // Sum8 pairs lane 0 with lane 4, not with lane 1: 1e8 + 3 and -1e8 + 1 round to ±1e8 and
  // cancel to 0, where adjacent pairs would give 0 + 4.
  const float p8[8] = {1e8f, -1e8f, 0.f, 0.f, 3.f, 1.f, 0.f, 0.f};
  EXPECT_EQ(Sum8(p8), 0.f);
  EXPECT_EQ((p8[0] + p8[1]) + (p8[4] + p8[5]), 4.f);
}

TEST(GgmlExactSumTest, RandomLanesMatchWrittenTree) {
  std::mt19937 rng(21);
  std::uniform_real_distribution<float> expo(-3.f, 7.f);
  std::bernoulli_distribution neg(0.5);
  int differs8 = 0, differs16 = 0;
  for (int trial = 0; trial < 20000; ++trial) {
    float l[16];
    for (float& v : l) v = (neg(rng) ? -1.f : 1.f) * std::pow(10.f, expo(rng));
    ASSERT_EQ(FloatBits(Sum8(l)), FloatBits(Tree8(l))) << "trial " << trial;
    ASSERT_EQ(FloatBits(Sum16(l)), FloatBits(Tree16(l))) << "trial " << trial;
    differs8 += Tree8(l) != LeftToRight(l, 8);
    differs16 += Tree16(l) != LeftToRight(l, 16);
  }
  EXPECT_GT(differs8, 1000);
  EXPECT_GT(differs16, 1000);
}

#ifdef XKV_TEST_AVX512
// ggml's hsum_float_8 (ggml-cpu quants.c), verbatim in intrinsics.
float GgmlHsumFloat8(__m256 x) {
  __m128 res = _mm256_extractf128_ps(x, 1);
  res = _mm_add_ps(res, _mm256_castps256_ps128(x));
  res = _mm_add_ps(res, _mm_movehl_ps(res, res));
  res = _mm_add_ss(res, _mm_movehdup_ps(res));
  return _mm_cvtss_f32(res);
}
#endif

// On an AVX-512 build, against the intrinsics llama.cpp uses.
TEST(GgmlExactSumTest, MatchesSimdReductions) {
#ifdef XKV_TEST_AVX512
  std::mt19937 rng(22);
  std::uniform_real_distribution<float> expo(-3.f, 7.f);
  std::bernoulli_distribution neg(0.5);
  for (int trial = 0; trial < 20000; ++trial) {
    float l[16];
    for (float& v : l) v = (neg(rng) ? -1.f : 1.f) * std::pow(10.f, expo(rng));
    ASSERT_EQ(FloatBits(Sum8(l)), FloatBits(GgmlHsumFloat8(_mm256_loadu_ps(l))));
    ASSERT_EQ(FloatBits(Sum16(l)), FloatBits(_mm512_reduce_add_ps(_mm512_loadu_ps(l))));
  }
#else
  GTEST_SKIP() << "not an AVX-512 build";
#endif
}

// ---------------------------------------------------------------------------------------------
// Expf

TEST(GgmlExactExpfTest, AccurateAgainstDoubleExp) {
  double worst = 0;
  for (double xd = -100.0; xd <= 88.0; xd += 1.0 / 1024 + 1e-7) {
    const float x = static_cast<float>(xd);
    const double want = std::exp(static_cast<double>(x));
    const double got = Expf(x);
    // ~3 ulp relative, plus half an ulp of the subnormal range (results below 2^-126).
    ASSERT_LE(std::fabs(got - want), 4e-7 * want + 0x1p-150) << "x=" << x;
    if (want > 0x1p-126) worst = std::max(worst, std::fabs(got - want) / want);
  }
  EXPECT_GT(worst, 0.0);  // an approximation, not std::exp
  // Every float in [-1, 1) on a fine grid.
  for (int i = -(1 << 20); i < (1 << 20); ++i) {
    const float x = std::ldexp(static_cast<float>(i), -20);
    const double want = std::exp(static_cast<double>(x));
    ASSERT_LE(std::fabs(Expf(x) - want), 4e-7 * want) << "x=" << x;
  }
}

TEST(GgmlExactExpfTest, SpecialValues) {
  EXPECT_EQ(Expf(0.f), 1.f);
  EXPECT_EQ(Expf(-0.f), 1.f);
  EXPECT_EQ(Expf(-kInf), 0.f);
  EXPECT_EQ(Expf(kInf), kInf);
  EXPECT_TRUE(std::isnan(Expf(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_GT(Expf(-100.f), 0.f);  // subnormal
  EXPECT_LT(Expf(88.f), kInf);
  for (float x = -104.5f; x > -300.f; x -= 0.25f) ASSERT_EQ(Expf(x), 0.f) << "x=" << x;
  for (float x = 89.f; x < 300.f; x += 0.25f) ASSERT_EQ(Expf(x), kInf) << "x=" << x;
  EXPECT_EQ(Expf(-std::numeric_limits<float>::max()), 0.f);
  EXPECT_EQ(Expf(std::numeric_limits<float>::max()), kInf);
}

#ifdef XKV_TEST_AVX512
// ggml_v_expf (ggml-cpu vec.h, AVX-512 branch), verbatim in intrinsics.
__m512 GgmlVExpf(__m512 x) {
  const __m512 r = _mm512_set1_ps(0x1.8p23f);
  const __m512 z = _mm512_fmadd_ps(x, _mm512_set1_ps(0x1.715476p+0f), r);
  const __m512 n = _mm512_sub_ps(z, r);
  const __m512 b = _mm512_fnmadd_ps(n, _mm512_set1_ps(0x1.7f7d1cp-20f),
                                    _mm512_fnmadd_ps(n, _mm512_set1_ps(0x1.62e4p-1f), x));
  const __mmask16 d = _mm512_cmp_ps_mask(_mm512_abs_ps(n), _mm512_set1_ps(192), _CMP_GT_OQ);
  const __m512 u = _mm512_mul_ps(b, b);
  const __m512 j = _mm512_fmadd_ps(
      _mm512_fmadd_ps(
          _mm512_fmadd_ps(_mm512_set1_ps(0x1.0e4020p-7f), b, _mm512_set1_ps(0x1.573e2ep-5f)), u,
          _mm512_fmadd_ps(_mm512_set1_ps(0x1.555e66p-3f), b, _mm512_set1_ps(0x1.fffdb6p-2f))),
      u, _mm512_fmadd_ps(_mm512_set1_ps(0x1.ffffecp-1f), b, _mm512_set1_ps(1.0F)));
  const __m512 res = _mm512_scalef_ps(j, n);
  if (_mm512_kortestz(d, d)) return res;
  const __m512 zero = _mm512_setzero_ps();
  const __m512 alt =
      _mm512_mask_blend_ps(_mm512_cmp_ps_mask(n, zero, _CMP_LE_OQ), _mm512_set1_ps(INFINITY), zero);
  return _mm512_mask_blend_ps(d, res, alt);
}

void ExpectSameAsGgml(const std::vector<float>& xs) {
  for (size_t i = 0; i + 16 <= xs.size(); i += 16) {
    float want[16];
    _mm512_storeu_ps(want, GgmlVExpf(_mm512_loadu_ps(xs.data() + i)));
    for (int j = 0; j < 16; ++j) {
      const float got = Expf(xs[i + j]);
      if (std::isnan(want[j])) {
        ASSERT_TRUE(std::isnan(got)) << "x=" << xs[i + j];
      } else {
        ASSERT_EQ(FloatBits(got), FloatBits(want[j])) << "x=" << xs[i + j];
      }
    }
  }
}
#endif

// On an AVX-512 build, bit for bit against ggml_v_expf over all float ranges.
TEST(GgmlExactExpfTest, MatchesGgmlVExpfBitwise) {
#ifdef XKV_TEST_AVX512
  std::vector<float> xs;
  for (uint64_t bits = 0; bits <= 0xffffffffull; bits += 4099) {
    xs.push_back(BitsToFloat(static_cast<uint32_t>(bits)));
  }
  // Dense where the result turns subnormal, zero or infinite.
  for (float x = -106.f; x < -86.f; x = std::nextafter(x, 0.f)) {
    if ((FloatBits(x) & 15) == 0) xs.push_back(x);
  }
  for (float x = 87.f; x < 90.f; x = std::nextafter(x, 100.f)) xs.push_back(x);
  for (int i = -(1 << 20); i < (1 << 20); ++i) xs.push_back(std::ldexp(float(i), -14));
  xs.insert(xs.end(), {0.f, -0.f, kInf, -kInf, std::numeric_limits<float>::quiet_NaN()});
  while (xs.size() % 16 != 0) xs.push_back(1.f);
  ExpectSameAsGgml(xs);
#else
  GTEST_SKIP() << "not an AVX-512 build";
#endif
}

// ---------------------------------------------------------------------------------------------
// RMSNorm, SwiGLU, RoPE

// ggml's RMSNorm, which the engine takes from cpu::LaunchRmsNorm, bit for bit: Σ fp32(x²) in
// double, mean rounded to fp32, scale = 1 / sqrt(mean + eps), y = (x · scale) · w.
TEST(GgmlExactRmsNormTest, CpuKernelIsGgmlOrderBitwise) {
  const int64_t rows = 32, cols = 576;
  const float eps = 1e-5f;
  std::mt19937 rng(32);
  std::normal_distribution<float> dist(0.f, 1.f);
  std::vector<float> x(rows * cols), w(cols), y(rows * cols);
  for (float& v : x) v = 3.f * dist(rng);
  for (float& v : w) v = 1.f + 0.5f * dist(rng);
  ASSERT_TRUE(cpu::LaunchRmsNorm(x.data(), w.data(), rows, cols, eps, y.data()).ok());
  int float_sum_matters = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x.data() + r * cols;
    double ss = 0;
    float ss_float = 0;
    for (int64_t i = 0; i < cols; ++i) {
      ss += static_cast<double>(Mul(xr[i], xr[i]));
      ss_float += Mul(xr[i], xr[i]);
    }
    const float scale = 1.0f / std::sqrt(static_cast<float>(ss / cols) + eps);
    const float scale_float = 1.0f / std::sqrt(ss_float / cols + eps);
    for (int64_t i = 0; i < cols; ++i) {
      const float want = Mul(Mul(xr[i], scale), w[i]);
      ASSERT_EQ(FloatBits(y[r * cols + i]), FloatBits(want)) << "r=" << r << " i=" << i;
      float_sum_matters += want != Mul(Mul(xr[i], scale_float), w[i]);
    }
  }
  EXPECT_GT(float_sum_matters, 0);  // a float Σx² would change some outputs
}

TEST(GgmlExactSwiGluTest, MatchesDoubleFormula) {
  const int64_t rows = 2, cols = 37, gs = 40, us = 41, os = 39;
  std::mt19937 rng(41);
  std::uniform_real_distribution<float> gate_dist(-12.f, 12.f);
  std::normal_distribution<float> up_dist(0.f, 2.f);
  std::vector<float> gate(rows * gs, 9.f), up(rows * us, 9.f), out(rows * os, 7.f);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < cols; ++i) {
      gate[r * gs + i] = gate_dist(rng);
      up[r * us + i] = up_dist(rng);
    }
  }
  gate[0] = 0.f;
  gate[1] = -100.f;  // exp(100) overflows to inf: silu → -0
  gate[2] = 100.f;
  gate[3] = -88.f;
  ASSERT_TRUE(LaunchSwiGlu(gate.data(), gs, up.data(), us, rows, cols, out.data(), os).ok());
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < cols; ++i) {
      const double g = gate[r * gs + i];
      const double want = g / (1.0 + std::exp(-g)) * up[r * us + i];
      EXPECT_NEAR(out[r * os + i], want, 1e-6 * std::fabs(want) + 1e-35)
          << "r=" << r << " i=" << i << " g=" << g;
    }
    for (int64_t i = cols; i < os; ++i) EXPECT_EQ(out[r * os + i], 7.f);
  }
  EXPECT_EQ(out[0], 0.f);
}

// The header's order, bit for bit: silu = g / (1 + Expf(0 - g)), out = silu · up.
TEST(GgmlExactSwiGluTest, MatchesDocumentedOrderBitwise) {
  const int64_t rows = 4, cols = 1536;
  std::mt19937 rng(42);
  std::normal_distribution<float> dist(0.f, 3.f);
  std::vector<float> gate(rows * cols), up(rows * cols), out(rows * cols);
  for (float& v : gate) v = dist(rng);
  for (float& v : up) v = dist(rng);
  ASSERT_TRUE(LaunchSwiGlu(gate.data(), cols, up.data(), cols, rows, cols, out.data(), cols).ok());
  int libm_matters = 0;
  for (int64_t i = 0; i < rows * cols; ++i) {
    const float g = gate[i];
    const float want = Mul(g / (1.0f + Expf(0.0f - g)), up[i]);
    ASSERT_EQ(FloatBits(out[i]), FloatBits(want)) << "i=" << i << " g=" << g;
    libm_matters += want != Mul(g / (1.0f + std::exp(-g)), up[i]);
  }
  EXPECT_GT(libm_matters, 0);  // libm's expf would change some outputs
}

TEST(GgmlExactSwiGluTest, RejectsBadShapes) {
  std::vector<float> b(64, 1.f), o(64);
  EXPECT_FALSE(LaunchSwiGlu(b.data(), 8, b.data(), 8, 1, 0, o.data(), 8).ok());
  EXPECT_FALSE(LaunchSwiGlu(b.data(), 8, b.data(), 8, -1, 8, o.data(), 8).ok());
  EXPECT_FALSE(LaunchSwiGlu(b.data(), 7, b.data(), 8, 2, 8, o.data(), 8).ok());
  EXPECT_FALSE(LaunchSwiGlu(b.data(), 8, b.data(), 7, 2, 8, o.data(), 8).ok());
  EXPECT_FALSE(LaunchSwiGlu(b.data(), 8, b.data(), 8, 2, 8, o.data(), 7).ok());
}

// Angle of pair p at `pos`, and a bound on the emulation's angle error: theta_scale =
// powf(base, -2/dims) within 1 ulp and one rounding per multiplication give a relative error of at
// most 1.5·p·2^-23 (dims a power of two, so -2/dims is exact).
double RopeAngle(int64_t pos, int64_t p, int64_t dims, double base) {
  return pos * std::pow(base, -2.0 * p / dims);
}
double RopeAngleError(double angle, int64_t p) { return (1.5 * p + 0.5) * 0x1p-23 * angle; }

TEST(GgmlExactRopeTest, CacheAndRotationMatchDoubleFormula) {
  const int64_t dims = 64, heads = 3, x_stride = heads * dims + 5, y_stride = heads * dims + 2;
  const float base = 10000.f;
  const std::vector<int64_t> pos = {0, 1, 7, 100, 1000, 3000, 4095};
  const int64_t n = pos.size();
  std::vector<float> cache(n * dims);
  ASSERT_TRUE(RopeCache(pos.data(), n, dims, base, cache.data()).ok());
  double worst = 0;
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t p = 0; p < dims / 2; ++p) {
      const double a = RopeAngle(pos[r], p, dims, base);
      const double tol = RopeAngleError(a, p) + 1.2e-7;
      EXPECT_NEAR(cache[r * dims + 2 * p], std::cos(a), tol) << "pos " << pos[r] << " p " << p;
      EXPECT_NEAR(cache[r * dims + 2 * p + 1], std::sin(a), tol) << "pos " << pos[r] << " p " << p;
      worst = std::max(worst, std::fabs(cache[r * dims + 2 * p] - std::cos(a)));
    }
  }
  EXPECT_LT(worst, 1e-3);
  for (int64_t i = 0; i < dims; i += 2) {  // position 0: cos 1, sin 0 exactly
    EXPECT_EQ(cache[i], 1.f);
    EXPECT_EQ(cache[i + 1], 0.f);
  }

  std::mt19937 rng(51);
  std::normal_distribution<float> dist(0.f, 1.f);
  std::vector<float> x(n * x_stride, 9.f), y(n * y_stride, 7.f);
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t i = 0; i < heads * dims; ++i) x[r * x_stride + i] = dist(rng);
  }
  ASSERT_TRUE(
      LaunchRope(x.data(), x_stride, n, heads, dims, cache.data(), y.data(), y_stride).ok());
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t p = 0; p < dims / 2; ++p) {
        const double a = RopeAngle(pos[r], p, dims, base);
        const double x0 = x[r * x_stride + h * dims + 2 * p];
        const double x1 = x[r * x_stride + h * dims + 2 * p + 1];
        const double tol = (std::fabs(x0) + std::fabs(x1)) * (RopeAngleError(a, p) + 3e-7);
        const float* yp = y.data() + r * y_stride + h * dims + 2 * p;
        EXPECT_NEAR(yp[0], x0 * std::cos(a) - x1 * std::sin(a), tol)
            << "pos " << pos[r] << " h " << h << " p " << p;
        EXPECT_NEAR(yp[1], x0 * std::sin(a) + x1 * std::cos(a), tol)
            << "pos " << pos[r] << " h " << h << " p " << p;
        if (pos[r] == 0) {  // the identity rotation is exact
          EXPECT_EQ(yp[0], x0);
          EXPECT_EQ(yp[1], x1);
        }
      }
    }
    for (int64_t i = heads * dims; i < y_stride; ++i) EXPECT_EQ(y[r * y_stride + i], 7.f);
  }
  // In place gives the same bits.
  std::vector<float> z = x;
  ASSERT_TRUE(
      LaunchRope(z.data(), x_stride, n, heads, dims, cache.data(), z.data(), x_stride).ok());
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t i = 0; i < heads * dims; ++i) {
      EXPECT_EQ(FloatBits(z[r * x_stride + i]), FloatBits(y[r * y_stride + i]));
    }
  }
}

// The header's cache, bit for bit: theta starts at the position and is multiplied by
// powf(base, -2 / dims) pair after pair; each pair holds (cosf(theta), sinf(theta)).
TEST(GgmlExactRopeTest, CacheMatchesDocumentedOrderBitwise) {
  const int64_t dims = 64;
  const float base = 10000.f;
  std::vector<int64_t> pos;
  for (int64_t p = 0; p < 4096; p += 37) pos.push_back(p);
  const int64_t n = pos.size();
  std::vector<float> cache(n * dims);
  ASSERT_TRUE(RopeCache(pos.data(), n, dims, base, cache.data()).ok());
  const float theta_scale = std::pow(base, -2.0f / static_cast<float>(dims));
  int direct_matters = 0;
  for (int64_t r = 0; r < n; ++r) {
    float theta = static_cast<float>(pos[r]);
    for (int64_t i = 0; i < dims; i += 2) {
      ASSERT_EQ(FloatBits(cache[r * dims + i]), FloatBits(std::cos(theta))) << pos[r] << " " << i;
      ASSERT_EQ(FloatBits(cache[r * dims + i + 1]), FloatBits(std::sin(theta)))
          << pos[r] << " " << i;
      const float direct = static_cast<float>(RopeAngle(pos[r], i / 2, dims, base));
      direct_matters += std::cos(theta) != std::cos(direct);
      theta = Mul(theta, theta_scale);
    }
  }
  EXPECT_GT(direct_matters, 0);  // the angle computed directly would change some entries
}

TEST(GgmlExactRopeTest, RejectsBadArguments) {
  const int64_t pos[2] = {0, 1};
  std::vector<float> cache(2 * 64), x(2 * 128), y(2 * 128);
  EXPECT_FALSE(RopeCache(pos, 2, 63, 10000.f, cache.data()).ok());
  EXPECT_FALSE(RopeCache(pos, 2, 0, 10000.f, cache.data()).ok());
  EXPECT_FALSE(RopeCache(pos, -1, 64, 10000.f, cache.data()).ok());
  EXPECT_FALSE(RopeCache(pos, 2, 64, 0.f, cache.data()).ok());
  EXPECT_FALSE(RopeCache(pos, 2, 64, -2.f, cache.data()).ok());
  EXPECT_FALSE(RopeCache(pos, 2, 64, std::numeric_limits<float>::quiet_NaN(), cache.data()).ok());
  ASSERT_TRUE(RopeCache(pos, 2, 64, 10000.f, cache.data()).ok());
  EXPECT_FALSE(LaunchRope(x.data(), 128, 2, 2, 63, cache.data(), y.data(), 128).ok());
  EXPECT_FALSE(LaunchRope(x.data(), 128, 2, 0, 64, cache.data(), y.data(), 128).ok());
  EXPECT_FALSE(LaunchRope(x.data(), 128, -1, 2, 64, cache.data(), y.data(), 128).ok());
  EXPECT_FALSE(LaunchRope(x.data(), 127, 2, 2, 64, cache.data(), y.data(), 128).ok());
  EXPECT_FALSE(LaunchRope(x.data(), 128, 2, 2, 64, cache.data(), y.data(), 127).ok());
}

// ---------------------------------------------------------------------------------------------
// LaunchAttention

struct AttnCase {
  int n_heads, n_kv_heads, head_dim;
  int64_t past, n_new;
};

const AttnCase kAttnCases[] = {
    {4, 2, 32, 5, 1},                       // one token, head_dim < 64 (dot all in the double tail)
    {4, 2, 64, 0, 1},                       // one token, one key
    {4, 2, 64, 70, 1},                      // one token, more keys than the 64 P·V lanes
    {4, 2, 128, 130, 1}, {4, 2, 32, 3, 9},  // batched, short
    {4, 2, 64, 20, 40},                     // batched, several 16-key chunks
    {2, 2, 48, 7, 3},                       // MHA, head_dim of three 16-lane groups
};

// fp16-valued q, k, v with NaN in every gap the kernel must not read.
struct AttnData {
  AttentionShape shape;
  int64_t len, q_stride, head_stride, out_stride;
  std::vector<float> q, k, v;
};

AttnData MakeAttn(const AttnCase& c, uint32_t seed) {
  AttnData a;
  a.shape = {c.n_heads, c.n_kv_heads, c.head_dim, 1.0f / std::sqrt(float(c.head_dim))};
  a.len = c.past + c.n_new;
  a.q_stride = c.n_heads * c.head_dim + 5;
  a.head_stride = (a.len + 3) * c.head_dim;
  a.out_stride = c.n_heads * c.head_dim + 2;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  a.q.assign(c.n_new * a.q_stride, nan);
  a.k.assign(c.n_kv_heads * a.head_stride, nan);
  a.v.assign(a.k.size(), nan);
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  for (int64_t i = 0; i < c.n_new; ++i) {
    for (int64_t j = 0; j < c.n_heads * c.head_dim; ++j) {
      a.q[i * a.q_stride + j] = RoundF16(2.f * u(rng));
    }
  }
  for (int64_t g = 0; g < c.n_kv_heads; ++g) {
    for (int64_t j = 0; j < a.len * c.head_dim; ++j) {
      a.k[g * a.head_stride + j] = RoundF16(2.f * u(rng));
      a.v[g * a.head_stride + j] = RoundF16(u(rng));
    }
  }
  return a;
}

std::vector<float> RunAttn(const AttnCase& c, const AttnData& a, ThreadPool* pool) {
  std::vector<float> out(c.n_new * a.out_stride, 7.f);
  const absl::Status s =
      LaunchAttention(a.shape, a.q.data(), a.q_stride, c.n_new, a.k.data(), a.v.data(),
                      a.head_stride, a.len, out.data(), a.out_stride, pool);
  EXPECT_TRUE(s.ok()) << s;
  return out;
}

TEST(GgmlExactAttentionTest, MatchesDoubleSoftmaxAttention) {
  ThreadPool pool(2);
  uint32_t seed = 60;
  for (const AttnCase& c : kAttnCases) {
    SCOPED_TRACE(testing::Message() << "heads " << c.n_heads << "/" << c.n_kv_heads << " hd "
                                    << c.head_dim << " past " << c.past << " n_new " << c.n_new);
    const AttnData a = MakeAttn(c, ++seed);
    const std::vector<float> out = RunAttn(c, a, nullptr);
    const std::vector<float> out_pool = RunAttn(c, a, &pool);
    const int group = c.n_heads / c.n_kv_heads;
    const int hd = c.head_dim;
    for (int64_t i = 0; i < c.n_new; ++i) {
      for (int h = 0; h < c.n_heads; ++h) {
        const float* q = a.q.data() + i * a.q_stride + h * hd;
        const float* k = a.k.data() + (h / group) * a.head_stride;
        const float* v = a.v.data() + (h / group) * a.head_stride;
        const int64_t visible = c.past + i + 1;
        std::vector<double> p(visible);
        double mx = -1e300, sum = 0;
        for (int64_t j = 0; j < visible; ++j) {
          double dot = 0;
          for (int d = 0; d < hd; ++d) dot += double(q[d]) * k[j * hd + d];
          p[j] = dot * a.shape.scale;
          mx = std::max(mx, p[j]);
        }
        for (double& x : p) sum += (x = std::exp(x - mx));
        for (int d = 0; d < hd; ++d) {
          double want = 0, mag = 0, vmax = 0;
          for (int64_t j = 0; j < visible; ++j) {
            want += p[j] / sum * v[j * hd + d];
            mag += p[j] / sum * std::fabs(v[j * hd + d]);
            vmax = std::max(vmax, std::fabs(double(v[j * hd + d])));
          }
          // The probabilities are rounded to fp16 (2^-11 relative, 2^-25 absolute below 2^-14);
          // the fp32 steps add ~1e-6.
          const double tol = 5.2e-4 * mag + (visible * 3e-8 + 1e-6) * vmax;
          const int64_t o = i * a.out_stride + h * hd + d;
          ASSERT_NEAR(out[o], want, tol) << "i=" << i << " h=" << h << " d=" << d;
          ASSERT_EQ(FloatBits(out_pool[o]), FloatBits(out[o])) << "i=" << i << " h=" << h;
        }
      }
      for (int64_t j = c.n_heads * hd; j < a.out_stride; ++j) {
        EXPECT_EQ(out[i * a.out_stride + j], 7.f);
      }
    }
  }
}

// ---- Scalar re-derivation of the documented attention order, from the header's description.

// kDocumented is the header's order; the others change one step, to show that the test data is
// sensitive to it.
enum class AttnOrder { kDocumented, kSequentialKq, kFloatSoftmaxSum };

// The emulated build's vector width (16 lanes for AVX-512, 8 for AVX2) and its lane trees.
constexpr int kL = static_cast<int>(kEmulatedLanes);
float LaneTree(const float* l) { return kL == 16 ? Tree16(l) : Tree8(l); }
// AVX2 ggml_vec_dot_f16's last step: (l0 + l4) + (l1 + l5), then ... as two horizontal adds.
float HaddTree8(const float* l) {
  return ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]));
}
float SingleTree(const float* l) { return kL == 16 ? Tree16(l) : HaddTree8(l); }

// tinyBLAS: lane j accumulates elements j, j + kL, ... with fma; then the lane tree.
float DotBatched(const float* a, const float* b, int64_t n, AttnOrder order) {
  float lanes[kL] = {};
  for (int64_t l = 0; l < n; l += kL) {
    for (int j = 0; j < kL; ++j) lanes[j] = std::fma(a[l + j], b[l + j], lanes[j]);
  }
  return order == AttnOrder::kSequentialKq ? LeftToRight(lanes, kL) : LaneTree(lanes);
}

// ggml_vec_dot_f16: 4 × kL lanes over 4·kL-element steps, (acc0 + acc2) + (acc1 + acc3), the
// single-token tree, then the elements past the last full step added in double.
float DotSingle(const float* a, const float* b, int64_t n, AttnOrder order) {
  float acc[4][kL] = {};
  const int64_t full = n / (4 * kL) * (4 * kL);
  for (int64_t l = 0; l < full; l += 4 * kL) {
    for (int r = 0; r < 4; ++r) {
      for (int j = 0; j < kL; ++j) {
        acc[r][j] = std::fma(a[l + kL * r + j], b[l + kL * r + j], acc[r][j]);
      }
    }
  }
  float lanes[kL];
  for (int j = 0; j < kL; ++j) lanes[j] = (acc[0][j] + acc[2][j]) + (acc[1][j] + acc[3][j]);
  double sum = order == AttnOrder::kSequentialKq ? LeftToRight(lanes, kL) : SingleTree(lanes);
  for (int64_t i = full; i < n; ++i) sum += static_cast<double>(Mul(a[i], b[i]));
  return static_cast<float>(sum);
}

std::vector<float> DocumentedAttention(const AttnCase& c, const AttnData& a,
                                       AttnOrder order = AttnOrder::kDocumented) {
  const int hd = c.head_dim, group = c.n_heads / c.n_kv_heads;
  const bool batched = c.n_new > 1;
  std::vector<float> out(c.n_new * a.out_stride, 7.f);
  for (int64_t i = 0; i < c.n_new; ++i) {
    for (int h = 0; h < c.n_heads; ++h) {
      const float* q = a.q.data() + i * a.q_stride + h * hd;
      const float* k = a.k.data() + (h / group) * a.head_stride;
      const float* v = a.v.data() + (h / group) * a.head_stride;
      const int64_t visible = c.past + i + 1;
      // Scores × scale; Expf over kL-key chunks (masked keys are 0) summed by the tree, chunk
      // sums added in double; probabilities × (float)(1 / sum), rounded to fp16.
      std::vector<float> s(visible);
      float mx = -kInf;
      for (int64_t j = 0; j < visible; ++j) {
        const float dot =
            batched ? DotBatched(k + j * hd, q, hd, order) : DotSingle(k + j * hd, q, hd, order);
        s[j] = Mul(dot, a.shape.scale);
        mx = std::max(mx, s[j]);
      }
      double sum = 0;
      float float_sum = 0;
      for (int64_t c0 = 0; c0 < visible; c0 += kL) {
        float chunk[kL];
        for (int64_t j = 0; j < kL; ++j) {
          chunk[j] = c0 + j < visible ? Expf(s[c0 + j] - mx) : 0.f;
          if (c0 + j < visible) s[c0 + j] = chunk[j];
        }
        sum += static_cast<double>(LaneTree(chunk));
        float_sum += LaneTree(chunk);
      }
      if (order == AttnOrder::kFloatSoftmaxSum) sum = float_sum;
      const float inv = static_cast<float>(1.0 / sum);
      for (float& x : s) x = RoundF16(Mul(x, inv));
      // P·V: key j goes to lane j mod kL (batched) or j mod 4·kL (one token); lanes reduced as
      // in the dot products above.
      const int n_lanes = batched ? kL : 4 * kL;
      std::vector<float> acc(n_lanes * hd, 0.f);
      for (int64_t j = 0; j < visible; ++j) {
        for (int d = 0; d < hd; ++d) {
          float& l = acc[(j % n_lanes) * hd + d];
          l = std::fma(s[j], v[j * hd + d], l);
        }
      }
      for (int d = 0; d < hd; ++d) {
        float lanes[kL];
        for (int j = 0; j < kL; ++j) {
          const float* l = acc.data() + j * hd + d;
          lanes[j] = batched ? l[0] : (l[0] + l[2 * kL * hd]) + (l[kL * hd] + l[3 * kL * hd]);
        }
        out[i * a.out_stride + h * hd + d] = batched ? LaneTree(lanes) : SingleTree(lanes);
      }
    }
  }
  return out;
}

TEST(GgmlExactAttentionTest, MatchesDocumentedOrderBitwise) {
  uint32_t seed = 70;
  int kq_matters = 0, sum_matters = 0;
  std::vector<AttnCase> cases(std::begin(kAttnCases), std::end(kAttnCases));
  // Long rows, where the fp16 rounding of the probabilities lets order changes through.
  cases.push_back({4, 2, 64, 1008, 16});
  cases.push_back({4, 2, 128, 1023, 1});
  for (const AttnCase& c : cases) {
    SCOPED_TRACE(testing::Message() << "heads " << c.n_heads << "/" << c.n_kv_heads << " hd "
                                    << c.head_dim << " past " << c.past << " n_new " << c.n_new);
    const AttnData a = MakeAttn(c, ++seed);
    const std::vector<float> got = RunAttn(c, a, nullptr);
    const std::vector<float> want = DocumentedAttention(c, a);
    for (size_t i = 0; i < got.size(); ++i) {
      ASSERT_EQ(FloatBits(got[i]), FloatBits(want[i])) << "element " << i;
    }
    const std::vector<float> seq_kq = DocumentedAttention(c, a, AttnOrder::kSequentialKq);
    const std::vector<float> float_sum = DocumentedAttention(c, a, AttnOrder::kFloatSoftmaxSum);
    for (size_t i = 0; i < got.size(); ++i) {
      kq_matters += want[i] != seq_kq[i];
      sum_matters += want[i] != float_sum[i];
    }
  }
  EXPECT_GT(kq_matters, 0);
  EXPECT_GT(sum_matters, 0);
}

// Changing the first key/value hidden from query i leaves queries 0..i bitwise unchanged and
// changes query i + 1.
TEST(GgmlExactAttentionTest, IsCausal) {
  const AttnCase c{4, 2, 64, 10, 6};
  const AttnData base = MakeAttn(c, 80);
  const std::vector<float> ref = RunAttn(c, base, nullptr);
  const int64_t width = c.n_heads * c.head_dim;
  for (int64_t i = 0; i + 1 < c.n_new; ++i) {
    AttnData changed = base;
    const int64_t key = c.past + i + 1;
    for (int64_t g = 0; g < c.n_kv_heads; ++g) {
      for (int d = 0; d < c.head_dim; ++d) {
        changed.k[g * base.head_stride + key * c.head_dim + d] = 2.f;
        changed.v[g * base.head_stride + key * c.head_dim + d] = -3.f;
      }
    }
    const std::vector<float> out = RunAttn(c, changed, nullptr);
    for (int64_t t = 0; t <= i; ++t) {
      for (int64_t j = 0; j < width; ++j) {
        ASSERT_EQ(FloatBits(out[t * base.out_stride + j]), FloatBits(ref[t * base.out_stride + j]))
            << "changed key " << key << " query " << t << " j " << j;
      }
    }
    int changed_next = 0;
    for (int64_t j = 0; j < width; ++j) {
      changed_next += out[(i + 1) * base.out_stride + j] != ref[(i + 1) * base.out_stride + j];
    }
    EXPECT_GT(changed_next, width / 2) << "changed key " << key;
  }
}

TEST(GgmlExactAttentionTest, RejectsBadShapes) {
  std::vector<float> buf(8 * 4 * 64, 0.5f), out(8 * 4 * 64);
  const auto run = [&](const AttentionShape& s, int64_t n_new, int64_t len, int64_t head_stride) {
    return LaunchAttention(s, buf.data(), s.n_heads * s.head_dim, n_new, buf.data(), buf.data(),
                           head_stride, len, out.data(), s.n_heads * s.head_dim, nullptr);
  };
  const AttentionShape ok{4, 2, 32, 0.25f};
  EXPECT_TRUE(run(ok, 2, 3, 3 * 32).ok());
  EXPECT_FALSE(run({4, 2, 24, 0.25f}, 2, 3, 3 * 24).ok());  // head_dim % 16 != 0
  EXPECT_FALSE(run({4, 2, 8, 0.25f}, 1, 3, 3 * 8).ok());
  EXPECT_FALSE(run({3, 2, 32, 0.25f}, 2, 3, 3 * 32).ok());  // n_heads % n_kv_heads != 0
  EXPECT_FALSE(run({4, 0, 32, 0.25f}, 2, 3, 3 * 32).ok());
  EXPECT_FALSE(run(ok, 3, 2, 3 * 32).ok());      // len < n_new
  EXPECT_FALSE(run(ok, 0, 2, 3 * 32).ok());      // no query
  EXPECT_FALSE(run(ok, 2, 3, 3 * 32 - 1).ok());  // head_stride < len * head_dim
  EXPECT_FALSE(LaunchAttention(ok, buf.data(), 127, 2, buf.data(), buf.data(), 96, 3, out.data(),
                               128, nullptr)
                   .ok());  // q_stride
  EXPECT_FALSE(LaunchAttention(ok, buf.data(), 128, 2, buf.data(), buf.data(), 96, 3, out.data(),
                               127, nullptr)
                   .ok());  // out_stride
}

}  // namespace
}  // namespace xkv::cpu::ggml
