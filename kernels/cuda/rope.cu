#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/rope.cuh"

namespace xkv::cuda {
namespace {

constexpr int kThreads = 128;

// grid.x = token. positions int64 [n]; cos_sin fp32 [n, rope_dims/2, 2].
__global__ void RopeCacheKernel(const int64_t* __restrict__ positions, int rope_dims, double base,
                                float freq_scale, const float* __restrict__ freq_factors,
                                float* __restrict__ cos_sin) {
  const int64_t t = blockIdx.x;
  const int64_t pos = positions[t];
  const int half = rope_dims / 2;
  float* cs = cos_sin + t * rope_dims;
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    if (pos < 0) {
      cs[2 * i] = cs[2 * i + 1] = __int_as_float(0x7fc00000);
      continue;
    }
    double inv_freq = pow(base, -2.0 * i / static_cast<double>(rope_dims));
    if (freq_factors != nullptr) inv_freq /= freq_factors[i];
    inv_freq *= freq_scale;
    const double theta = static_cast<double>(pos) * inv_freq;
    double s, c;
    sincos(theta, &s, &c);
    cs[2 * i] = static_cast<float>(c);
    cs[2 * i + 1] = static_cast<float>(s);
  }
}

// grid.x = token; threads loop over (head, pair). x/out fp32 rows of n_heads * head_dim.
__global__ void RopeKernel(const float* x, int64_t x_stride, int n_heads, int head_dim,
                           int rope_dims, bool neox, const float* __restrict__ cos_sin, float* out,
                           int64_t out_stride) {
  const int64_t t = blockIdx.x;
  const int half = rope_dims / 2;
  const float* cs = cos_sin + t * rope_dims;
  const float* xr = x + t * x_stride;
  float* yr = out + t * out_stride;
  const int step_first = neox ? 1 : 2;
  const int second = neox ? half : 1;
  for (int w = threadIdx.x; w < n_heads * half; w += blockDim.x) {
    const int h = w / half, i = w % half;
    const int i0 = h * head_dim + i * step_first;
    const int i1 = i0 + second;
    const float a = xr[i0], b = xr[i1];
    const float c = cs[2 * i], s = cs[2 * i + 1];
    yr[i0] = a * c - b * s;
    yr[i1] = a * s + b * c;
  }
  if (xr != yr && rope_dims < head_dim) {
    const int rest = head_dim - rope_dims;
    for (int w = threadIdx.x; w < n_heads * rest; w += blockDim.x) {
      const int idx = (w / rest) * head_dim + rope_dims + w % rest;
      yr[idx] = xr[idx];
    }
  }
}

}  // namespace

absl::Status LaunchRopeCache(const int64_t* positions, int64_t n_tokens, int rope_dims, float base,
                             float* cos_sin, cudaStream_t stream, const RopeScaling& scaling) {
  if (n_tokens < 0 || n_tokens > 0x7fffffff || rope_dims <= 0 || rope_dims % 2 != 0 ||
      !(base > 0.f)) {
    return absl::InvalidArgumentError(absl::StrCat("cuda rope_cache: bad arguments n=", n_tokens,
                                                   " rope_dims=", rope_dims, " base=", base));
  }
  if (n_tokens == 0) return absl::OkStatus();
  if (positions == nullptr || cos_sin == nullptr) {
    return absl::InvalidArgumentError("cuda rope_cache: null pointer");
  }
  RopeCacheKernel<<<static_cast<unsigned>(n_tokens), kThreads, 0, stream>>>(
      positions, rope_dims, static_cast<double>(base), scaling.freq_scale, scaling.freq_factors,
      cos_sin);
  CUDA_RETURN_IF_LAUNCH_ERROR();
  return absl::OkStatus();
}

absl::Status LaunchRope(const float* x, int64_t x_stride, int64_t n_tokens, int n_heads,
                        int head_dim, int rope_dims, RopeMode mode, const float* cos_sin,
                        float* out, int64_t out_stride, cudaStream_t stream) {
  const int64_t row = static_cast<int64_t>(n_heads) * head_dim;
  if (n_tokens < 0 || n_tokens > 0x7fffffff || n_heads <= 0 || head_dim <= 0 || rope_dims <= 0 ||
      rope_dims % 2 != 0 || rope_dims > head_dim || x_stride < row || out_stride < row) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cuda rope: bad arguments n=", n_tokens, " heads=", n_heads, " head_dim=", head_dim,
        " rope_dims=", rope_dims, " strides=", x_stride, "/", out_stride));
  }
  if (n_tokens == 0) return absl::OkStatus();
  if (x == nullptr || cos_sin == nullptr || out == nullptr) {
    return absl::InvalidArgumentError("cuda rope: null pointer");
  }
  RopeKernel<<<static_cast<unsigned>(n_tokens), kThreads, 0, stream>>>(
      x, x_stride, n_heads, head_dim, rope_dims, mode == RopeMode::kNeox, cos_sin, out, out_stride);
  CUDA_RETURN_IF_LAUNCH_ERROR();
  return absl::OkStatus();
}

}  // namespace xkv::cuda
