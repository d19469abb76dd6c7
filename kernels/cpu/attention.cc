#include "kernels/cpu/attention.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/fast_math.h"
#include "kernels/cpu/half.h"

namespace xkv::cpu {
namespace {

constexpr int64_t kTargetRows = 128;  // stacked query rows per prefill block

absl::Status CheckArgs(const AttentionShape& s, const void* q, const void* k, const void* v,
                       const void* out, int64_t n_new, int64_t kv_head_stride, int64_t kv_len) {
  if (s.n_heads <= 0 || s.n_kv_heads <= 0 || s.head_dim <= 0 || s.n_heads % s.n_kv_heads != 0 ||
      !(s.scale > 0.f)) {
    return absl::InvalidArgumentError(absl::StrCat("attention: bad shape heads=", s.n_heads,
                                                   " kv_heads=", s.n_kv_heads,
                                                   " head_dim=", s.head_dim, " scale=", s.scale));
  }
  if (n_new < 1 || kv_len < n_new || kv_head_stride < kv_len * s.head_dim) {
    return absl::InvalidArgumentError(absl::StrCat("attention: bad lengths n_new=", n_new,
                                                   " kv_len=", kv_len,
                                                   " kv_head_stride=", kv_head_stride));
  }
  if (q == nullptr || k == nullptr || v == nullptr || out == nullptr) {
    return absl::InvalidArgumentError("attention: null pointer");
  }
  if (s.round_probs_f16 && s.emulate_bf16_flash) {
    return absl::InvalidArgumentError(
        "attention: round_probs_f16 and emulate_bf16_flash are exclusive");
  }
  return absl::OkStatus();
}

// In place over row[0, n): exp(x - max); returns the sum. Reductions use 16 partial lanes so
// they vectorise without -ffast-math.
float ExpShiftSum(float* row, int64_t n) {
  float lanes[16];
  for (int i = 0; i < 16; ++i) lanes[i] = row[0];
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    for (int i = 0; i < 16; ++i) lanes[i] = std::max(lanes[i], row[j + i]);
  }
  float mx = row[0];
  for (; j < n; ++j) mx = std::max(mx, row[j]);
  for (int i = 0; i < 16; ++i) mx = std::max(mx, lanes[i]);
  for (j = 0; j < n; ++j) row[j] = FastExp(row[j] - mx);
  for (int i = 0; i < 16; ++i) lanes[i] = 0.f;
  for (j = 0; j + 16 <= n; j += 16) {
    for (int i = 0; i < 16; ++i) lanes[i] += row[j + i];
  }
  float sum = 0.f;
  for (; j < n; ++j) sum += row[j];
  for (int i = 0; i < 16; ++i) sum += lanes[i];
  return sum;
}

// row[j] = fp16(row[j] * inv) for j < n: normalised probabilities rounded as ggml rounds them.
void RoundProbsF16(float* row, int64_t n, float inv) {
  for (int64_t j = 0; j < n; ++j) row[j] = F16ToF32(F32ToF16(row[j] * inv));
}

// Dot product of two head_dim vectors with 16 independent partial sums (vectorises without
// -ffast-math).
float Dot(const float* a, const float* b, int n) {
  float acc[16] = {};
  int d = 0;
  for (; d + 16 <= n; d += 16) {
    for (int i = 0; i < 16; ++i) acc[i] += a[d + i] * b[d + i];
  }
  float sum = 0.f;
  for (; d < n; ++d) sum += a[d] * b[d];
  for (int i = 0; i < 16; ++i) sum += acc[i];
  return sum;
}

// One KV head, one block of query tokens [t0, t1): stacked rows r = (t - t0) * group + j.
void PrefillBlock(const AttentionShape& s, const float* q, int64_t n_new, const float* kg,
                  const float* vg, int64_t kv_len, int g, int64_t t0, int64_t t1, float* out,
                  int64_t out_stride, ThreadPool* pool, std::vector<float>& qs,
                  std::vector<float>& scores, std::vector<float>& os) {
  const int group = s.n_heads / s.n_kv_heads;
  const int hd = s.head_dim;
  const int64_t past = kv_len - n_new;
  const int64_t rows = (t1 - t0) * group;
  const int64_t kend = past + t1;  // keys visible to the block's last token
  qs.resize(rows * hd);
  scores.resize(rows * kend);
  os.resize(rows * hd);
  for (int64_t t = t0; t < t1; ++t) {
    const float* src = q + (t * s.n_heads + static_cast<int64_t>(g) * group) * hd;
    std::memcpy(qs.data() + (t - t0) * group * hd, src, sizeof(float) * group * hd);
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, kend, hd, s.scale, qs.data(), hd, kg,
              hd, 0.f, scores.data(), kend);
  std::vector<float> inv_sum(rows);
  ParallelFor(pool, rows, [&](int64_t r) {
    const int64_t valid = past + t0 + r / group + 1;
    float* row = scores.data() + r * kend;
    inv_sum[r] = 1.0f / ExpShiftSum(row, valid);
    if (s.round_probs_f16) {
      RoundProbsF16(row, valid, inv_sum[r]);
      inv_sum[r] = 1.f;
    }
    std::fill(row + valid, row + kend, 0.f);
  });
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, hd, kend, 1.0f, scores.data(), kend,
              vg, hd, 0.f, os.data(), hd);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t t = t0 + r / group;
    const int h = g * group + static_cast<int>(r % group);
    float* dst = out + t * out_stride + static_cast<int64_t>(h) * hd;
    const float* o = os.data() + r * hd;
    for (int d = 0; d < hd; ++d) dst[d] = o[d] * inv_sum[r];
  }
}

