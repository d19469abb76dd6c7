// Batched GQA decode attention over one layer's paged KV cache: every sequence of the batch has
// one new query token (already appended to its cache as the last slot) and its own cache length
// (each layer has its own lengths after XKV eviction: call once per layer with that layer's
// lengths). Same math as cpu::LaunchDecodeAttention per sequence.
//
// Work split: one CTA per (KV-length split, KV head, sequence); the query heads sharing a KV head
// are served by the same CTA, so each KV block is read from memory once per KV head group. Each
// of the 4 warps streams whole 16-token blocks with an online softmax (fp32); long contexts are
// split across CTAs (split-K) and merged by a second kernel.
#ifndef XKV_KERNELS_CUDA_DECODE_ATTENTION_CUH_
#define XKV_KERNELS_CUDA_DECODE_ATTENTION_CUH_

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "kernels/cuda/paged_kv.cuh"
#include "kernels/cuda/prefill_attention.cuh"

namespace xkv::cuda {

// Device scratch bytes that LaunchDecodeAttention needs for these sizes (an upper bound
// independent of the device).
size_t DecodeAttentionWorkspaceBytes(int64_t batch, int n_heads, int head_dim, int64_t max_kv_len);

// q:            device fp32 [batch, n_heads, head_dim], contiguous, post-RoPE.
// cache:        the layer's paged K/V (bf16).
// block_tables: device int32 [batch, max_blocks_per_seq] (row stride max_blocks_per_seq).
// kv_lens:      device int32 [batch]: cache slots of each sequence in this layer, in
//               [1, max_kv_len] (a length <= 0 yields a zero output row).
// max_kv_len:   host upper bound of kv_lens (sizes the grid and the workspace);
//               ceil(max_kv_len / 16) <= max_blocks_per_seq.
// out:          device fp32 or bf16 [batch, n_heads, head_dim], sequence rows `out_stride`
//               apart (>= n_heads * head_dim).
// workspace:    device bytes [workspace_bytes] >= DecodeAttentionWorkspaceBytes(...).
// head_dim 64 or 128; n_heads / n_kv_heads <= 8 (UNIMPLEMENTED otherwise).
// pdl:          programmatic dependent launch of both kernels (cuda_common.cuh).
// Per-KV-head lengths (KV heads of a layer holding different token counts): launch on
// OneHeadView(cache) with shape {group, 1, head_dim}, batch * n_kv_heads "sequences" (sequence b's
// KV head g is row b * n_kv_heads + g of the tables and lengths) and a contiguous q / out (rows
// n_heads * head_dim apart): every CTA does exactly the work it does in the shared-table launch.
// A cache with head_table_stride != 0 is refused (INVALID_ARGUMENT).
absl::Status LaunchDecodeAttention(const AttentionShape& shape, const float* q, int64_t batch,
                                   const PagedKvLayer& cache, const int32_t* block_tables,
                                   int64_t max_blocks_per_seq, const int32_t* kv_lens,
                                   int64_t max_kv_len, float* out, int64_t out_stride,
                                   void* workspace, size_t workspace_bytes, cudaStream_t stream,
                                   bool pdl = false);
absl::Status LaunchDecodeAttention(const AttentionShape& shape, const float* q, int64_t batch,
                                   const PagedKvLayer& cache, const int32_t* block_tables,
                                   int64_t max_blocks_per_seq, const int32_t* kv_lens,
                                   int64_t max_kv_len, __nv_bfloat16* out, int64_t out_stride,
                                   void* workspace, size_t workspace_bytes, cudaStream_t stream,
                                   bool pdl = false);

}  // namespace xkv::cuda

#endif  // XKV_KERNELS_CUDA_DECODE_ATTENTION_CUH_
