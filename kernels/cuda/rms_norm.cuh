// RMS normalisation on the device: y = x / sqrt(mean(x^2) + eps) * weight, row by row.
#ifndef XKV_KERNELS_CUDA_RMS_NORM_CUH_
#define XKV_KERNELS_CUDA_RMS_NORM_CUH_

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"

namespace xkv::cuda {

// x:      device fp32 [rows, dim] row-major (the residual stream).
// weight: device fp32 [dim] (norm gains stay fp32: they are F32 in GGUF and tiny).
// out:    device fp32 [rows, dim] (may alias x exactly), or bf16 [rows, dim] to feed a GEMM.
// The sum of squares is accumulated in fp32 by a tree reduction (the CPU reference uses double;
// the difference is far below bf16 resolution). `pdl`: programmatic dependent launch
// (cuda_common.cuh).
absl::Status LaunchRmsNorm(const float* x, const float* weight, int64_t rows, int64_t dim,
                           float eps, float* out, cudaStream_t stream, bool pdl = false);
absl::Status LaunchRmsNorm(const float* x, const float* weight, int64_t rows, int64_t dim,
                           float eps, __nv_bfloat16* out, cudaStream_t stream, bool pdl = false);

}  // namespace xkv::cuda

#endif  // XKV_KERNELS_CUDA_RMS_NORM_CUH_
