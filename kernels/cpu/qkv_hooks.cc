#include "kernels/cpu/qkv_hooks.h"

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "kernels/cpu/rms_norm.h"

namespace xkv::cpu {

absl::Status LaunchQkvHooks(const QkvHookShape& shape, float* qkv, int64_t stride, int64_t n_tokens,
                            const float* bias, const float* q_norm, const float* k_norm) {
  const int64_t q_dim = int64_t{shape.n_heads} * shape.head_dim;
  const int64_t qkv_dim = q_dim + 2 * int64_t{shape.n_kv_heads} * shape.head_dim;
  if (shape.n_heads <= 0 || shape.n_kv_heads <= 0 || shape.head_dim <= 0 || n_tokens < 0 ||
      stride < qkv_dim || (q_norm == nullptr) != (k_norm == nullptr)) {
    return absl::InvalidArgumentError(
        absl::StrCat("qkv_hooks: bad arguments heads=", shape.n_heads, "/", shape.n_kv_heads,
                     " head_dim=", shape.head_dim, " n=", n_tokens, " stride=", stride));
  }
  for (int64_t t = 0; t < n_tokens; ++t) {
    float* row = qkv + t * stride;
    if (bias != nullptr) {
      for (int64_t i = 0; i < qkv_dim; ++i) row[i] += bias[i];
    }
    if (q_norm != nullptr) {
      RETURN_IF_ERROR(LaunchRmsNorm(row, q_norm, shape.n_heads, shape.head_dim, shape.eps, row));
      RETURN_IF_ERROR(LaunchRmsNorm(row + q_dim, k_norm, shape.n_kv_heads, shape.head_dim,
                                    shape.eps, row + q_dim));
    }
  }
  return absl::OkStatus();
}

}  // namespace xkv::cpu
