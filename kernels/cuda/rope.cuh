// Rotary position embedding on the device, llama.cpp's two pairings (see kernels/cpu/rope.h):
//   theta(pos, i) = pos * base^(-2i / rope_dims),  i in [0, rope_dims / 2)
//   kNorm: rotates (x[2i], x[2i+1]); kNeox: rotates (x[i], x[i + rope_dims/2]).
#ifndef XKV_KERNELS_CUDA_ROPE_CUH_
#define XKV_KERNELS_CUDA_ROPE_CUH_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/cpu/rope.h"

namespace xkv::cuda {

using RopeMode = ::xkv::cpu::RopeMode;
using RopeScaling = ::xkv::cpu::RopeScaling;

// Precomputes cos/sin per token in double (as the CPU reference), rounded once to fp32.
// positions: device int64 [n_tokens], logical positions (prompt length + generated so far for
//            decode tokens — never the compacted cache length). A negative position (which the
//            host cannot check without a sync) yields NaN pairs.
// cos_sin:   device fp32 [n_tokens, rope_dims / 2, 2] = (cos, sin) pairs.
// scaling:   as the CPU reference's; its freq_factors (if any) is a device pointer.
absl::Status LaunchRopeCache(const int64_t* positions, int64_t n_tokens, int rope_dims, float base,
                             float* cos_sin, cudaStream_t stream, const RopeScaling& scaling = {});

// x:       device fp32 [n_tokens, n_heads, head_dim]; token rows `x_stride` elements apart
//          (>= n_heads * head_dim), heads contiguous inside a row (e.g. the Q or K slice of a
//          fused QKV GEMM output).
// cos_sin: device fp32 [n_tokens, rope_dims / 2, 2] from LaunchRopeCache.
// out:     device fp32 [n_tokens, n_heads, head_dim], rows `out_stride` apart; may alias x exactly.
// rope_dims is even and <= head_dim; dims >= rope_dims pass through.
absl::Status LaunchRope(const float* x, int64_t x_stride, int64_t n_tokens, int n_heads,
                        int head_dim, int rope_dims, RopeMode mode, const float* cos_sin,
                        float* out, int64_t out_stride, cudaStream_t stream);

}  // namespace xkv::cuda

#endif  // XKV_KERNELS_CUDA_ROPE_CUH_
