#include "kernels/cpu/reconstruct_importance.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "kernels/cpu/fast_math.h"
#include "kernels/cpu/gemm.h"

namespace xkv::cpu {
namespace {

absl::Status CheckArguments(const float* q, const float* k, int64_t k_head_stride,
                            const ReconstructShape& s, const float* scores) {
  if (s.n_heads <= 0 || s.n_kv_heads <= 0 || s.head_dim <= 0 || s.n_heads % s.n_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "reconstruct scores: n_heads (", s.n_heads, ") must be a positive multiple of n_kv_heads (",
        s.n_kv_heads, ") and head_dim (", s.head_dim, ") >= 1"));
  }
  if (s.n_queries < 1 || s.chunk_begin < 0 || s.chunk_begin >= s.chunk_end ||
      s.chunk_end > s.past_len || s.sinks < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("reconstruct scores: need n_queries >= 1 (", s.n_queries,
                     "), 0 <= chunk_begin (", s.chunk_begin, ") < chunk_end (", s.chunk_end,
                     ") <= past_len (", s.past_len, ") and sinks >= 0 (", s.sinks, ")"));
  }
  if (k_head_stride < (s.past_len + s.n_queries) * s.head_dim) {
    return absl::InvalidArgumentError(absl::StrCat(
        "reconstruct scores: k_head_stride ", k_head_stride, " holds fewer than past_len + ",
        "n_queries = ", s.past_len + s.n_queries, " keys"));
  }
  if (q == nullptr || k == nullptr || scores == nullptr) {
    return absl::InvalidArgumentError("reconstruct scores: null q, k or scores pointer");
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status LaunchReconstructScores(const float* q, const float* k, int64_t k_head_stride,
                                     const ReconstructShape& s, float* scores) {
  RETURN_IF_ERROR(CheckArguments(q, k, k_head_stride, s, scores));
  const int64_t d = s.head_dim, R = s.n_queries;
  const int64_t ns = std::min<int64_t>(s.sinks, s.chunk_begin);
  const int64_t nc = s.chunk_end - s.chunk_begin;
  const int64_t nk = ns + nc + R;  // the key subset: sinks, the chunk, the input's own keys
  const int group = s.n_heads / s.n_kv_heads;
  const int64_t q_stride = int64_t{s.n_heads} * d;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  std::vector<float> keys(static_cast<size_t>(nk * d));
  std::vector<float> logits(static_cast<size_t>(std::min(R, kReconstructQueryBlock) * nk));
  for (int g = 0; g < s.n_kv_heads; ++g) {
    const float* kh = k + g * k_head_stride;
    std::memcpy(keys.data(), kh, ns * d * sizeof(float));
    std::memcpy(keys.data() + ns * d, kh + s.chunk_begin * d, nc * d * sizeof(float));
    std::memcpy(keys.data() + (ns + nc) * d, kh + s.past_len * d, R * d * sizeof(float));
    float* out = scores + g * nc;
    for (int h = g * group; h < (g + 1) * group; ++h) {
      for (int64_t r0 = 0; r0 < R; r0 += kReconstructQueryBlock) {
        const int64_t m = std::min(kReconstructQueryBlock, R - r0);
        RETURN_IF_ERROR(LaunchGemm(q + r0 * q_stride + h * d, q_stride, keys.data(), d,
                                   logits.data(), nk, m, nk, d, /*accumulate=*/false));
        for (int64_t i = 0; i < m; ++i) {
          float* row = logits.data() + i * nk;
          const int64_t visible = ns + nc + r0 + i + 1;  // causal inside the input
          float max_logit = -std::numeric_limits<float>::infinity();
          for (int64_t j = 0; j < visible; ++j) {
            row[j] *= scale;
            max_logit = std::max(max_logit, row[j]);
          }
          for (int64_t j = 0; j < visible; ++j) row[j] = FastExp(row[j] - max_logit);
          float denom = 0.0f;
          for (int64_t j = 0; j < visible; ++j) denom += row[j];
          const float inv = 1.0f / denom;
          for (int64_t j = 0; j < nc; ++j) out[j] = std::max(out[j], row[ns + j] * inv);
        }
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace xkv::cpu
