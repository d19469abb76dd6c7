// SwiGLU on the device: out = silu(gate) * up, silu(x) = x / (1 + exp(-x)).
#ifndef XKV_KERNELS_CUDA_SWIGLU_CUH_
#define XKV_KERNELS_CUDA_SWIGLU_CUH_

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"

namespace xkv::cuda {

// gate: device fp32 [rows, dim], row stride `gate_stride` (elements, >= dim).
// up:   device fp32 [rows, dim], row stride `up_stride`.
// out:  device fp32 [rows, dim] (may alias gate or up exactly) or bf16 [rows, dim] (the
//       ffn_down GEMM input), row stride `out_stride`.
// A fused [rows, 2*dim] gate|up GEMM output is consumed with gate = buf, up = buf + dim,
// strides 2*dim.
absl::Status LaunchSwiGlu(const float* gate, int64_t gate_stride, const float* up,
                          int64_t up_stride, int64_t rows, int64_t dim, float* out,
                          int64_t out_stride, cudaStream_t stream);
absl::Status LaunchSwiGlu(const float* gate, int64_t gate_stride, const float* up,
                          int64_t up_stride, int64_t rows, int64_t dim, __nv_bfloat16* out,
                          int64_t out_stride, cudaStream_t stream);

}  // namespace xkv::cuda

#endif  // XKV_KERNELS_CUDA_SWIGLU_CUH_
