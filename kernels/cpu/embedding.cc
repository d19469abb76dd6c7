#include "kernels/cpu/embedding.h"

#include <cstring>

#include "absl/strings/str_cat.h"

namespace xkv::cpu {

absl::Status LaunchEmbedding(const float* table, int64_t vocab, int64_t dim, const int32_t* tokens,
                             int64_t n_tokens, float* out) {
  if (vocab <= 0 || dim <= 0 || n_tokens < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("embedding: bad sizes vocab=", vocab, " dim=", dim, " n=", n_tokens));
  }
  if (n_tokens == 0) return absl::OkStatus();
  if (table == nullptr || tokens == nullptr || out == nullptr) {
    return absl::InvalidArgumentError("embedding: null pointer");
  }
  for (int64_t i = 0; i < n_tokens; ++i) {
    if (tokens[i] < 0 || tokens[i] >= vocab) {
      return absl::InvalidArgumentError(absl::StrCat("embedding: token ", tokens[i], " at index ",
                                                     i, " outside [0, ", vocab, ")"));
    }
  }
  for (int64_t i = 0; i < n_tokens; ++i) {
    std::memcpy(out + i * dim, table + static_cast<int64_t>(tokens[i]) * dim, dim * sizeof(float));
  }
  return absl::OkStatus();
}

}  // namespace xkv::cpu
