// ggml_exact's fp16 attention: llama.cpp's CPU attention without flash attention, with its fp16
// products, chunked softmax and lane order (ggml_exact.h says how).
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/ggml_exact.h"
#include "kernels/cpu/ggml_exact_lanes.h"

namespace xkv::cpu::ggml {

namespace {

// Σ of kLanes lanes as the emulated build's horizontal sum does: Sum16 or Sum8.
float LaneSum(const float* lanes) { return kAvx512Profile ? Sum16(lanes) : Sum8(lanes); }

// GGML_F32x8_REDUCE's last step (AVX2 ggml_vec_dot_f16): t_i = l_i + l_{i+4}, then two
// horizontal adds: (t_0 + t_1) + (t_2 + t_3).
float HaddSum8(const float* l) {
  const float t0 = l[0] + l[4], t1 = l[1] + l[5], t2 = l[2] + l[6], t3 = l[3] + l[7];
  return (t0 + t1) + (t2 + t3);
}

#ifdef XKV_GGML_EXACT_AVX2
// The part of ggml_v_expf both builds share: n = round(x / ln 2), the reduced argument b, and the
// polynomial p(b) without its last (b and constant) terms: j = p·u + c1·b (+ 1 for AVX-512).
struct ExpParts {
  __m256 z, n, b, u, p;
};

ExpParts ExpPartsOf(__m256 x) {
  ExpParts e;
  const __m256 r = _mm256_set1_ps(0x1.8p23f);
  e.z = _mm256_fmadd_ps(x, _mm256_set1_ps(0x1.715476p+0f), r);
  e.n = _mm256_sub_ps(e.z, r);
  e.b = _mm256_fnmadd_ps(e.n, _mm256_set1_ps(0x1.7f7d1cp-20f),
                         _mm256_fnmadd_ps(e.n, _mm256_set1_ps(0x1.62e4p-1f), x));
  e.u = _mm256_mul_ps(e.b, e.b);
  e.p = _mm256_fmadd_ps(
      _mm256_fmadd_ps(_mm256_set1_ps(0x1.0e4020p-7f), e.b, _mm256_set1_ps(0x1.573e2ep-5f)), e.u,
      _mm256_fmadd_ps(_mm256_set1_ps(0x1.555e66p-3f), e.b, _mm256_set1_ps(0x1.fffdb6p-2f)));
  return e;
}

// Lanes the vector code does not cover (rare: far below the row maximum, or special values) go
// through the scalar Expf.
__m256 ExpfScalarLanes(__m256 x) {
  float in[8], out[8];
  _mm256_storeu_ps(in, x);
  for (int i = 0; i < 8; ++i) out[i] = Expf(in[i]);
  return _mm256_loadu_ps(out);
}

#if !(defined(__AVX512F__) && defined(__AVX512DQ__))
// Expf on 8 lanes, the AVX2 build's ggml_v_expf: k = 2^n from z's bits, result fma(j, k, k);
// lanes with |n| > 126 take the scalar path.
__m256 Expf8(__m256 x) {
  const ExpParts e = ExpPartsOf(x);
  const __m256 k = _mm256_castsi256_ps(_mm256_add_epi32(
      _mm256_slli_epi32(_mm256_castps_si256(e.z), 23), _mm256_castps_si256(_mm256_set1_ps(1.0f))));
  const __m256 j = _mm256_fmadd_ps(e.p, e.u, _mm256_mul_ps(_mm256_set1_ps(0x1.ffffecp-1f), e.b));
  const __m256 big =
      _mm256_cmp_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.f), e.n), _mm256_set1_ps(126), _CMP_GT_OQ);
  if (_mm256_movemask_ps(big) == 0) return _mm256_fmadd_ps(j, k, k);
  return ExpfScalarLanes(x);
}
#else
// Expf on 8 lanes, the AVX-512 build's ggml_v_expf: j · 2^n (_mm512_scalef_ps); lanes whose 2^n is
// not a normal float take the scalar path.
__m256 Expf8(__m256 x) {
  const ExpParts p = ExpPartsOf(x);
  const __m256 j = _mm256_fmadd_ps(
      p.p, p.u, _mm256_fmadd_ps(_mm256_set1_ps(0x1.ffffecp-1f), p.b, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_cvtps_epi32(p.n);
  const __m256i normal = _mm256_and_si256(_mm256_cmpgt_epi32(e, _mm256_set1_epi32(-127)),
                                          _mm256_cmpgt_epi32(_mm256_set1_epi32(128), e));
  if (_mm256_movemask_epi8(normal) == -1) {
    const __m256i pow2 = _mm256_slli_epi32(_mm256_add_epi32(e, _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(j, _mm256_castsi256_ps(pow2));
  }
  return ExpfScalarLanes(x);
}
#endif
#endif

// tinyBLAS (n_new > 1): lane j accumulates products j, j + 16, ... with fma; then Sum16.
// n % 16 == 0.
float DotF16Batched(const float* a, const float* b, int64_t n) {
#if defined(XKV_GGML_EXACT_AVX2) && defined(__AVX512F__) && defined(__AVX512DQ__)
  __m512 acc = _mm512_setzero_ps();
  for (int64_t l = 0; l < n; l += kLanes) {
    acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + l), _mm512_loadu_ps(b + l), acc);
  }
  alignas(64) float lanes[kLanes];
  _mm512_store_ps(lanes, acc);
  return HSum16(_mm256_load_ps(lanes), _mm256_load_ps(lanes + 8));
#elif defined(XKV_GGML_EXACT_AVX2)
  if constexpr (!kAvx512Profile) {  // 8 lanes
    __m256 acc = _mm256_setzero_ps();
    for (int64_t l = 0; l < n; l += kLanes) {
      acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + l), _mm256_loadu_ps(b + l), acc);
    }
    return HSum8(acc);
  }
  __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
  for (int64_t l = 0; l < n; l += kLanes) {
    lo = _mm256_fmadd_ps(_mm256_loadu_ps(a + l), _mm256_loadu_ps(b + l), lo);
    hi = _mm256_fmadd_ps(_mm256_loadu_ps(a + l + 8), _mm256_loadu_ps(b + l + 8), hi);
  }
  return HSum16(lo, hi);
#else
  float lanes[kLanes] = {};
  for (int64_t l = 0; l < n; l += kLanes) {
    for (int64_t j = 0; j < kLanes; ++j) lanes[j] = std::fma(a[l + j], b[l + j], lanes[j]);
  }
  return LaneSum(lanes);
#endif
}

