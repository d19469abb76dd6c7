// Seeded random bf16 tensors on the device; same bits as cpu::LaunchRandomFill
// (kernels/cpu/random_fill.h), so random-weight models of real shapes are built on the GPU without
// a file or a host copy.
#ifndef XKV_KERNELS_CUDA_RANDOM_FILL_CUH_
#define XKV_KERNELS_CUDA_RANDOM_FILL_CUH_

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"

namespace xkv::cuda {

// out: device bf16 [n]. step: RandomFillStep(scale).
absl::Status LaunchRandomFill(uint64_t seed, int64_t n, float step, __nv_bfloat16* out,
                              cudaStream_t stream);
// out: device fp32 [n], every element `value` (norm gains of random models).
absl::Status LaunchFillConstant(float value, int64_t n, float* out, cudaStream_t stream);

}  // namespace xkv::cuda

#endif  // XKV_KERNELS_CUDA_RANDOM_FILL_CUH_
