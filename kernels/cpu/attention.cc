#include "kernels/cpu/attention.h"

#include <cblas.h>

#include <algorithm>
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

}  // namespace

absl::Status LaunchPrefillAttention(const AttentionShape& shape, const float* q, int64_t n_new,
                                    const float* k, const float* v, int64_t kv_head_stride,
                                    int64_t kv_len, float* out, int64_t out_stride,
                                    ThreadPool* pool) {
  if (auto st = CheckArgs(shape, q, k, v, out, n_new, kv_head_stride, kv_len); !st.ok()) return st;
  if (out_stride < static_cast<int64_t>(shape.n_heads) * shape.head_dim) {
    return absl::InvalidArgumentError(absl::StrCat("attention: out_stride ", out_stride));
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
