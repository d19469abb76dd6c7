// Causal multi-head attention with grouped KV heads (GQA) over a per-layer KV cache, fp32.
// Query head h reads KV head h / (n_heads / n_kv_heads). Scores are fp32, softmax in fp32.
//
// Cache view: K (and V) of KV head g starts at `k + g * kv_head_stride` and holds `kv_len` rows of
// `head_dim` floats (post-RoPE keys), i.e. layout [n_kv_heads][capacity][head_dim] with
// kv_head_stride = capacity * head_dim. The LAST n_new rows are the new tokens themselves, in
// order; new token i attends to cache rows [0, kv_len - n_new + i] (earlier rows may be a compacted
// subset of the past — causality is by slot order, never by position).
#ifndef XKV_KERNELS_CPU_ATTENTION_H_
#define XKV_KERNELS_CPU_ATTENTION_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/cpu/parallel_for.h"

namespace xkv::cpu {

struct AttentionShape {
  int n_heads = 0;     // query heads
  int n_kv_heads = 0;  // KV heads; divides n_heads
  int head_dim = 0;
  float scale = 0.f;  // usually 1/sqrt(head_dim)
  // llama.cpp numerics: the normalised probabilities are rounded to fp16 before P·V, as ggml does
  // when V is an fp16 cache.
  bool round_probs_f16 = false;
  // Numerics::kBf16 (the CUDA engine's CPU reference): LaunchPrefillAttention reproduces the
  // rounding points of the tensor-core flash prefill kernel, FlashPrefillKernel in
  // kernels/cuda/prefill_attention.cu: K and V read as bf16; Q rounded to bf16 after scaling by
  // scale * log2(e); an online softmax in the log2 domain (exp2) over 64-key tiles aligned to
  // cache slot 0, rescaling O and the row sum by 2^(old max - new max) per tile; the row sum
  // accumulated from the fp32 probabilities, which are rounded to bf16 for P·V; O / sum at the end.
  // Only fp32 summation order differs from the kernel. LaunchDecodeAttention ignores it: the CUDA
  // decode kernel (kernels/cuda/decode_attention.cu) keeps Q, scores and probabilities in fp32,
  // so the fp32 path already has its rounding points. Exclusive with round_probs_f16. The CUDA
  // launchers (which share this struct) ignore it: their kernels are what it emulates.
  bool emulate_bf16_flash = false;
};

// Prefill (any n_new >= 1) for one sequence. Blocks queries and runs QKᵀ and PV as GEMMs over the
// visible key prefix, so long prompts run at GEMM speed; the query heads sharing a KV head are
// stacked into one GEMM.
// q:   fp32 [n_new, n_heads, head_dim], contiguous (post-RoPE).
// k,v: cache view described above, kv_len >= n_new.
// out: fp32 [n_new, n_heads, head_dim], token rows `out_stride` apart (>= n_heads * head_dim).
// pool: optional, spreads the softmax rows (GEMMs use OpenBLAS's threads).
// With shape.emulate_bf16_flash every n_new (1 included, as the CUDA prefill launcher does) runs
// the flash-kernel emulation described above, rows spread over `pool`.
absl::Status LaunchPrefillAttention(const AttentionShape& shape, const float* q, int64_t n_new,
                                    const float* k, const float* v, int64_t kv_head_stride,
                                    int64_t kv_len, float* out, int64_t out_stride,
                                    ThreadPool* pool);

// Decode: one new token (already appended as the last cache row) attends to all kv_len rows.
// q:   fp32 [n_heads, head_dim].
// out: fp32 [n_heads, head_dim].
// pool: optional, spreads query heads.
absl::Status LaunchDecodeAttention(const AttentionShape& shape, const float* q, const float* k,
                                   const float* v, int64_t kv_head_stride, int64_t kv_len,
                                   float* out, ThreadPool* pool);

}  // namespace xkv::cpu

#endif  // XKV_KERNELS_CPU_ATTENTION_H_