// ---- shape.emulate_bf16_flash: the CUDA tensor-core flash prefill, rounding point by point ----
// Mirrors FlashPrefillKernel in kernels/cuda/prefill_attention.cu (line numbers as of 6991bea):
//  - kFlashTile: kBk = 64 keys per tile, tile j = slots [64 j, 64 j + 64) (:27, :150).
//  - kFlashLog2e: scale_log2 = shape.scale * kLog2e, an fp32 product on the host (:388).
//  - RoundQBf16: the Q tile is staged as bf16(q * scale_log2) (:174-187). K and V come from the
//    bf16 cache (RoundKvBf16: a no-op on a cache already rounded to bf16).
//  - FlashRowBf16: S = Qb·Kbᵀ in fp32 (mma, :236-266). Slots past the row's limit are -inf
//    (:268-283): P = 0 there and the max is unchanged, so they are skipped, as are the tiles
//    wholly past the limit (alpha = 1, P = 0). Per tile m' = max(m, max S), alpha = 2^(m - m')
//    (0 on tile 0), O *= alpha (:285-313; the kernel skips the multiply when no row of the warp
//    found a new max, alpha being exactly 1 then). P = 2^(S - m') in fp32; l = l * alpha + ΣP
//    from the fp32 P (:314-328); O += bf16(P)·Vb (:329-352); out = O * (1 / l) (:356-371).
// The kernel's exp2 is ex2.approx.ftz (<= 2 ulp, subnormal results flushed), std::exp2 here; the
// fp32 summation order inside a tile and of l's quad partial sums differs. Nothing else does.
constexpr int64_t kFlashTile = 64;
constexpr float kFlashLog2e = 1.4426950408889634f;

inline float RoundBf16(float x) { return Bf16ToF32(F32ToBf16(x)); }

// dst[i] = bf16(src[i] * mul) for i < n.
void RoundQBf16(const float* src, int n, float mul, float* dst) {
  for (int i = 0; i < n; ++i) dst[i] = RoundBf16(src[i] * mul);
}

// dst[i] = bf16(src[i]) for the kv_len rows of one KV head.
void RoundKvBf16(const float* src, int64_t n, float* dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = RoundBf16(src[i]);
}

// One query row seeing slots [0, lim]: qb bf16-valued [hd] (pre-scaled into the log2 domain),
// kb/vb bf16-valued [kv_len][hd]; o: fp32 [hd] scratch and result; s: fp32 [kFlashTile] scratch.
void FlashRowBf16(const float* qb, const float* kb, const float* vb, int hd, int64_t lim, float* o,
                  float* s) {
  float m = -INFINITY, l = 0.f;
  std::fill(o, o + hd, 0.f);
  for (int64_t k0 = 0; k0 <= lim; k0 += kFlashTile) {
    const int64_t n = std::min(kFlashTile, lim + 1 - k0);  // visible keys of the tile
    float mx = m;
    for (int64_t c = 0; c < n; ++c) {
      s[c] = Dot(qb, kb + (k0 + c) * hd, hd);
      mx = std::max(mx, s[c]);
    }
    const float alpha = std::exp2(m - mx);  // exp2(-inf) = 0 on the first tile
    m = mx;
    for (int d = 0; d < hd; ++d) o[d] *= alpha;
    float sum = 0.f;
    for (int64_t c = 0; c < n; ++c) {
      const float p = std::exp2(s[c] - m);
      sum += p;                       // the row sum takes the fp32 P
      const float pb = RoundBf16(p);  // P V takes bf16 P
      const float* vc = vb + (k0 + c) * hd;
      for (int d = 0; d < hd; ++d) o[d] += pb * vc[d];
    }
    l = l * alpha + sum;
  }
  const float inv = 1.0f / l;
  for (int d = 0; d < hd; ++d) o[d] *= inv;
}

