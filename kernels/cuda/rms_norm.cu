#include <algorithm>

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
  internal::LaunchDependents();
  internal::GridDependencyWait();
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

// Rows of up to kVecMaxPerThread * 4 * 1024 floats with dim % 4 == 0: every thread loads its
// float4s at once and keeps them in registers (one memory round trip per row instead of a loop
// of dependent ones: a decode step's single row was latency-bound in RmsNormKernel).
constexpr int kVecMaxPerThread = 4;
constexpr int kVecMaxThreads = 1024;

template <typename OutT>
__global__ void __launch_bounds__(kVecMaxThreads)
    RmsNormVecKernel(const float* x, const float* __restrict__ weight, int64_t dim, float eps,
                     OutT* out) {
  __shared__ float scratch[33];
  internal::LaunchDependents();
  internal::GridDependencyWait();
  const int64_t n4 = dim / 4;
  const float4* xr = reinterpret_cast<const float4*>(x + blockIdx.x * dim);
  const float4* w4 = reinterpret_cast<const float4*>(weight);
  OutT* yr = out + blockIdx.x * dim;
  float4 v[kVecMaxPerThread];
  float sum = 0.f;
#pragma unroll
  for (int j = 0; j < kVecMaxPerThread; ++j) {
    const int64_t i = threadIdx.x + static_cast<int64_t>(j) * blockDim.x;
    v[j] = i < n4 ? xr[i] : make_float4(0.f, 0.f, 0.f, 0.f);
  }
#pragma unroll
  for (int j = 0; j < kVecMaxPerThread; ++j) {
    sum += v[j].x * v[j].x + v[j].y * v[j].y + v[j].z * v[j].z + v[j].w * v[j].w;
  }
  sum = internal::BlockSum(sum, scratch);  // ends synchronised: in-place writes are safe after
  const float scale = rsqrtf(sum / static_cast<float>(dim) + eps);
#pragma unroll
  for (int j = 0; j < kVecMaxPerThread; ++j) {
    const int64_t i = threadIdx.x + static_cast<int64_t>(j) * blockDim.x;
    if (i >= n4) break;
    const float4 g = w4[i];
    yr[4 * i] = FromFloat<OutT>((v[j].x * scale) * g.x);
    yr[4 * i + 1] = FromFloat<OutT>((v[j].y * scale) * g.y);
    yr[4 * i + 2] = FromFloat<OutT>((v[j].z * scale) * g.z);
    yr[4 * i + 3] = FromFloat<OutT>((v[j].w * scale) * g.w);
  }
}

template <typename OutT>
absl::Status RmsNorm(const float* x, const float* weight, int64_t rows, int64_t dim, float eps,
                     OutT* out, bool pdl, cudaStream_t stream) {
  if (rows < 0 || rows > 0x7fffffff || dim <= 0 || !(eps >= 0.f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("cuda rms_norm: bad sizes rows=", rows, " dim=", dim, " eps=", eps));
  }
  if (rows == 0) return absl::OkStatus();
  if (x == nullptr || weight == nullptr || out == nullptr) {
    return absl::InvalidArgumentError("cuda rms_norm: null pointer");
  }
  const int64_t n4 = dim / 4;
  const bool aligned =
      (reinterpret_cast<uintptr_t>(x) | reinterpret_cast<uintptr_t>(weight)) % 16 == 0;
  if (dim % 4 == 0 && aligned && n4 <= int64_t{kVecMaxPerThread} * kVecMaxThreads) {
    const int64_t threads =
        std::min<int64_t>(kVecMaxThreads, internal::CeilDiv(n4, kVecMaxPerThread * 32) * 32);
    CUDA_RETURN_IF_ERROR(
        internal::LaunchKernel(pdl, RmsNormVecKernel<OutT>, dim3(static_cast<unsigned>(rows)),
                               dim3(static_cast<unsigned>(std::max<int64_t>(threads, 32))), 0,
                               stream, x, weight, dim, eps, out));
    return absl::OkStatus();
  }
  CUDA_RETURN_IF_ERROR(internal::LaunchKernel(pdl, RmsNormKernel<OutT>,
                                              dim3(static_cast<unsigned>(rows)), dim3(kThreads), 0,
                                              stream, x, weight, dim, eps, out));
  return absl::OkStatus();
}

}  // namespace

absl::Status LaunchRmsNorm(const float* x, const float* weight, int64_t rows, int64_t dim,
                           float eps, float* out, cudaStream_t stream, bool pdl) {
  return RmsNorm(x, weight, rows, dim, eps, out, pdl, stream);
}

absl::Status LaunchRmsNorm(const float* x, const float* weight, int64_t rows, int64_t dim,
                           float eps, __nv_bfloat16* out, cudaStream_t stream, bool pdl) {
  return RmsNorm(x, weight, rows, dim, eps, out, pdl, stream);
}

}  // namespace xkv::cuda
