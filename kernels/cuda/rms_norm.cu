#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/rms_norm.cuh"

namespace xkv::cuda {
namespace {

using internal::FromFloat;

constexpr int kThreads = 256;

// grid.x = row. x fp32 [rows, dim]; weight fp32 [dim]; out OutT [rows, dim].
template <typename OutT>
__global__ void RmsNormKernel(const float* x, const float* __restrict__ weight, int64_t dim,
                              float eps, OutT* out) {
  __shared__ float scratch[33];
  const float* xr = x + blockIdx.x * dim;
  OutT* yr = out + blockIdx.x * dim;
  float sum = 0.f;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) sum += xr[i] * xr[i];
  sum = internal::BlockSum(sum, scratch);  // ends synchronised: in-place writes are safe after
  const float scale = rsqrtf(sum / static_cast<float>(dim) + eps);
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    yr[i] = FromFloat<OutT>((xr[i] * scale) * weight[i]);
  }
}

template <typename OutT>
absl::Status RmsNorm(const float* x, const float* weight, int64_t rows, int64_t dim, float eps,
                     OutT* out, cudaStream_t stream) {
  if (rows < 0 || rows > 0x7fffffff || dim <= 0 || !(eps >= 0.f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("cuda rms_norm: bad sizes rows=", rows, " dim=", dim, " eps=", eps));
  }
  if (rows == 0) return absl::OkStatus();
  if (x == nullptr || weight == nullptr || out == nullptr) {
    return absl::InvalidArgumentError("cuda rms_norm: null pointer");
  }
  RmsNormKernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(x, weight, dim, eps, out);
  CUDA_RETURN_IF_LAUNCH_ERROR();
  return absl::OkStatus();
}

}  // namespace

absl::Status LaunchRmsNorm(const float* x, const float* weight, int64_t rows, int64_t dim,
                           float eps, float* out, cudaStream_t stream) {
  return RmsNorm(x, weight, rows, dim, eps, out, stream);
}

absl::Status LaunchRmsNorm(const float* x, const float* weight, int64_t rows, int64_t dim,
                           float eps, __nv_bfloat16* out, cudaStream_t stream) {
  return RmsNorm(x, weight, rows, dim, eps, out, stream);
}

}  // namespace xkv::cuda
