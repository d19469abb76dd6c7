// After the fused QKV projection, one kernel per step: RoPE on Q (to q_out) and on K, and K
// (post-RoPE) and V written into the paged cache as bf16 — LaunchRope on Q, LaunchRope on K and
// LaunchKvCacheWrite in one launch, with the same math (so the same bits). The fp32 K rows are
// not written back to `qkv`.
#ifndef XKV_KERNELS_CUDA_QKV_ROPE_WRITE_CUH_
#define XKV_KERNELS_CUDA_QKV_ROPE_WRITE_CUH_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/cuda/paged_kv.cuh"
#include "kernels/cuda/rope.cuh"

namespace xkv::cuda {

// qkv:     device fp32 [n_tokens, n_heads * head_dim + 2 * kv_dim] (Q | K | V per token row, kv_dim
//          = cache.n_kv_heads * head_dim), rows `qkv_stride` apart.
// cos_sin: from LaunchRopeCache. q_out: device fp32 [n_tokens, n_heads * head_dim], rows
//          `q_stride` apart. slot_mapping: as LaunchKvCacheWrite (negative: K/V not written; per
//          (token, KV head) head-slots when cache.head_table_stride > 0).
// head_dim is cache.head_dim; rope_dims even and <= head_dim.
absl::Status LaunchQkvRopeWrite(const float* qkv, int64_t qkv_stride, int64_t n_tokens, int n_heads,
                                int rope_dims, RopeMode mode, const float* cos_sin, float* q_out,
                                int64_t q_stride, const int64_t* slot_mapping,
                                const PagedKvLayer& cache, bool pdl, cudaStream_t stream);

}  // namespace xkv::cuda

#endif  // XKV_KERNELS_CUDA_QKV_ROPE_WRITE_CUH_
