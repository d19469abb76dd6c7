#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/paged_keys.cuh"
#include "kernels/cuda/paged_kv.cuh"

namespace xkv::cuda {
namespace {

constexpr int kThreads = 128;

// grid.x = token; threads over (kv_head, dim). k/v fp32 rows; caches bf16 paged.
__global__ void KvCacheWriteKernel(const float* __restrict__ k, int64_t k_stride,
                                   const float* __restrict__ v, int64_t v_stride,
                                   const int64_t* __restrict__ slot_mapping, int64_t num_blocks,
                                   int64_t head_table_stride, int n_kv_heads, int head_dim,
                                   __nv_bfloat16* __restrict__ kc, __nv_bfloat16* __restrict__ vc) {
  const int64_t t = blockIdx.x;
  const int width = n_kv_heads * head_dim;
  for (int i = threadIdx.x; i < width; i += blockDim.x) {
    const int g = i / head_dim, d = i % head_dim;
    const int64_t hs =
        internal::HeadSlotOf(slot_mapping, head_table_stride, n_kv_heads, num_blocks, t, g);
    if (hs < 0) continue;
    const int64_t dst = hs * head_dim + d;
    kc[dst] = __float2bfloat16_rn(k[t * k_stride + i]);
    vc[dst] = __float2bfloat16_rn(v[t * v_stride + i]);
  }
}

}  // namespace

absl::Status CheckPagedKvLayer(const PagedKvLayer& c, const char* who) {
  if (c.k == nullptr || c.v == nullptr || c.num_blocks <= 0 || c.n_kv_heads <= 0 ||
      c.head_dim <= 0 || c.head_dim % 8 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        who, ": bad paged KV cache (k/v set, num_blocks=", c.num_blocks, " n_kv_heads=",
        c.n_kv_heads, " head_dim=", c.head_dim, " must be positive, head_dim % 8 == 0)"));
  }
  return absl::OkStatus();
}

absl::Status LaunchKvCacheWrite(const float* k, int64_t k_stride, const float* v, int64_t v_stride,
                                int64_t n_tokens, const int64_t* slot_mapping,
                                const PagedKvLayer& cache, cudaStream_t stream) {
  if (absl::Status st = CheckPagedKvLayer(cache, "cuda kv_cache_write"); !st.ok()) return st;
  const int64_t row = static_cast<int64_t>(cache.n_kv_heads) * cache.head_dim;
  if (n_tokens < 0 || n_tokens > 0x7fffffff || k_stride < row || v_stride < row) {
    return absl::InvalidArgumentError(absl::StrCat("cuda kv_cache_write: bad sizes n=", n_tokens,
                                                   " strides=", k_stride, "/", v_stride));
  }
  if (n_tokens == 0) return absl::OkStatus();
  if (k == nullptr || v == nullptr || slot_mapping == nullptr) {
    return absl::InvalidArgumentError("cuda kv_cache_write: null pointer");
  }
  KvCacheWriteKernel<<<static_cast<unsigned>(n_tokens), kThreads, 0, stream>>>(
      k, k_stride, v, v_stride, slot_mapping, cache.num_blocks, cache.head_table_stride,
      cache.n_kv_heads, cache.head_dim, cache.k, cache.v);
  CUDA_RETURN_IF_LAUNCH_ERROR();
  return absl::OkStatus();
}

}  // namespace xkv::cuda