// ggml_vec_dot_f16 (one token): 4 accumulators of kLanes lanes over 4·kLanes-element steps,
// reduced as (acc0 + acc2) + (acc1 + acc3), then Sum16 (AVX-512) or HaddSum8 (AVX2); a tail
// beyond the last full step is added in double.
float DotF16Single(const float* a, const float* b, int64_t n) {
  const int64_t full = n - n % (4 * kLanes);
  double sum;
#ifdef XKV_GGML_EXACT_AVX2
  if constexpr (kAvx512Profile) {
    __m256 acc[8];
    for (__m256& x : acc) x = _mm256_setzero_ps();
    for (int64_t l = 0; l < full; l += 4 * kLanes) {
      for (int i = 0; i < 8; ++i) {
        acc[i] =
            _mm256_fmadd_ps(_mm256_loadu_ps(a + l + 8 * i), _mm256_loadu_ps(b + l + 8 * i), acc[i]);
      }
    }
    // Vector i holds lanes 8i..8i+7: lanes j < 8 of the four 16-lane accumulators are in 0, 2,
    // 4, 6, lanes j >= 8 in 1, 3, 5, 7.
    const __m256 lo = _mm256_add_ps(_mm256_add_ps(acc[0], acc[4]), _mm256_add_ps(acc[2], acc[6]));
    const __m256 hi = _mm256_add_ps(_mm256_add_ps(acc[1], acc[5]), _mm256_add_ps(acc[3], acc[7]));
    sum = HSum16(lo, hi);
  } else {
    __m256 acc[4];
    for (__m256& x : acc) x = _mm256_setzero_ps();
    for (int64_t l = 0; l < full; l += 4 * kLanes) {
      for (int i = 0; i < 4; ++i) {
        acc[i] =
            _mm256_fmadd_ps(_mm256_loadu_ps(a + l + 8 * i), _mm256_loadu_ps(b + l + 8 * i), acc[i]);
      }
    }
    float lanes[8];
    _mm256_storeu_ps(lanes,
                     _mm256_add_ps(_mm256_add_ps(acc[0], acc[2]), _mm256_add_ps(acc[1], acc[3])));
    sum = HaddSum8(lanes);
  }
#else
  float acc[4 * kLanes] = {};
  for (int64_t l = 0; l < full; l += 4 * kLanes) {
    for (int64_t j = 0; j < 4 * kLanes; ++j) acc[j] = std::fma(a[l + j], b[l + j], acc[j]);
  }
  float lanes[kLanes];
  for (int64_t j = 0; j < kLanes; ++j) {
    lanes[j] = (acc[j] + acc[2 * kLanes + j]) + (acc[kLanes + j] + acc[3 * kLanes + j]);
  }
  sum = kAvx512Profile ? Sum16(lanes) : HaddSum8(lanes);
#endif
  for (int64_t i = full; i < n; ++i) sum += static_cast<double>(a[i] * b[i]);
  return static_cast<float>(sum);
}

