// Reconstruction importance (KVzip, arXiv 2505.23416; architecture.md §3.1): how much attention
// each context token receives while the model re-reads the context. The re-reading input (a repeat
// prompt, the end of the user turn, then a chunk of the context again) is run on top of the cached
// context; its queries attend to the attention sinks, to the ORIGINAL keys of the chunk being
// repeated and (causally) to their own keys. A context key's score is its largest softmax
// probability over those queries and the query heads of its GQA group: a raw probability in
// [0, 1], comparable across layers and heads.
#ifndef XKV_KERNELS_CPU_RECONSTRUCT_IMPORTANCE_H_
#define XKV_KERNELS_CPU_RECONSTRUCT_IMPORTANCE_H_

#include <cstdint>

#include "absl/status/status.h"

namespace xkv {

// Queries scored per GEMM: the logits scratch is at most this many rows of the key subset, so
// memory stays bounded however long the re-reading input is.
inline constexpr int64_t kReconstructQueryBlock = 512;

struct ReconstructShape {
  int n_heads = 0;        // query heads
  int n_kv_heads = 0;     // KV heads; n_heads % n_kv_heads == 0
  int head_dim = 0;       // d
  int64_t n_queries = 0;  // R >= 1: rows of the re-reading input
  int64_t past_len = 0;   // C: cached context tokens; the input's keys follow at [C, C + R)
  int64_t chunk_begin = 0, chunk_end = 0;  // the repeated span [b, e), 0 <= b < e <= C
  int sinks = 4;  // keys [0, min(sinks, b)) join every softmax (attention sinks)
};

namespace cpu {

// For every query head h and input row i (0 <= i < R):
//   p = softmax(q[i, h] · K_sub / sqrt(d)),  K_sub = keys {[0, min(sinks, b)), [b, e), [C, C + i]}
// and scores[h / group, j - b] = max(scores[h / group, j - b], p_j) for j in [b, e).
// The caller initialises scores (e.g. to 0) and may accumulate several calls.
//
// q:      fp32 [R, n_heads, head_dim]            post-RoPE queries of the re-reading input
// k:      fp32 [n_kv_heads][k_head_stride]        post-RoPE keys; rows [0, C + R) valid per head
// scores: fp32 [n_kv_heads, e - b]                max-accumulated output
absl::Status LaunchReconstructScores(const float* q, const float* k, int64_t k_head_stride,
                                     const ReconstructShape& shape, float* scores);

}  // namespace cpu
}  // namespace xkv

#endif  // XKV_KERNELS_CPU_RECONSTRUCT_IMPORTANCE_H_
