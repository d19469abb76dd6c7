#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/row_convert.cuh"

namespace xkv::cuda {
namespace {

constexpr int kThreads = 256;

template <typename In, typename Out>
__global__ void ConvertKernel(const In* __restrict__ in, int64_t n, Out* __restrict__ out) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if constexpr (sizeof(Out) == 2) {
      out[i] = __float2bfloat16(in[i]);
    } else {
      out[i] = __bfloat162float(in[i]);
    }
  }
}

template <typename In, typename Out>
absl::Status Launch(const In* in, int64_t n, Out* out, cudaStream_t stream) {
  if (n < 0) return absl::InvalidArgumentError(absl::StrCat("cuda row convert: n=", n));
  if (n == 0) return absl::OkStatus();
  if (in == nullptr || out == nullptr) {
    return absl::InvalidArgumentError("cuda row convert: null pointer");
  }
  const int64_t blocks = std::min<int64_t>((n + kThreads - 1) / kThreads, 65535);
  ConvertKernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(in, n, out);
  CUDA_RETURN_IF_LAUNCH_ERROR();
  return absl::OkStatus();
}

}  // namespace

absl::Status LaunchF32ToBf16(const float* in, int64_t n, __nv_bfloat16* out, cudaStream_t stream) {
  return Launch(in, n, out, stream);
}

absl::Status LaunchBf16ToF32(const __nv_bfloat16* in, int64_t n, float* out, cudaStream_t stream) {
  return Launch(in, n, out, stream);
}

}  // namespace xkv::cuda
