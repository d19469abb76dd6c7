#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/qkv_hooks.cuh"

namespace xkv::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

// grid.x = token. The bias add over the whole row, then one warp per Q or K head.
__global__ void QkvHooksKernel(float* qkv, int64_t stride, int n_heads, int n_kv_heads,
                               int head_dim, float eps, const float* __restrict__ bias,
                               const float* __restrict__ q_norm, const float* __restrict__ k_norm) {
  float* row = qkv + blockIdx.x * stride;
  const int q_dim = n_heads * head_dim;
  const int qkv_dim = q_dim + 2 * n_kv_heads * head_dim;
  if (bias != nullptr) {
    for (int i = threadIdx.x; i < qkv_dim; i += blockDim.x) row[i] += bias[i];
    __syncthreads();
  }
  if (q_norm == nullptr) return;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int h = warp; h < n_heads + n_kv_heads; h += kWarps) {
    float* x = row + h * head_dim;  // Q heads, then the K heads right after them
    const float* gain = h < n_heads ? q_norm : k_norm;
    float sum = 0.f;
    for (int i = lane; i < head_dim; i += 32) sum += x[i] * x[i];
    sum = internal::WarpSum(sum);
    const float scale = 1.0f / sqrtf(sum / head_dim + eps);
    for (int i = lane; i < head_dim; i += 32) x[i] = x[i] * scale * gain[i];
  }
}

}  // namespace

absl::Status LaunchQkvHooks(const QkvHookShape& shape, float* qkv, int64_t stride, int64_t n_tokens,
                            const float* bias, const float* q_norm, const float* k_norm,
                            cudaStream_t stream) {
  const int64_t qkv_dim = int64_t{shape.n_heads + 2 * shape.n_kv_heads} * shape.head_dim;
  if (shape.n_heads <= 0 || shape.n_kv_heads <= 0 || shape.head_dim <= 0 || n_tokens < 0 ||
      n_tokens > 0x7fffffff || stride < qkv_dim || (q_norm == nullptr) != (k_norm == nullptr)) {
    return absl::InvalidArgumentError(
        absl::StrCat("cuda qkv_hooks: bad arguments heads=", shape.n_heads, "/", shape.n_kv_heads,
                     " head_dim=", shape.head_dim, " n=", n_tokens, " stride=", stride));
  }
  if (n_tokens == 0 || (bias == nullptr && q_norm == nullptr)) return absl::OkStatus();
  QkvHooksKernel<<<static_cast<unsigned>(n_tokens), kThreads, 0, stream>>>(
      qkv, stride, shape.n_heads, shape.n_kv_heads, shape.head_dim, shape.eps, bias, q_norm,
      k_norm);
  CUDA_RETURN_IF_LAUNCH_ERROR();
  return absl::OkStatus();
}

}  // namespace xkv::cuda
