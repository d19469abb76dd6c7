// ggml_exact's quantized products: activation blocks (QuantizeRow), weight blocks (QuantMatrix)
// and LaunchQuantMatmul, against hand-computed blocks, a scalar re-derivation of the documented
// order and double-precision dot products.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <iterator>
#include <limits>
#include <random>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "kernels/cpu/ggml_exact.h"
#include "kernels/cpu/half.h"
#include "kernels/cpu/parallel_for.h"
#include "kernels/ggml_types.h"
#include "tests/unit/kernels/ggml_exact_test_util.h"

namespace xkv::cpu::ggml {
namespace {

using test_util::LeftToRight;
using test_util::Mul;
using test_util::PutU16;
using test_util::Tree8;

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

}  // namespace
}  // namespace xkv::cpu::ggml