void PrefillFlashBf16(const AttentionShape& s, const float* q, int64_t n_new, const float* k,
                      const float* v, int64_t kv_head_stride, int64_t kv_len, float* out,
                      int64_t out_stride, ThreadPool* pool) {
  const int group = s.n_heads / s.n_kv_heads;
  const int hd = s.head_dim;
  const int64_t past = kv_len - n_new;
  const float scale_log2 = s.scale * kFlashLog2e;
  std::vector<float> kb(kv_len * hd), vb(kv_len * hd);
  for (int g = 0; g < s.n_kv_heads; ++g) {
    RoundKvBf16(k + g * kv_head_stride, kv_len * hd, kb.data());
    RoundKvBf16(v + g * kv_head_stride, kv_len * hd, vb.data());
    ParallelFor(pool, n_new * group, [&](int64_t r) {
      const int64_t t = r / group;
      const int64_t h = int64_t{g} * group + r % group;
      std::vector<float> buf(hd + kFlashTile);  // qb, then the tile's scores
      RoundQBf16(q + (t * s.n_heads + h) * hd, hd, scale_log2, buf.data());
      FlashRowBf16(buf.data(), kb.data(), vb.data(), hd, past + t, out + t * out_stride + h * hd,
                   buf.data() + hd);
    });
  }
}

}  // namespace

absl::Status LaunchPrefillAttention(const AttentionShape& shape, const float* q, int64_t n_new,
                                    const float* k, const float* v, int64_t kv_head_stride,
                                    int64_t kv_len, float* out, int64_t out_stride,
                                    ThreadPool* pool) {
  if (auto st = CheckArgs(shape, q, k, v, out, n_new, kv_head_stride, kv_len); !st.ok()) return st;
  if (out_stride < static_cast<int64_t>(shape.n_heads) * shape.head_dim) {
    return absl::InvalidArgumentError(absl::StrCat("attention: out_stride ", out_stride));
  }
  if (shape.emulate_bf16_flash) {
    PrefillFlashBf16(shape, q, n_new, k, v, kv_head_stride, kv_len, out, out_stride, pool);
    return absl::OkStatus();
  }
  if (n_new == 1) {  // a single row: out_stride does not matter
    return LaunchDecodeAttention(shape, q, k, v, kv_head_stride, kv_len, out, pool);
  }
  const int group = shape.n_heads / shape.n_kv_heads;
  const int64_t block = std::max<int64_t>(1, kTargetRows / group);
  std::vector<float> qs, scores, os;
  for (int g = 0; g < shape.n_kv_heads; ++g) {
    const float* kg = k + g * kv_head_stride;
    const float* vg = v + g * kv_head_stride;
    for (int64_t t0 = 0; t0 < n_new; t0 += block) {
      const int64_t t1 = std::min(n_new, t0 + block);
      PrefillBlock(shape, q, n_new, kg, vg, kv_len, g, t0, t1, out, out_stride, pool, qs, scores,
                   os);
    }
  }
  return absl::OkStatus();
}

absl::Status LaunchDecodeAttention(const AttentionShape& shape, const float* q, const float* k,
                                   const float* v, int64_t kv_head_stride, int64_t kv_len,
                                   float* out, ThreadPool* pool) {
  if (auto st = CheckArgs(shape, q, k, v, out, 1, kv_head_stride, kv_len); !st.ok()) return st;
  const int group = shape.n_heads / shape.n_kv_heads;
  const int hd = shape.head_dim;
  ParallelFor(pool, shape.n_heads, [&](int64_t h) {
    const int64_t g = h / group;
    const float* qh = q + h * hd;
    const float* kg = k + g * kv_head_stride;
    const float* vg = v + g * kv_head_stride;
    std::vector<float> p(kv_len);
    for (int64_t j = 0; j < kv_len; ++j) p[j] = Dot(qh, kg + j * hd, hd) * shape.scale;
    float inv = 1.0f / ExpShiftSum(p.data(), kv_len);
    if (shape.round_probs_f16) {
      RoundProbsF16(p.data(), kv_len, inv);
      inv = 1.f;
    }
    float* oh = out + h * hd;
    std::fill(oh, oh + hd, 0.f);
    for (int64_t j = 0; j < kv_len; ++j) {
      const float pj = p[j] * inv;
      const float* vj = vg + j * hd;
      for (int d = 0; d < hd; ++d) oh[d] += pj * vj[d];
    }
  });
  return absl::OkStatus();
}

}  // namespace xkv::cpu
