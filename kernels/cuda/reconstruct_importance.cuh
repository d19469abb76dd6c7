// Reconstruction importance on the device (KVzip; architecture.md §3.1): the same semantics and
// output as cpu::LaunchReconstructScores (kernels/cpu/reconstruct_importance.h). Every query of
// the re-reading input attends to the sinks, the ORIGINAL keys of the repeated chunk and
// (causally) its own input's keys; each chunk key keeps its largest probability over the input's
// queries and the query heads of its GQA group (max-accumulated into `scores`).
// One CTA per 64 input rows of a query head, the keys they see streamed through shared memory in
// 64-key tiles: a pass for each row's softmax maximum and sum, a second over the chunk's keys for
// their probabilities (docs/benchmarks.md, "Reconstruct scores"; one CTA per row, each reading
// every key it saw, took ~440 ms for a 2048-token chunk of SmolLM2's 30 layers on an H100). With
// head_dim a multiple of 16 (at most 256) the logits are tensor-core products of the queries
// rounded to bf16 and the (bf16) keys; otherwise fp32 on CUDA cores.
#ifndef XKV_KERNELS_CUDA_RECONSTRUCT_IMPORTANCE_CUH_
#define XKV_KERNELS_CUDA_RECONSTRUCT_IMPORTANCE_CUH_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/cpu/reconstruct_importance.h"
#include "kernels/cuda/paged_kv.cuh"

namespace xkv::cuda {

// q:      device fp32 [R, n_heads, head_dim]      post-RoPE queries of the re-reading input
// k:      device fp32 [n_kv_heads][k_head_stride] post-RoPE keys; rows [0, C + R) valid per head
// scores: device fp32 [n_kv_heads, e - b]         max-accumulated (the caller initialises it)
absl::Status LaunchReconstructScores(const float* q, const float* k, int64_t k_head_stride,
                                     const ReconstructShape& shape, float* scores,
                                     cudaStream_t stream);

// Same, with the keys read from a layer's paged cache (bf16): block_table: device int32
// [ceil((C + R) / 16)], slots [0, C) the cached context, [C, C + R) the input's own keys
// (per-KV-head tables when cache.head_table_stride > 0, paged_kv.cuh: every head holding the C + R
// slots).
absl::Status LaunchReconstructScoresPaged(const float* q, const PagedKvLayer& cache,
                                          const int32_t* block_table, const ReconstructShape& shape,
                                          float* scores, cudaStream_t stream);

}  // namespace xkv::cuda

#endif  // XKV_KERNELS_CUDA_RECONSTRUCT_IMPORTANCE_CUH_
