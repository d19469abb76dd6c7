// XKV importance scores on the device (architecture.md §3.1), same semantics and output as
// cpu::LaunchImportance (kernels/cpu/importance.h): softmax of the last w prompt queries against
// all visible keys (fp32, scale 1/sqrt(head_dim), causal inside the window), summed over the
// window queries, prefix columns only, query heads summed into their KV head (kKvHead) or kept
// (kQueryHead), then 'same' average pooling (count_include_pad=True).
// Summation order equals the CPU reference's (heads, then window queries, in order).
#ifndef XKV_KERNELS_CUDA_IMPORTANCE_CUH_
#define XKV_KERNELS_CUDA_IMPORTANCE_CUH_

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "kernels/cpu/importance.h"
#include "kernels/cuda/paged_kv.cuh"

namespace xkv::cuda {

// Device scratch bytes for one call: logits [n_heads * w, T], row stats, unpooled sums.
size_t ImportanceWorkspaceBytes(const ImportanceShape& shape, const ImportanceOptions& options);

// q:         device fp32 [w, n_heads, head_dim]     post-RoPE queries of the last w positions
// k:         device fp32 [n_kv_heads, T, head_dim]  post-RoPE keys of all T positions (CPU layout)
// scores:    device fp32 [ImportanceHeads(shape, granularity), T - w]
// workspace: device bytes >= ImportanceWorkspaceBytes(shape, options).
// (group * w) * head_dim * 4 bytes of query rows must fit in shared memory next to a 64-key tile
// (w <= 64 for Llama-3-8B shapes; INVALID_ARGUMENT otherwise).
absl::Status LaunchImportance(const float* q, const float* k, const ImportanceShape& shape,
                              const ImportanceOptions& options, float* scores, void* workspace,
                              size_t workspace_bytes, cudaStream_t stream);

// Same, with the keys read from a layer's paged cache (bf16, as written by LaunchKvCacheWrite):
// block_table: device int32 [ceil(T / 16)], slots [0, T) of the sequence in prompt order
// (per-KV-head tables when cache.head_table_stride > 0, paged_kv.cuh: every head holding the T
// slots).
absl::Status LaunchImportancePaged(const float* q, const PagedKvLayer& cache,
                                   const int32_t* block_table, const ImportanceShape& shape,
                                   const ImportanceOptions& options, float* scores, void* workspace,
                                   size_t workspace_bytes, cudaStream_t stream);

}  // namespace xkv::cuda

#endif  // XKV_KERNELS_CUDA_IMPORTANCE_CUH_
