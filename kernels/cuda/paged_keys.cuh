// Device-side reader of a layer's paged keys (kernels/cuda/paged_kv.cuh) as fp32 by (KV head,
// slot, dim), for the scoring kernels (importance.cu, reconstruct_importance.cu). .cu files only.
#ifndef XKV_KERNELS_CUDA_PAGED_KEYS_CUH_
#define XKV_KERNELS_CUDA_PAGED_KEYS_CUH_

#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/cuda/paged_kv.cuh"

namespace xkv::cuda::internal {

// bf16 [blocks, n_kv_heads, 16, head_dim] through a sequence's block table.
struct PagedKeys {
  const __nv_bfloat16* k;
  const int32_t* table;
  int n_kv_heads;
  int head_dim;
  __device__ float operator()(int g, int64_t j, int d) const {
    const int64_t blk = table[j >> 4];
    return __bfloat162float(k[((blk * n_kv_heads + g) * kKvBlockTokens + (j & 15)) * head_dim + d]);
  }
};
static_assert(kKvBlockTokens == 16, "PagedKeys splits slots with >> 4 and & 15");

}  // namespace xkv::cuda::internal

#endif  // XKV_KERNELS_CUDA_PAGED_KEYS_CUH_
