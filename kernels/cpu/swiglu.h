// SwiGLU activation: out = silu(gate) * up, silu(x) = x / (1 + exp(-x)).
#ifndef XKV_KERNELS_CPU_SWIGLU_H_
#define XKV_KERNELS_CPU_SWIGLU_H_

#include <cstdint>

#include "absl/status/status.h"

namespace xkv::cpu {

// gate: fp32 [rows, dim] with row stride `gate_stride` (elements, >= dim).
// up:   fp32 [rows, dim] with row stride `up_stride`.
// out:  fp32 [rows, dim] with row stride `out_stride`; may alias gate or up exactly.
// Lets a fused [rows, 2*dim] gate|up GEMM output be consumed in place.
absl::Status LaunchSwiGlu(const float* gate, int64_t gate_stride, const float* up,
                          int64_t up_stride, int64_t rows, int64_t dim, float* out,
                          int64_t out_stride);

}  // namespace xkv::cpu

#endif  // XKV_KERNELS_CPU_SWIGLU_H_
