// Element-type conversion of hidden rows for device-resident hand-offs between stages: the fp32
// residual stream to bf16 for the wire (NCCL) and back. Round-to-nearest-even (__float2bfloat16).
#ifndef XKV_KERNELS_CUDA_ROW_CONVERT_CUH_
#define XKV_KERNELS_CUDA_ROW_CONVERT_CUH_

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"

namespace xkv::cuda {

// in: device fp32 [n]; out: device bf16 [n].
absl::Status LaunchF32ToBf16(const float* in, int64_t n, __nv_bfloat16* out, cudaStream_t stream);
// in: device bf16 [n]; out: device fp32 [n].
absl::Status LaunchBf16ToF32(const __nv_bfloat16* in, int64_t n, float* out, cudaStream_t stream);

}  // namespace xkv::cuda

#endif  // XKV_KERNELS_CUDA_ROW_CONVERT_CUH_
