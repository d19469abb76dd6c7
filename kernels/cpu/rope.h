// Rotary position embedding (RoPE) in llama.cpp's two pairings.
//   theta(pos, i) = pos * base^(-2i / rope_dims),  i in [0, rope_dims / 2)
//   kNorm: rotates adjacent pairs (x[2i], x[2i+1])             — GGUF "llama" (ggml mode 0)
//   kNeox: rotates (x[i], x[i + rope_dims/2])                  — ggml mode 2 (NeoX / HF layout)
//   (a, b) -> (a cos - b sin, a sin + b cos); dims >= rope_dims pass through unchanged.
#ifndef XKV_KERNELS_CPU_ROPE_H_
#define XKV_KERNELS_CPU_ROPE_H_

#include <cstdint>

#include "absl/status/status.h"

namespace xkv::cpu {

enum class RopeMode { kNorm, kNeox };

// How a model scales the angles, as llama.cpp's ggml_rope_ext without YaRN:
//   theta(pos, i) = freq_scale * (pos * base^(-2i/rope_dims) / freq_factors[i]).
struct RopeScaling {
  float freq_scale = 1.f;               // 1 / linear scaling factor
  const float* freq_factors = nullptr;  // fp32 [rope_dims / 2] (rope_freqs.weight), or null = 1
};

// Precomputes cos/sin per token: theta in double (pos * base^(-2i/rope_dims)), rounded once.
// positions: int64 [n_tokens], each >= 0 (logical token positions, not cache slots).
// cos_sin:   fp32 [n_tokens, rope_dims / 2, 2] = (cos, sin) pairs.
absl::Status LaunchRopeCache(const int64_t* positions, int64_t n_tokens, int rope_dims, float base,
                             float* cos_sin, const RopeScaling& scaling = {});

// Applies RoPE to every head of every token.
// x:       fp32 [n_tokens, n_heads, head_dim]; token rows `x_stride` elements apart
//          (>= n_heads * head_dim), heads contiguous inside a row.
// cos_sin: fp32 [n_tokens, rope_dims / 2, 2] from LaunchRopeCache.
// out:     fp32 [n_tokens, n_heads, head_dim], rows `out_stride` apart; may alias x exactly.
// rope_dims is even and <= head_dim.
absl::Status LaunchRope(const float* x, int64_t x_stride, int64_t n_tokens, int n_heads,
                        int head_dim, int rope_dims, RopeMode mode, const float* cos_sin,
                        float* out, int64_t out_stride);

}  // namespace xkv::cpu

#endif  // XKV_KERNELS_CPU_ROPE_H_
