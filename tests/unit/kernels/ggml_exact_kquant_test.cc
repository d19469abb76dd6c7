// ggml_exact's K-quant products (kernels/cpu/ggml_exact_kquant.cc): Q8_K activation blocks, and
// Q4_K / Q5_K / Q6_K rows through each of llama.cpp's paths (vec_dot lanes for < 8 rows, the
// tiled kernel for >= 8, the repacked Q4_K kernels for tensors of 8k rows) against a plain double
// product of the dequantized weights and activations. Bitwise agreement with llama.cpp itself is
// tests/parity/kquant_parity_test.cc's.
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/dequant.h"
#include "kernels/cpu/ggml_exact.h"
#include "kernels/cpu/kquants.h"

namespace xkv::cpu::ggml {
namespace {

std::vector<float> Gaussian(int64_t n, uint64_t seed, float scale = 1.f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.f, scale);
  std::vector<float> x(n);
  for (float& v : x) v = dist(rng);
  return x;
}

int64_t BlockBytes(GgmlType type) {
  return GetGgmlTypeTraits(static_cast<uint32_t>(type))->block_bytes;
}

std::vector<uint8_t> Quantized(GgmlType type, int64_t rows, int64_t cols, uint64_t seed) {
  const std::vector<float> w = Gaussian(rows * cols, seed, 0.05f);
  std::vector<uint8_t> out(rows * cols / kKQuantBlock * BlockBytes(type));
  QuantizeKQuant(type, w.data(), rows * cols / kKQuantBlock, out.data());
  return out;
}

TEST(GgmlExactKQuantTest, QuantizesActivationsAsQuantizeRowQ8KRef) {
  std::vector<float> x = Gaussian(2 * kKBlock, 3);
  x[17] = -9.f;  // the largest magnitude of block 0 is negative: iscale = -127 / -9 > 0
  std::vector<Q8KBlock> q(2);
  QuantizeRowQ8K(x.data(), 2 * kKBlock, q.data());
  const float iscale = -127.f / -9.f;
  EXPECT_EQ(q[0].d, 1 / iscale);
  EXPECT_EQ(q[0].q[17], -127);
  for (int j = 0; j < kKBlock; ++j) {
    ASSERT_EQ(q[0].q[j], static_cast<int8_t>(std::nearbyint(iscale * x[j]))) << j;
  }
  for (int g = 0; g < 16; ++g) {
    int sum = 0;
    for (int i = 0; i < 16; ++i) sum += q[1].q[16 * g + i];
    EXPECT_EQ(q[1].bsums[g], sum) << g;
  }
  std::vector<float> zeros(kKBlock, 0.f);
  QuantizeRowQ8K(zeros.data(), kKBlock, q.data());
  EXPECT_EQ(q[0].d, 0.f);
  EXPECT_EQ(q[0].bsums[3], 0);
}

struct PathCase {
  GgmlType type;
  int64_t rows;  // Q4_K with rows % 8 == 0: the repacked kernels
  int64_t m;     // activation rows: < 8 vec_dot, >= 8 the tiled kernel
};

class KQuantPathTest : public ::testing::TestWithParam<PathCase> {};

TEST_P(KQuantPathTest, MatchesTheDequantizedProduct) {
  const PathCase& p = GetParam();
  const int64_t cols = 2 * kKBlock;
  const std::vector<uint8_t> raw = Quantized(p.type, p.rows, cols, 11);
  QuantMatrix w;
  ASSERT_TRUE(w.AppendRows(p.type, raw.data(), raw.size(), p.rows, cols).ok());
  ASSERT_TRUE(w.is_kquant());
  std::vector<float> wf(p.rows * cols);
  ASSERT_TRUE(DequantizeToF32(p.type, raw.data(), static_cast<int64_t>(wf.size()), wf.data()).ok());
  const std::vector<float> x = Gaussian(p.m * cols, 5);
  std::vector<Q8KBlock> a(p.m * cols / kKBlock);
  for (int64_t i = 0; i < p.m; ++i) {
    QuantizeRowQ8K(x.data() + i * cols, cols, &a[i * cols / kKBlock]);
  }
  std::vector<float> c(p.m * p.rows, 1.f);
  ASSERT_TRUE(
      LaunchKQuantMatmul(w, a.data(), p.m, c.data(), p.rows, /*accumulate=*/true, nullptr).ok());
  for (int64_t i = 0; i < p.m; ++i) {
    for (int64_t r = 0; r < p.rows; ++r) {
      double want = 0, scale = 0;
      for (int64_t k = 0; k < cols; ++k) {
        const Q8KBlock& b = a[i * cols / kKBlock + k / kKBlock];
        const double ak = static_cast<double>(b.q[k % kKBlock]) * b.d;
        want += static_cast<double>(wf[r * cols + k]) * ak;
        scale += std::fabs(wf[r * cols + k] * ak);
      }
      ASSERT_NEAR(c[i * p.rows + r], 1.0 + want, 1e-5 * (1.0 + scale)) << i << ", " << r;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Paths, KQuantPathTest,
                         ::testing::Values(PathCase{GgmlType::kQ4_K, 16, 1},  // repacked gemv
                                           PathCase{GgmlType::kQ4_K, 16, 9},  // repacked gemm
                                           PathCase{GgmlType::kQ4_K, 12, 3},  // vec_dot
                                           PathCase{GgmlType::kQ4_K, 12, 8},  // tiled
                                           PathCase{GgmlType::kQ5_K, 12, 2},
                                           PathCase{GgmlType::kQ5_K, 12, 10},
                                           PathCase{GgmlType::kQ6_K, 12, 1},
                                           PathCase{GgmlType::kQ6_K, 12, 8}));

TEST(GgmlExactKQuantTest, FusedTensorsKeepTheirOwnKernels) {
  const int64_t cols = kKBlock;
  const std::vector<uint8_t> q4 = Quantized(GgmlType::kQ4_K, 8, cols, 1);
  const std::vector<uint8_t> q6 = Quantized(GgmlType::kQ6_K, 4, cols, 2);
  QuantMatrix fused, alone;
  ASSERT_TRUE(fused.AppendRows(GgmlType::kQ4_K, q4.data(), q4.size(), 8, cols).ok());
  ASSERT_TRUE(fused.AppendRows(GgmlType::kQ6_K, q6.data(), q6.size(), 4, cols).ok());
  ASSERT_TRUE(alone.AppendRows(GgmlType::kQ6_K, q6.data(), q6.size(), 4, cols).ok());
  EXPECT_EQ(fused.rows(), 12);
  const std::vector<float> x = Gaussian(cols, 9);
  Q8KBlock a;
  QuantizeRowQ8K(x.data(), cols, &a);
  std::vector<float> c_fused(12), c_alone(4);
  ASSERT_TRUE(LaunchKQuantMatmul(fused, &a, 1, c_fused.data(), 12, false, nullptr).ok());
  ASSERT_TRUE(LaunchKQuantMatmul(alone, &a, 1, c_alone.data(), 4, false, nullptr).ok());
  for (int r = 0; r < 4; ++r) EXPECT_EQ(c_fused[8 + r], c_alone[r]) << r;
}

TEST(GgmlExactKQuantTest, BadInputIsAnErrorAndChangesNothing) {
  const int64_t cols = kKBlock;
  const std::vector<uint8_t> q4 = Quantized(GgmlType::kQ4_K, 2, cols, 1);
  QuantMatrix k;
  ASSERT_TRUE(k.AppendRows(GgmlType::kQ4_K, q4.data(), q4.size(), 2, cols).ok());
  std::vector<uint8_t> q8(34 * cols / 32, 0);
  EXPECT_FALSE(k.AppendRows(GgmlType::kQ8_0, q8.data(), q8.size(), 1, cols).ok());
  EXPECT_FALSE(k.AppendRows(GgmlType::kQ4_K, q4.data(), q4.size(), 1, 2 * cols).ok());  // width
  EXPECT_FALSE(k.AppendRows(GgmlType::kQ4_K, q4.data(), 100, 1, cols).ok());            // short
  EXPECT_FALSE(k.AppendRows(GgmlType::kQ4_K, q4.data(), q4.size(), 1, 100).ok());       // not 256k
  EXPECT_EQ(k.rows(), 2);
  QuantMatrix legacy;
  ASSERT_TRUE(legacy.AppendRows(GgmlType::kQ8_0, q8.data(), q8.size(), 1, cols).ok());
  EXPECT_FALSE(legacy.AppendRows(GgmlType::kQ4_K, q4.data(), q4.size(), 1, cols).ok());
  EXPECT_EQ(legacy.rows(), 1);
  Q8KBlock a{};
  ActBlock b[kKBlock / kQBlock] = {};
  float c[2];
  EXPECT_FALSE(LaunchKQuantMatmul(legacy, &a, 1, c, 2, false, nullptr).ok());
  EXPECT_FALSE(LaunchQuantMatmul(k, b, 1, c, 2, false, nullptr).ok());
  EXPECT_FALSE(LaunchKQuantMatmul(k, &a, 1, c, 1, false, nullptr).ok());  // ldc < rows
}

}  // namespace
}  // namespace xkv::cpu::ggml
