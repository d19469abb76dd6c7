#include "kernels/cpu/importance.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"

namespace xkv {

int ImportanceHeads(const ImportanceShape& shape, ScoreGranularity granularity) {
  return granularity == ScoreGranularity::kKvHead ? shape.n_kv_heads : shape.n_heads;
}

namespace cpu {
namespace {

absl::Status CheckArguments(const float* q, const float* k, const ImportanceShape& s,
                            const ImportanceOptions& o, const float* scores) {
  if (s.n_heads <= 0 || s.n_kv_heads <= 0 || s.head_dim <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("importance: n_heads (", s.n_heads, "), n_kv_heads (", s.n_kv_heads,
                     ") and head_dim (", s.head_dim, ") must be >= 1"));
  }
  if (s.n_heads % s.n_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("importance: n_heads (", s.n_heads,
                                                   ") must be a multiple of n_kv_heads (",
                                                   s.n_kv_heads, ")"));
  }
  if (o.window < 1 || o.window > s.seq_len) {
    return absl::InvalidArgumentError(
        absl::StrCat("importance: window ", o.window, " must be in [1, seq_len=", s.seq_len, "]"));
  }
  if (o.pool_kernel < 1 || o.pool_kernel % 2 == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("importance: pool_kernel ", o.pool_kernel, " must be odd and >= 1"));
  }
  if (q == nullptr || k == nullptr || (scores == nullptr && s.seq_len > o.window)) {
    return absl::InvalidArgumentError("importance: null q, k or scores pointer");
  }
  return absl::OkStatus();
}

// Adds, for one query head, the window's softmax rows restricted to the prefix into acc[P].
// q_head: fp32 [w] rows of stride n_heads*head_dim; k_head: fp32 [T, head_dim].
// kMax keeps the running maximum instead of the sum (probabilities are >= 0, so acc starts at 0).
void AccumulateHead(const float* q_head, int64_t q_stride, const float* k_head, int64_t seq_len,
                    int window, int head_dim, ScoreReduce reduce, float* acc) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  const int64_t prefix = seq_len - window;
  std::vector<float> logits(seq_len);
  for (int i = 0; i < window; ++i) {
    const float* qi = q_head + i * q_stride;
    const int64_t visible = prefix + i + 1;  // keys 0 .. T-w+i
    float max_logit = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < visible; ++j) {
      const float* kj = k_head + j * head_dim;
      float dot = 0.0f;
      for (int c = 0; c < head_dim; ++c) dot += qi[c] * kj[c];
      logits[j] = dot * scale;
      max_logit = std::max(max_logit, logits[j]);
    }
    float denom = 0.0f;
    for (int64_t j = 0; j < visible; ++j) {
      logits[j] = std::exp(logits[j] - max_logit);
      denom += logits[j];
    }
    const float inv = 1.0f / denom;
    if (reduce == ScoreReduce::kMax) {
      for (int64_t j = 0; j < prefix; ++j) acc[j] = std::max(acc[j], logits[j] * inv);
    } else {
      for (int64_t j = 0; j < prefix; ++j) acc[j] += logits[j] * inv;
    }
  }
}

}  // namespace

void PoolScores(const float* in, int64_t n, int kernel, ScorePool pool, float* out) {
  const int r = kernel / 2;
  const float inv = 1.0f / static_cast<float>(kernel);
  for (int64_t j = 0; j < n; ++j) {
    const int64_t lo = std::max<int64_t>(0, j - r);
    const int64_t hi = std::min<int64_t>(n - 1, j + r);
    float acc = 0.0f;
    for (int64_t t = lo; t <= hi; ++t)
      acc = pool == ScorePool::kMax ? std::max(acc, in[t]) : acc + in[t];
    out[j] = pool == ScorePool::kMax ? acc : acc * inv;
  }
}

absl::Status LaunchImportance(const float* q, const float* k, const ImportanceShape& shape,
                              const ImportanceOptions& options, float* scores) {
  if (absl::Status st = CheckArguments(q, k, shape, options, scores); !st.ok()) return st;
  const int64_t prefix = shape.seq_len - options.window;
  if (prefix == 0) return absl::OkStatus();
  const int group = shape.n_heads / shape.n_kv_heads;
  const int out_heads = ImportanceHeads(shape, options.granularity);
  const int64_t q_stride = static_cast<int64_t>(shape.n_heads) * shape.head_dim;
  std::vector<float> acc(static_cast<size_t>(out_heads) * prefix, 0.0f);
  for (int h = 0; h < shape.n_heads; ++h) {
    const int kv = h / group;
    const int row = options.granularity == ScoreGranularity::kKvHead ? kv : h;
    AccumulateHead(q + static_cast<int64_t>(h) * shape.head_dim, q_stride,
                   k + static_cast<int64_t>(kv) * shape.seq_len * shape.head_dim, shape.seq_len,
                   options.window, shape.head_dim, options.reduce, acc.data() + row * prefix);
  }
  for (int row = 0; row < out_heads; ++row) {
    PoolScores(acc.data() + row * prefix, prefix, options.pool_kernel, options.pool,
               scores + row * prefix);
  }
  return absl::OkStatus();
}

}  // namespace cpu
}  // namespace xkv
