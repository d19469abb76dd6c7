// One layer's paged KV cache on the device (architecture.md §5), and writing new tokens into it.
//
// Layout: K and V are separate pools of `num_blocks` blocks; block b holds kKvBlockTokens
// consecutive cache slots of every KV head:  bf16
// [num_blocks][n_kv_heads][kKvBlockTokens][head_dim]. A sequence owns a block table (int32
// [max_blocks], block ids into the pool): its cache slot s lives in block table[s / 16] at row s
// % 16. Slot order is causal order; after compaction the slots hold a per-KV-head subset of the
// past (keys keep their RoPE positions), so every KV head of one slot may hold a different token.
//
// Per-KV-head tables (head_table_stride > 0; the CUDA engine's layout, so KV heads of one layer
// can hold different token counts with whole 16-token runs per head returned to the pool): the
// same memory is read as num_blocks * n_kv_heads HEAD-blocks, bf16 [16][head_dim] each (head-block
// hb = block hb / n_kv_heads, KV head hb % n_kv_heads). A sequence's table then holds one table per
// KV head, head g's at table + g * head_table_stride, of head-block ids; head g's slot s lives in
// head-block table[g * head_table_stride + s / 16] at row s % 16, and a slot mapping holds one
// head-slot (head_block * 16 + row) per (token, KV head). A head holding n tokens owns
// ceil(n / 16) head-blocks: the rounding is at most 15 rows per (sequence, layer, KV head).
// Kernels taking per-head tables say so; the others (decode attention, compaction) run on
// OneHeadView, where each (sequence, KV head) is a sequence of its own.
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
  // 0: one table per sequence for every KV head (block ids); > 0: per-KV-head tables of head-block
  // ids, this many ints apart (above).
  int64_t head_table_stride = 0;
};

// The most blocks one table may name: every block of the pool (head-blocks with per-head tables).
inline int64_t MaxTableBlocks(const PagedKvLayer& cache) {
  return cache.num_blocks * (cache.head_table_stride > 0 ? int64_t{cache.n_kv_heads} : 1);
}

// The pool as n_kv_heads * num_blocks head-blocks of ONE KV head (head_table_stride 0): a
// per-KV-head table of `cache` is an ordinary block table of this view.
inline PagedKvLayer OneHeadView(const PagedKvLayer& cache) {
  return {cache.k, cache.v, cache.num_blocks * cache.n_kv_heads, 1, cache.head_dim, 0};
}

// OK when the view is usable (pointers set, sizes positive, head_dim % 8 == 0).
absl::Status CheckPagedKvLayer(const PagedKvLayer& cache, const char* who);

// Writes n_tokens new K/V rows (post-RoPE, fp32) into cache slots, rounding to bf16.
// k:            device fp32 [n_tokens, n_kv_heads, head_dim], token rows `k_stride` apart
// v:            device fp32 [n_tokens, n_kv_heads, head_dim], token rows `v_stride` apart
// slot_mapping: device int64 [n_tokens]: block_id * 16 + row of each token's destination (the
//               batch may mix sequences: prefill chunks and one decode token per sequence);
//               a negative entry skips that token (padding). Must be < num_blocks * 16.
//               Per-head tables: int64 [n_tokens, n_kv_heads] head-slots (head_block * 16 + row),
//               each < num_blocks * n_kv_heads * 16; a negative entry skips that (token, head).
absl::Status LaunchKvCacheWrite(const float* k, int64_t k_stride, const float* v, int64_t v_stride,
                                int64_t n_tokens, const int64_t* slot_mapping,
                                const PagedKvLayer& cache, cudaStream_t stream);

}  // namespace xkv::cuda

#endif  // XKV_KERNELS_CUDA_PAGED_KV_CUH_
