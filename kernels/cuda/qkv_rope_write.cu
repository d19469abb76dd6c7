#include <algorithm>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/paged_keys.cuh"
#include "kernels/cuda/qkv_rope_write.cuh"

namespace xkv::cuda {
namespace {

// Up to one thread per Q pair (or K/V element), so a decode token's row takes one or two
// memory round trips rather than a loop of them.
constexpr int kMinThreads = 128, kMaxThreads = 1024;

// Rotates pair (i0, i1) of a head row as RopeKernel does.
__device__ __forceinline__ float2 Rotate(float a, float b, float c, float s) {
  return make_float2(a * c - b * s, a * s + b * c);
}

// grid.x = token. Threads loop over Q's (head, pair)s, then K's, then V's elements.
__global__ void __launch_bounds__(kMaxThreads)
    QkvRopeWriteKernel(const float* __restrict__ qkv, int64_t qkv_stride, int n_heads,
                       int n_kv_heads, int head_dim, int rope_dims, bool neox,
                       const float* __restrict__ cos_sin, float* __restrict__ q_out,
                       int64_t q_stride, const int64_t* __restrict__ slot_mapping,
                       int64_t num_blocks, int64_t head_table_stride,
                       __nv_bfloat16* __restrict__ kc, __nv_bfloat16* __restrict__ vc) {
  internal::LaunchDependents();
  internal::GridDependencyWait();
  const int64_t t = blockIdx.x;
  const int half = rope_dims / 2, rest = head_dim - rope_dims;
  const int step_first = neox ? 1 : 2, second = neox ? half : 1;
  const float* cs = cos_sin + t * rope_dims;
  const float* xq = qkv + t * qkv_stride;
  float* yq = q_out + t * q_stride;
  for (int w = threadIdx.x; w < n_heads * half; w += blockDim.x) {
    const int h = w / half, i = w % half;
    const int i0 = h * head_dim + i * step_first, i1 = i0 + second;
    const float2 r = Rotate(xq[i0], xq[i1], cs[2 * i], cs[2 * i + 1]);
    yq[i0] = r.x;
    yq[i1] = r.y;
  }
  for (int w = threadIdx.x; w < n_heads * rest; w += blockDim.x) {
    const int idx = (w / rest) * head_dim + rope_dims + w % rest;
    yq[idx] = xq[idx];
  }
  const float* xk = xq + static_cast<int64_t>(n_heads) * head_dim;
  const float* xv = xk + static_cast<int64_t>(n_kv_heads) * head_dim;
  // Head g's destination row (paged_keys.cuh: either table layout); -1: not written.
  auto head_slot = [&](int g) {
    return internal::HeadSlotOf(slot_mapping, head_table_stride, n_kv_heads, num_blocks, t, g);
  };
  auto dst = [&](int64_t hs, int d) { return hs * head_dim + d; };
  for (int w = threadIdx.x; w < n_kv_heads * half; w += blockDim.x) {
    const int g = w / half, i = w % half;
    const int64_t hs = head_slot(g);
    if (hs < 0) continue;
    const int d0 = i * step_first, d1 = d0 + second;
    const float2 r = Rotate(xk[g * head_dim + d0], xk[g * head_dim + d1], cs[2 * i], cs[2 * i + 1]);
    kc[dst(hs, d0)] = __float2bfloat16_rn(r.x);
    kc[dst(hs, d1)] = __float2bfloat16_rn(r.y);
  }
  for (int w = threadIdx.x; w < n_kv_heads * rest; w += blockDim.x) {
    const int g = w / rest, d = rope_dims + w % rest;
    const int64_t hs = head_slot(g);
    if (hs >= 0) kc[dst(hs, d)] = __float2bfloat16_rn(xk[g * head_dim + d]);
  }
  for (int w = threadIdx.x; w < n_kv_heads * head_dim; w += blockDim.x) {
    const int64_t hs = head_slot(w / head_dim);
    if (hs >= 0) vc[dst(hs, w % head_dim)] = __float2bfloat16_rn(xv[w]);
  }
}

}  // namespace

absl::Status LaunchQkvRopeWrite(const float* qkv, int64_t qkv_stride, int64_t n_tokens, int n_heads,
                                int rope_dims, RopeMode mode, const float* cos_sin, float* q_out,
                                int64_t q_stride, const int64_t* slot_mapping,
                                const PagedKvLayer& cache, bool pdl, cudaStream_t stream) {
  if (absl::Status st = CheckPagedKvLayer(cache, "cuda qkv_rope_write"); !st.ok()) return st;
  const int64_t q_dim = static_cast<int64_t>(n_heads) * cache.head_dim;
  const int64_t kv_dim = static_cast<int64_t>(cache.n_kv_heads) * cache.head_dim;
  if (n_tokens < 0 || n_tokens > 0x7fffffff || n_heads <= 0 || rope_dims <= 0 ||
      rope_dims % 2 != 0 || rope_dims > cache.head_dim || qkv_stride < q_dim + 2 * kv_dim ||
      q_stride < q_dim) {
    return absl::InvalidArgumentError(
        absl::StrCat("cuda qkv_rope_write: bad arguments n=", n_tokens, " heads=", n_heads, "/",
                     cache.n_kv_heads, " head_dim=", cache.head_dim, " rope_dims=", rope_dims,
                     " strides=", qkv_stride, "/", q_stride));
  }
  if (n_tokens == 0) return absl::OkStatus();
  if (qkv == nullptr || cos_sin == nullptr || q_out == nullptr || slot_mapping == nullptr) {
    return absl::InvalidArgumentError("cuda qkv_rope_write: null pointer");
  }
  const int64_t widest = std::max<int64_t>(int64_t{n_heads} * (rope_dims / 2), kv_dim);
  const int64_t threads =
      std::clamp<int64_t>(internal::CeilDiv(widest, 32) * 32, kMinThreads, kMaxThreads);
  CUDA_RETURN_IF_ERROR(internal::LaunchKernel(
      pdl, QkvRopeWriteKernel, dim3(static_cast<unsigned>(n_tokens)),
      dim3(static_cast<unsigned>(threads)), 0, stream, qkv, qkv_stride, n_heads, cache.n_kv_heads,
      cache.head_dim, rope_dims, mode == RopeMode::kNeox, cos_sin, q_out, q_stride, slot_mapping,
      cache.num_blocks, cache.head_table_stride, cache.k, cache.v));
  return absl::OkStatus();
}

}  // namespace xkv::cuda
