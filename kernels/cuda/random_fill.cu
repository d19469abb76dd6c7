#include <algorithm>

#include "kernels/cpu/random_fill.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/random_fill.cuh"

namespace xkv::cuda {
namespace {

__global__ void RandomFillKernel(uint64_t seed, int64_t n, float step,
                                 __nv_bfloat16* __restrict__ out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const float v = __fmul_rn(static_cast<float>(RandomFillInt(seed, i)), step);
    out[i] = __float2bfloat16_rn(v);
  }
}

__global__ void FillConstantKernel(float value, int64_t n, float* __restrict__ out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    out[i] = value;
  }
}

unsigned Blocks(int64_t n) {
  return static_cast<unsigned>(std::clamp<int64_t>((n + 255) / 256, 1, 65536));
}

}  // namespace

absl::Status LaunchRandomFill(uint64_t seed, int64_t n, float step, __nv_bfloat16* out,
                              cudaStream_t stream) {
  if (n < 0 || (n > 0 && out == nullptr)) {
    return absl::InvalidArgumentError("cuda random_fill: bad arguments");
  }
  if (n == 0) return absl::OkStatus();
  RandomFillKernel<<<Blocks(n), 256, 0, stream>>>(seed, n, step, out);
  CUDA_RETURN_IF_LAUNCH_ERROR();
  return absl::OkStatus();
}

absl::Status LaunchFillConstant(float value, int64_t n, float* out, cudaStream_t stream) {
  if (n < 0 || (n > 0 && out == nullptr)) {
    return absl::InvalidArgumentError("cuda fill_constant: bad arguments");
  }
  if (n == 0) return absl::OkStatus();
  FillConstantKernel<<<Blocks(n), 256, 0, stream>>>(value, n, out);
  CUDA_RETURN_IF_LAUNCH_ERROR();
  return absl::OkStatus();
}

}  // namespace xkv::cuda
