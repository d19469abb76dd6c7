// Embedding lookup: gathers rows of an fp32 table.
#ifndef XKV_KERNELS_CPU_EMBEDDING_H_
#define XKV_KERNELS_CPU_EMBEDDING_H_

#include <cstdint>

#include "absl/status/status.h"

namespace xkv::cpu {

// table:  fp32 [vocab, dim] row-major.
// tokens: int32 [n_tokens], each in [0, vocab) (INVALID_ARGUMENT otherwise, naming the index).
// out:    fp32 [n_tokens, dim] row-major; must not overlap the table.
absl::Status LaunchEmbedding(const float* table, int64_t vocab, int64_t dim, const int32_t* tokens,
                             int64_t n_tokens, float* out);

}  // namespace xkv::cpu

#endif  // XKV_KERNELS_CPU_EMBEDDING_H_
