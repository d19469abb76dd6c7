#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/swiglu.cuh"

namespace xkv::cuda {
namespace {

constexpr int kThreads = 256;

// grid = (rows, column chunks). gate/up fp32, out OutT; strides in elements.
template <typename OutT>
__global__ void SwiGluKernel(const float* gate, int64_t gate_stride, const float* up,
                             int64_t up_stride, int64_t dim, OutT* out, int64_t out_stride) {
  const int64_t r = blockIdx.x;
  const int64_t i = blockIdx.y * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= dim) return;
  const float g = gate[r * gate_stride + i];
  const float u = up[r * up_stride + i];
  out[r * out_stride + i] = internal::FromFloat<OutT>(g / (1.0f + expf(-g)) * u);
}

template <typename OutT>
absl::Status SwiGlu(const float* gate, int64_t gate_stride, const float* up, int64_t up_stride,
                    int64_t rows, int64_t dim, OutT* out, int64_t out_stride, cudaStream_t stream) {
  if (rows < 0 || rows > 0x7fffffff || dim <= 0 || dim > 65535LL * kThreads || gate_stride < dim ||
      up_stride < dim || out_stride < dim) {
    return absl::InvalidArgumentError(absl::StrCat("cuda swiglu: bad sizes rows=", rows,
                                                   " dim=", dim, " strides=", gate_stride, "/",
                                                   up_stride, "/", out_stride));
  }
  if (rows == 0) return absl::OkStatus();
  if (gate == nullptr || up == nullptr || out == nullptr) {
    return absl::InvalidArgumentError("cuda swiglu: null pointer");
  }
  const dim3 grid(static_cast<unsigned>(rows),
                  static_cast<unsigned>(internal::CeilDiv(dim, kThreads)));
  SwiGluKernel<<<grid, kThreads, 0, stream>>>(gate, gate_stride, up, up_stride, dim, out,
                                              out_stride);
  CUDA_RETURN_IF_LAUNCH_ERROR();
  return absl::OkStatus();
}

}  // namespace

absl::Status LaunchSwiGlu(const float* gate, int64_t gate_stride, const float* up,
                          int64_t up_stride, int64_t rows, int64_t dim, float* out,
                          int64_t out_stride, cudaStream_t stream) {
  return SwiGlu(gate, gate_stride, up, up_stride, rows, dim, out, out_stride, stream);
}

absl::Status LaunchSwiGlu(const float* gate, int64_t gate_stride, const float* up,
                          int64_t up_stride, int64_t rows, int64_t dim, __nv_bfloat16* out,
                          int64_t out_stride, cudaStream_t stream) {
  return SwiGlu(gate, gate_stride, up, up_stride, rows, dim, out, out_stride, stream);
}

}  // namespace xkv::cuda
