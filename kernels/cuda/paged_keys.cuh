// Device-side addressing of a layer's paged cache (kernels/cuda/paged_kv.cuh) in either table
// layout (one table for every KV head, or per-KV-head tables of head-blocks), and a reader of its
// keys as fp32 by (KV head, slot, dim) for the scoring kernels (importance.cu,
// reconstruct_importance.cu). .cu files only.
#ifndef XKV_KERNELS_CUDA_PAGED_KEYS_CUH_
#define XKV_KERNELS_CUDA_PAGED_KEYS_CUH_

#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/cuda/paged_kv.cuh"

namespace xkv::cuda::internal {

// The head-block (16 rows of one KV head) holding KV head g's slot j, through a sequence's table:
// head g's own table when head_table_stride > 0, else the shared table of whole blocks.
__device__ __forceinline__ int64_t HeadBlockOf(const int32_t* table, int64_t head_table_stride,
                                               int n_kv_heads, int g, int64_t j) {
  return head_table_stride > 0 ? static_cast<int64_t>(table[g * head_table_stride + (j >> 4)])
                               : static_cast<int64_t>(table[j >> 4]) * n_kv_heads + g;
}

// The head-slot (head_block * 16 + row) of token t's KV head g in a slot mapping (paged_kv.cuh:
// [n_tokens] slots, or [n_tokens, n_kv_heads] head-slots with per-head tables); -1 when the entry
// is negative (skipped) or outside the pool.
__device__ __forceinline__ int64_t HeadSlotOf(const int64_t* slot_mapping,
                                              int64_t head_table_stride, int n_kv_heads,
                                              int64_t num_blocks, int64_t t, int g) {
  const int64_t slots = num_blocks * kKvBlockTokens;
  if (head_table_stride > 0) {
    const int64_t s = slot_mapping[t * n_kv_heads + g];
    return s < 0 || s >= slots * n_kv_heads ? -1 : s;
  }
  const int64_t s = slot_mapping[t];
  if (s < 0 || s >= slots) return -1;
  return ((s >> 4) * n_kv_heads + g) * kKvBlockTokens + (s & 15);
}

// bf16 keys of a layer's pool through a sequence's table (either layout).
struct PagedKeys {
  const __nv_bfloat16* k;
  const int32_t* table;
  int n_kv_heads;
  int head_dim;
  int64_t head_table_stride;
  __device__ float operator()(int g, int64_t j, int d) const {
    const int64_t hb = HeadBlockOf(table, head_table_stride, n_kv_heads, g, j);
    return __bfloat162float(k[(hb * kKvBlockTokens + (j & 15)) * head_dim + d]);
  }
  // Dims [d0, d0 + 8) (d0 a multiple of 8) as one 16-byte word of 8 bf16.
  __device__ uint4 Load8(int g, int64_t j, int d0) const {
    const int64_t hb = HeadBlockOf(table, head_table_stride, n_kv_heads, g, j);
    return *reinterpret_cast<const uint4*>(k + (hb * kKvBlockTokens + (j & 15)) * head_dim + d0);
  }
};
static_assert(kKvBlockTokens == 16, "PagedKeys splits slots with >> 4 and & 15");

}  // namespace xkv::cuda::internal

#endif  // XKV_KERNELS_CUDA_PAGED_KEYS_CUH_