// x[0, kLanes) ← Expf(x - max) for the first `valid` elements, 0 after; returns their LaneSum.
float ExpChunk(float* x, float max, int64_t valid) {
#ifdef XKV_GGML_EXACT_AVX2
  if (!kAvx512Profile && valid == kLanes) {
    const __m256 e = Expf8(_mm256_sub_ps(_mm256_loadu_ps(x), _mm256_set1_ps(max)));
    _mm256_storeu_ps(x, e);
    return HSum8(e);
  }
  if (kAvx512Profile && valid == kLanes) {
    const __m256 m = _mm256_set1_ps(max);
    const __m256 lo = Expf8(_mm256_sub_ps(_mm256_loadu_ps(x), m));
    const __m256 hi = Expf8(_mm256_sub_ps(_mm256_loadu_ps(x + kLanes / 2), m));
    _mm256_storeu_ps(x, lo);
    _mm256_storeu_ps(x + kLanes / 2, hi);
    return HSum16(lo, hi);
  }
#endif
  for (int64_t j = 0; j < kLanes; ++j) x[j] = j < valid ? Expf(x[j] - max) : 0.f;
  return LaneSum(x);
}

#if defined(XKV_GGML_EXACT_AVX2) && defined(__AVX512F__) && defined(__AVX512DQ__)
constexpr int64_t kMaxFastHeadDim = 128;

float HSum16(__m512 x) {
  alignas(64) float lanes[kLanes];
  _mm512_store_ps(lanes, x);
  return ggml::HSum16(_mm256_load_ps(lanes), _mm256_load_ps(lanes + 8));
}

// Scores with q held in registers: (kBatched ? DotF16Batched : DotF16Single)(k[p], q) * scale for
// p < visible; returns their maximum. head_dim <= kMaxFastHeadDim (and % 64 == 0 for one token).
template <bool kBatched>
float Scores(const float* q, const float* k, int64_t hd, int64_t visible, float scale,
             float* scores) {
  __m512 qv[kMaxFastHeadDim / kLanes];
  const int64_t steps = hd / kLanes;
  for (int64_t i = 0; i < steps; ++i) qv[i] = _mm512_loadu_ps(q + i * kLanes);
  float max = -std::numeric_limits<float>::infinity();
  for (int64_t p = 0; p < visible; ++p) {
    const float* kp = k + p * hd;
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                     _mm512_setzero_ps()};
    for (int64_t i = 0; i < steps; ++i) {  // one token: 4 accumulators over 64-element steps
      __m512& a = acc[kBatched ? 0 : i % 4];
      a = _mm512_fmadd_ps(_mm512_loadu_ps(kp + i * kLanes), qv[i], a);
    }
    const __m512 sum =
        kBatched ? acc[0]
                 : _mm512_add_ps(_mm512_add_ps(acc[0], acc[2]), _mm512_add_ps(acc[1], acc[3]));
    scores[p] = HSum16(sum) * scale;
    max = std::max(max, scores[p]);
  }
  return max;
}

