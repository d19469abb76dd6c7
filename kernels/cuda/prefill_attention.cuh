// Causal GQA prefill attention over one layer's paged KV cache, flash-style: query tiles stream
// over key tiles with an online softmax (fp32 scores and softmax, fp32 accumulation, bf16
// tensor-core operands); no [T, T] matrix is ever stored. Same semantics as
// cpu::LaunchPrefillAttention: the LAST n_new cache slots are the new tokens themselves, in order,
// and new token i attends to slots [0, kv_len - n_new + i] (earlier slots may be a compacted subset
// of the past — causality is by slot order).
#ifndef XKV_KERNELS_CUDA_PREFILL_ATTENTION_CUH_
#define XKV_KERNELS_CUDA_PREFILL_ATTENTION_CUH_

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/cpu/attention.h"
#include "kernels/cuda/paged_kv.cuh"

namespace xkv::cuda {

// n_heads, n_kv_heads (divides n_heads), head_dim, scale. round_probs_f16 is not supported on
// the device (UNIMPLEMENTED).
using AttentionShape = ::xkv::cpu::AttentionShape;

// One sequence (a prompt or a prompt chunk).
// q:           device fp32 [n_new, n_heads, head_dim], contiguous, post-RoPE.
// cache:       the layer's paged K/V (bf16); cache.n_kv_heads / head_dim must match `shape`.
// block_table: device int32 [ceil(kv_len / 16)]: the sequence's blocks in slot order.
// kv_len:      cache slots of the sequence including the n_new new ones (>= n_new >= 1), all
//              already written (LaunchKvCacheWrite).
// head_kv_lens (optional): device int32 [n_kv_heads], each KV head's own kv_len (>= n_new, <=
//              kv_len; the last n_new slots of every head are the new tokens): KV heads of one
//              layer holding different token counts (per-head tables, paged_kv.cuh).
// Per-KV-head tables (cache.head_table_stride > 0): block_table holds n_kv_heads tables.
// out:         device fp32 or bf16 [n_new, n_heads, head_dim], token rows `out_stride` apart
//              (>= n_heads * head_dim); must not overlap q.
// head_dim 64 or 128 (UNIMPLEMENTED otherwise); q, cache.k and cache.v 16-byte aligned; n_new
// <= 4M and kv_len <= 2^30 (INVALID_ARGUMENT otherwise). Tensor-core kernel (mma.sync bf16,
// FlashAttention-2 style): Q * scale and the probabilities are rounded to bf16 for the MMAs, so
// outputs differ from the fp32 CPU reference by up to ~2^-8 of max|out| (tests/gpu/attention_test).
absl::Status LaunchPrefillAttention(const AttentionShape& shape, const float* q, int64_t n_new,
                                    const PagedKvLayer& cache, const int32_t* block_table,
                                    int64_t kv_len, float* out, int64_t out_stride,
                                    cudaStream_t stream, const int32_t* head_kv_lens = nullptr);
absl::Status LaunchPrefillAttention(const AttentionShape& shape, const float* q, int64_t n_new,
                                    const PagedKvLayer& cache, const int32_t* block_table,
                                    int64_t kv_len, __nv_bfloat16* out, int64_t out_stride,
                                    cudaStream_t stream, const int32_t* head_kv_lens = nullptr);

// Shared argument checks of the attention launchers (prefill and decode).
absl::Status CheckAttentionShape(const AttentionShape& shape, const PagedKvLayer& cache,
                                 const char* who);

}  // namespace xkv::cuda

#endif  // XKV_KERNELS_CUDA_PREFILL_ATTENTION_CUH_
