// ggml_exact's lane sums, expf, and the element-wise ops (RMSNorm through cpu::LaunchRmsNorm,
// SwiGLU, RoPE), against written-out trees, double-precision formulas and, on AVX-512 builds,
// the intrinsic sequences llama.cpp's build runs.
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
#include "kernels/cpu/rms_norm.h"
#include "tests/unit/kernels/ggml_exact_test_util.h"

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

using test_util::kInf;
using test_util::LeftToRight;
using test_util::Mul;
using test_util::Tree16;
using test_util::Tree8;

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
// The intrinsic sequence of ggml's hsum_float_8 (ggml-cpu quants.c): the reference for Sum8.
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
// The intrinsic sequence of ggml_v_expf (ggml-cpu vec.h, AVX-512 branch): the reference for Expf.
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

}  // namespace
}  // namespace xkv::cpu::ggml