// 16 lane accumulators over one 16-dimension slice of V, in registers: lane j takes keys
// first + j, first + j + stride, ... (< visible) with fma(P[p], V[p]).
void PvLanes(const float* probs, const float* v, int64_t hd, int64_t d, int64_t first,
             int64_t stride, int64_t visible, __m512* acc) {
  for (int64_t j = 0; j < kLanes; ++j) acc[j] = _mm512_setzero_ps();
  int64_t p = first;
  for (; p + kLanes <= visible; p += stride) {
#pragma GCC unroll 16
    for (int64_t j = 0; j < kLanes; ++j) {
      acc[j] = _mm512_fmadd_ps(_mm512_set1_ps(probs[p + j]), _mm512_loadu_ps(v + (p + j) * hd + d),
                               acc[j]);
    }
  }
  if (p >= visible) return;
#pragma GCC unroll 16
  for (int64_t j = 0; j < kLanes; ++j) {
    if (p + j < visible) {
      acc[j] = _mm512_fmadd_ps(_mm512_set1_ps(probs[p + j]), _mm512_loadu_ps(v + (p + j) * hd + d),
                               acc[j]);
    }
  }
}

// P·V slice by slice: lane p mod 16 (batched) or p mod 64 (one token, folded as
// (acc0 + acc2) + (acc1 + acc3)) accumulates fma(P[p], V[p]); then the Sum16 tree, element-wise.
template <bool kBatched>
void Pv(const float* probs, const float* v, int64_t hd, int64_t visible, float* out) {
  constexpr int64_t kGroups = kBatched ? 1 : 4;
  for (int64_t d = 0; d < hd; d += kLanes) {
    __m512 acc[kLanes], group[kGroups > 1 ? kGroups - 1 : 1][kLanes];  // groups 1..3
    PvLanes(probs, v, hd, d, 0, kGroups * kLanes, visible, acc);
    if constexpr (!kBatched) {
      for (int64_t g = 1; g < kGroups; ++g) {
        PvLanes(probs, v, hd, d, g * kLanes, kGroups * kLanes, visible, group[g - 1]);
      }
      for (int64_t j = 0; j < kLanes; ++j) {
        acc[j] = _mm512_add_ps(_mm512_add_ps(acc[j], group[1][j]),
                               _mm512_add_ps(group[0][j], group[2][j]));
      }
    }
    for (int64_t i = 0; i < 8; ++i) acc[i] = _mm512_add_ps(acc[i + 8], acc[i]);
    for (int64_t i = 0; i < 4; ++i) acc[i] = _mm512_add_ps(acc[i + 4], acc[i]);
    _mm512_storeu_ps(out + d,
                     _mm512_add_ps(_mm512_add_ps(acc[0], acc[2]), _mm512_add_ps(acc[1], acc[3])));
  }
}
#endif

// One (query, head) of LaunchAttention. scores: scratch of at least RoundUp16(visible) floats;
// lanes: scratch of 4 * 16 * head_dim floats.
void AttendOne(const AttentionShape& s, const float* q, const float* k, const float* v,
               int64_t visible, bool batched, float* scores, float* lanes, float* out) {
  const int64_t hd = s.head_dim;
#if defined(XKV_GGML_EXACT_AVX2) && defined(__AVX512F__) && defined(__AVX512DQ__)
  const bool fast = hd <= kMaxFastHeadDim && (batched || hd % (4 * kLanes) == 0);
#else
  const bool fast = false;
#endif
  float max = -std::numeric_limits<float>::infinity();
  if (fast) {
#if defined(XKV_GGML_EXACT_AVX2) && defined(__AVX512F__) && defined(__AVX512DQ__)
    max = batched ? Scores<true>(q, k, hd, visible, s.scale, scores)
                  : Scores<false>(q, k, hd, visible, s.scale, scores);
#endif
  } else {
    for (int64_t p = 0; p < visible; ++p) {
      const float* kp = k + p * hd;
      scores[p] = (batched ? DotF16Batched(kp, q, hd) : DotF16Single(kp, q, hd)) * s.scale;
      max = std::max(max, scores[p]);
    }
  }
  // Softmax in 16-element chunks; masked keys (beyond `visible`) are exact zeros in every chunk.
  double sum = 0;
  for (int64_t c = 0; c < visible; c += kLanes) {
    sum += static_cast<double>(ExpChunk(scores + c, max, std::min(kLanes, visible - c)));
  }
  const float inv = static_cast<float>(1.0 / sum);
  int64_t p0 = 0;
#if defined(XKV_GGML_EXACT_AVX2) && defined(__F16C__)
  for (; p0 + 8 <= visible; p0 += 8) {  // round half to even, as F32ToF16
    const __m256 x = _mm256_mul_ps(_mm256_loadu_ps(scores + p0), _mm256_set1_ps(inv));
    _mm256_storeu_ps(scores + p0, _mm256_cvtph_ps(_mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT)));
  }
