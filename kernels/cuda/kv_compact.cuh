// XKV eviction on the device (architecture.md §3.4): per KV head, select the top-b prefix slots by
// pooled score plus the w window slots, then copy the kept K/V rows into fresh blocks.
#ifndef XKV_KERNELS_CUDA_KV_COMPACT_CUH_
#define XKV_KERNELS_CUDA_KV_COMPACT_CUH_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/cuda/paged_kv.cuh"

namespace xkv::cuda {

// Kept slots per KV head, the rule of allocator's SelectKeptTokens (kTopScore) followed by the
// window, as model/kv_allocation KeptSlots builds them: the `budget` prefix slots of highest
// score (ties: lower slot first), in increasing slot order, then slots [P, seq_len).
// scores: device fp32 [n_kv_heads, prefix_len] (LaunchImportance output, kKvHead granularity).
// kept:   device int32 [n_kv_heads, budget + (seq_len - prefix_len)], strictly increasing per row.
// 0 <= budget <= prefix_len <= seq_len. One CTA (radix select, 4 passes of 8 bits) per KV head.
absl::Status LaunchSelectKeptSlots(const float* scores, int n_kv_heads, int64_t prefix_len,
                                   int64_t budget, int64_t seq_len, int32_t* kept,
                                   cudaStream_t stream);

// Copies the kept rows into new blocks: destination slot s of KV head g receives source slot
// kept[g, s], for K and V.
// cache:           the layer's paged pool (source and destination blocks both live in it).
// src_block_table: device int32 [ceil(seq_len / 16)]: the sequence's current blocks.
// kept:            device int32 [n_kv_heads, n_keep] from LaunchSelectKeptSlots.
// dst_block_table: device int32 [ceil(n_keep / 16)]: freshly allocated blocks, disjoint from the
//                  source blocks (copies run in parallel; overlapping tables would race). Rows of
//                  the last destination block past n_keep are left untouched.
// Per-KV-head tables (heads keeping different counts): one call per KV head g on
// OneHeadView(cache) with head g's tables and kept row (head_table_stride != 0: INVALID_ARGUMENT).
absl::Status LaunchCompactKv(const PagedKvLayer& cache, const int32_t* src_block_table,
                             const int32_t* kept, int64_t n_keep, const int32_t* dst_block_table,
                             cudaStream_t stream);

}  // namespace xkv::cuda

#endif  // XKV_KERNELS_CUDA_KV_COMPACT_CUH_
