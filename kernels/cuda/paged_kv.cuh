// One layer's paged KV cache on the device (architecture.md §5), and writing new tokens into it.
//
// Layout: K and V are separate pools of `num_blocks` blocks; block b holds kKvBlockTokens
// consecutive cache slots of every KV head:  bf16
// [num_blocks][n_kv_heads][kKvBlockTokens][head_dim]. A sequence owns a block table (int32
// [max_blocks], block ids into the pool): its cache slot s lives in block table[s / 16] at row s
// % 16. Slot order is causal order; after compaction the slots hold a per-KV-head subset of the
// past (keys keep their RoPE positions), so every KV head of one slot may hold a different token.
#ifndef XKV_KERNELS_CUDA_PAGED_KV_CUH_
#define XKV_KERNELS_CUDA_PAGED_KV_CUH_

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"

namespace xkv::cuda {

inline constexpr int kKvBlockTokens = 16;

struct PagedKvLayer {
  __nv_bfloat16* k = nullptr;  // device bf16 [num_blocks, n_kv_heads, 16, head_dim]
  __nv_bfloat16* v = nullptr;  // device bf16 [num_blocks, n_kv_heads, 16, head_dim]
  int64_t num_blocks = 0;
  int n_kv_heads = 0;
  int head_dim = 0;  // a multiple of 8 (16-byte rows of bf16)
};

// OK when the view is usable (pointers set, sizes positive, head_dim % 8 == 0).
absl::Status CheckPagedKvLayer(const PagedKvLayer& cache, const char* who);

// Writes n_tokens new K/V rows (post-RoPE, fp32) into cache slots, rounding to bf16.
// k:            device fp32 [n_tokens, n_kv_heads, head_dim], token rows `k_stride` apart
// v:            device fp32 [n_tokens, n_kv_heads, head_dim], token rows `v_stride` apart
// slot_mapping: device int64 [n_tokens]: block_id * 16 + row of each token's destination (the
//               batch may mix sequences: prefill chunks and one decode token per sequence);
//               a negative entry skips that token (padding). Must be < num_blocks * 16.
absl::Status LaunchKvCacheWrite(const float* k, int64_t k_stride, const float* v, int64_t v_stride,
                                int64_t n_tokens, const int64_t* slot_mapping,
                                const PagedKvLayer& cache, cudaStream_t stream);

}  // namespace xkv::cuda

#endif  // XKV_KERNELS_CUDA_PAGED_KV_CUH_