#endif
  for (int64_t p = p0; p < visible; ++p) scores[p] = RoundF16(scores[p] * inv);
#if defined(XKV_GGML_EXACT_AVX2) && defined(__AVX512F__) && defined(__AVX512DQ__)
  if (fast) {
    return batched ? Pv<true>(scores, v, hd, visible, out) : Pv<false>(scores, v, hd, visible, out);
  }
#endif
  // P·V: lane (p mod 16) — or (p mod 64) for one token — accumulates p's product per dimension.
  const int64_t n_lanes = batched ? kLanes : 4 * kLanes;
  std::fill(lanes, lanes + n_lanes * hd, 0.f);
  for (int64_t p = 0; p < visible; ++p) {
    float* acc = lanes + (p % n_lanes) * hd;
    const float* vp = v + p * hd;
    const float pr = scores[p];
    for (int64_t d = 0; d < hd; ++d) acc[d] = std::fma(pr, vp[d], acc[d]);
  }
  // LaneSum over the lane rows, the same tree for every dimension (written row-wise so that it
  // vectorizes over d); one token first folds its 4·kLanes lanes as (acc0 + acc2) + (acc1 + acc3).
  float* l = lanes;
  if (!batched) {
    for (int64_t j = 0; j < kLanes; ++j) {
      for (int64_t d = 0; d < hd; ++d) {
        l[j * hd + d] = (l[j * hd + d] + l[(2 * kLanes + j) * hd + d]) +
                        (l[(kLanes + j) * hd + d] + l[(3 * kLanes + j) * hd + d]);
      }
    }
  }
  if (!kAvx512Profile && !batched) {  // AVX2 vec_dot_f16: HaddSum8
    for (int64_t d = 0; d < hd; ++d) {
      const float t0 = l[d] + l[4 * hd + d], t1 = l[hd + d] + l[5 * hd + d];
      const float t2 = l[2 * hd + d] + l[6 * hd + d], t3 = l[3 * hd + d] + l[7 * hd + d];
      out[d] = (t0 + t1) + (t2 + t3);
    }
    return;
  }
  for (int64_t width = kLanes / 2; width >= 4; width /= 2) {
    for (int64_t i = 0; i < width; ++i) {
      for (int64_t d = 0; d < hd; ++d) l[i * hd + d] = l[(i + width) * hd + d] + l[i * hd + d];
    }
  }
  for (int64_t d = 0; d < hd; ++d) {
    out[d] = (l[d] + l[2 * hd + d]) + (l[hd + d] + l[3 * hd + d]);
  }
}

}  // namespace

absl::Status LaunchAttention(const AttentionShape& shape, const float* q, int64_t q_stride,
                             int64_t n_new, const float* k, const float* v, int64_t head_stride,
                             int64_t len, float* out, int64_t out_stride, ThreadPool* pool) {
  const int64_t hd = shape.head_dim;
  if (shape.n_heads <= 0 || shape.n_kv_heads <= 0 || shape.n_heads % shape.n_kv_heads != 0 ||
      hd <= 0 || hd % 16 != 0 || n_new < 1 || len < n_new || head_stride < len * hd ||
      q_stride < shape.n_heads * hd || out_stride < shape.n_heads * hd) {
    return absl::InvalidArgumentError(
        absl::StrCat("ggml_exact: bad attention shape (heads ", shape.n_heads, "/",
                     shape.n_kv_heads, ", head_dim ", hd, ", n_new ", n_new, ", len ", len, ")"));
  }
  const int64_t group = shape.n_heads / shape.n_kv_heads;
  const bool batched = n_new > 1;
  const int64_t padded = (len + kLanes - 1) / kLanes * kLanes;
  ParallelFor(pool, n_new * shape.n_heads, [&](int64_t item) {
    thread_local std::vector<float> scores, lanes;
    scores.resize(padded);
    lanes.resize(4 * kLanes * hd);
    const int64_t i = item / shape.n_heads, h = item % shape.n_heads, g = h / group;
    AttendOne(shape, q + i * q_stride + h * hd, k + g * head_stride, v + g * head_stride,
              len - n_new + i + 1, batched, scores.data(), lanes.data(),
              out + i * out_stride + h * hd);
  });
  return absl::OkStatus();
}

}  // namespace xkv::cpu::ggml
