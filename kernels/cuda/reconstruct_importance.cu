#include <cmath>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/paged_keys.cuh"
#include "kernels/cuda/reconstruct_importance.cuh"

namespace xkv::cuda {
namespace {

constexpr int kThreads = 256;
constexpr size_t kMaxSmem = 200u << 10;

struct StridedKeys {  // fp32 [n_kv_heads][head_stride]
  const float* k;
  int64_t head_stride;
  int head_dim;
  __device__ float operator()(int g, int64_t j, int d) const {
    return k[g * head_stride + j * head_dim + d];
  }
};

// grid = (R, n_heads). Row i of query head h: logits over its visible key subset (sinks, chunk,
// input keys [C, C + i]) in shared memory, softmax, then atomicMax of the chunk's probabilities
// (non-negative floats order as their int bits).
template <typename Keys>
__global__ void __launch_bounds__(kThreads)
    ReconstructKernel(const float* __restrict__ q, Keys keys, int n_heads, int group, int head_dim,
                      int64_t past_len, int64_t chunk_begin, int64_t chunk_len, int64_t sinks,
                      float scale, float* __restrict__ scores) {
  extern __shared__ float smem[];
  __shared__ float scratch[33];
  float* qs = smem;                 // [head_dim]
  float* logits = smem + head_dim;  // [sinks + chunk_len + i + 1]
  const int64_t i = blockIdx.x;
  const int h = blockIdx.y, g = h / group;
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    qs[d] = q[(i * n_heads + h) * head_dim + d];
  }
  __syncthreads();
  const int64_t visible = sinks + chunk_len + i + 1;
  float mx = -INFINITY;
  for (int64_t kk = threadIdx.x; kk < visible; kk += blockDim.x) {
    const int64_t j = kk < sinks               ? kk
                      : kk < sinks + chunk_len ? chunk_begin + (kk - sinks)
                                               : past_len + (kk - sinks - chunk_len);
    float dot = 0.f;
    for (int d = 0; d < head_dim; ++d) dot += qs[d] * keys(g, j, d);
    logits[kk] = dot * scale;
    mx = fmaxf(mx, logits[kk]);
  }
  mx = internal::BlockMax(mx, scratch);
  float sum = 0.f;
  for (int64_t kk = threadIdx.x; kk < visible; kk += blockDim.x) sum += expf(logits[kk] - mx);
  const float inv = 1.0f / internal::BlockSum(sum, scratch);
  for (int64_t c = threadIdx.x; c < chunk_len; c += blockDim.x) {
    const float p = expf(logits[sinks + c] - mx) * inv;
    atomicMax(reinterpret_cast<int*>(scores + g * chunk_len + c), __float_as_int(p));
  }
}

size_t SharedBytes(const ReconstructShape& s) {
  const int64_t sinks = s.sinks < s.chunk_begin ? s.sinks : s.chunk_begin;
  return sizeof(float) *
         static_cast<size_t>(s.head_dim + sinks + (s.chunk_end - s.chunk_begin) + s.n_queries);
}

absl::Status CheckArgs(const float* q, const ReconstructShape& s, const float* scores) {
  if (s.n_heads <= 0 || s.n_kv_heads <= 0 || s.head_dim <= 0 || s.n_heads % s.n_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("cuda reconstruct scores: n_heads (", s.n_heads,
                                                   ") must be a positive multiple of n_kv_heads (",
                                                   s.n_kv_heads, "), head_dim (", s.head_dim,
                                                   ") >= 1"));
  }
  if (s.n_queries < 1 || s.n_queries > 0x7fffffff || s.chunk_begin < 0 ||
      s.chunk_begin >= s.chunk_end || s.chunk_end > s.past_len || s.sinks < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("cuda reconstruct scores: need 1 <= n_queries (", s.n_queries,
                     ") < 2^31, 0 <= chunk_begin (", s.chunk_begin, ") < chunk_end (", s.chunk_end,
                     ") <= past_len (", s.past_len, ") and sinks >= 0 (", s.sinks, ")"));
  }
  if (SharedBytes(s) > kMaxSmem) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cuda reconstruct scores: a row's ", SharedBytes(s), " bytes of logits pass the ", kMaxSmem,
        "-byte shared memory; re-read ", "smaller chunks"));
  }
  if (q == nullptr || scores == nullptr) {
    return absl::InvalidArgumentError("cuda reconstruct scores: null q or scores pointer");
  }
  return absl::OkStatus();
}

template <typename Keys>
absl::Status Run(const float* q, Keys keys, const ReconstructShape& s, float* scores,
                 cudaStream_t stream) {
  const size_t smem = SharedBytes(s);
  CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(ReconstructKernel<Keys>,
                                            cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            static_cast<int>(smem)));
  const int64_t sinks = s.sinks < s.chunk_begin ? s.sinks : s.chunk_begin;
  ReconstructKernel<Keys>
      <<<dim3(static_cast<unsigned>(s.n_queries), s.n_heads), kThreads, smem, stream>>>(
          q, keys, s.n_heads, s.n_heads / s.n_kv_heads, s.head_dim, s.past_len, s.chunk_begin,
          s.chunk_end - s.chunk_begin, sinks, 1.0f / std::sqrt(static_cast<float>(s.head_dim)),
          scores);
  CUDA_RETURN_IF_LAUNCH_ERROR();
  return absl::OkStatus();
}

}  // namespace

absl::Status LaunchReconstructScores(const float* q, const float* k, int64_t k_head_stride,
                                     const ReconstructShape& shape, float* scores,
                                     cudaStream_t stream) {
  if (absl::Status st = CheckArgs(q, shape, scores); !st.ok()) return st;
  if (k == nullptr || k_head_stride < (shape.past_len + shape.n_queries) * shape.head_dim) {
    return absl::InvalidArgumentError(
        absl::StrCat("cuda reconstruct scores: null k or k_head_stride ", k_head_stride,
                     " below (past_len + n_queries) * head_dim"));
  }
  return Run(q, StridedKeys{k, k_head_stride, shape.head_dim}, shape, scores, stream);
}

absl::Status LaunchReconstructScoresPaged(const float* q, const PagedKvLayer& cache,
                                          const int32_t* block_table, const ReconstructShape& shape,
                                          float* scores, cudaStream_t stream) {
  if (absl::Status st = CheckArgs(q, shape, scores); !st.ok()) return st;
  if (absl::Status st = CheckPagedKvLayer(cache, "cuda reconstruct scores"); !st.ok()) return st;
  if (cache.n_kv_heads != shape.n_kv_heads || cache.head_dim != shape.head_dim ||
      block_table == nullptr ||
      internal::CeilDiv(shape.past_len + shape.n_queries, kKvBlockTokens) > MaxTableBlocks(cache)) {
    return absl::InvalidArgumentError("cuda reconstruct scores: cache does not match the shape");
  }
  return Run(q,
             internal::PagedKeys{cache.k, block_table, cache.n_kv_heads, cache.head_dim,
                                 cache.head_table_stride},
             shape, scores, stream);
}

}  // namespace xkv::cuda
