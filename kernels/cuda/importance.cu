#include <cmath>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/importance.cuh"
#include "kernels/cuda/paged_keys.cuh"

namespace xkv::cuda {
namespace {

constexpr int kTile = 64;  // keys per CTA in the logits kernel
constexpr int kThreads = 256;
constexpr size_t kMaxSmem = 200u << 10;

struct ContigKeys {  // fp32 [n_kv_heads, T, head_dim]
  const float* k;
  int64_t seq_len;
  int head_dim;
  __device__ float operator()(int g, int64_t j, int d) const {
    return k[(g * seq_len + j) * head_dim + d];
  }
};

// grid = (ceil(T / 64), n_kv_heads). Rows of the CTA: the group*w (query head, window query)
// pairs of KV head g. logits fp32 [n_heads * w, T] (row h*w + i), -inf where masked.
template <typename Keys>
__global__ void __launch_bounds__(kThreads)
    LogitsKernel(const float* __restrict__ q, Keys keys, int n_heads, int group, int window,
                 int head_dim, int64_t seq_len, float scale, float* __restrict__ logits) {
  extern __shared__ float smem[];
  const int rows = group * window, ldk = head_dim + 1;
  float* qs = smem;                    // [rows][head_dim]
  float* ks = smem + rows * head_dim;  // [kTile][head_dim + 1]
  const int g = blockIdx.y;
  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * kTile;
  for (int c = threadIdx.x; c < rows * head_dim; c += blockDim.x) {
    const int r = c / head_dim, d = c % head_dim;
    const int h = g * group + r / window, i = r % window;
    qs[c] = q[(static_cast<int64_t>(i) * n_heads + h) * head_dim + d];
  }
  for (int c = threadIdx.x; c < kTile * head_dim; c += blockDim.x) {
    const int r = c / head_dim, d = c % head_dim;
    const int64_t j = j0 + r;
    ks[r * ldk + d] = j < seq_len ? keys(g, j, d) : 0.f;
  }
  __syncthreads();
  const int64_t prefix = seq_len - window;
  for (int p = threadIdx.x; p < rows * kTile; p += blockDim.x) {
    const int r = p / kTile, kk = p % kTile;
    const int64_t j = j0 + kk;
    if (j >= seq_len) continue;
    const int h = g * group + r / window, i = r % window;
    float dot = 0.f;
    for (int d = 0; d < head_dim; ++d) dot += qs[r * head_dim + d] * ks[kk * ldk + d];
    logits[(static_cast<int64_t>(h) * window + i) * seq_len + j] =
        j <= prefix + i ? dot * scale : -INFINITY;
  }
}

// grid = n_heads * w rows. stats fp32 [rows, 2] = (max, 1 / sum exp(l - max)).
__global__ void StatsKernel(const float* __restrict__ logits, int window, int64_t seq_len,
                            float* __restrict__ stats) {
  __shared__ float scratch[33];
  const int row = blockIdx.x, i = row % window;
  const int64_t visible = seq_len - window + i + 1;
  const float* l = logits + static_cast<int64_t>(row) * seq_len;
  float mx = -INFINITY;
  for (int64_t j = threadIdx.x; j < visible; j += blockDim.x) mx = fmaxf(mx, l[j]);
  mx = internal::BlockMax(mx, scratch);
  float sum = 0.f;
  for (int64_t j = threadIdx.x; j < visible; j += blockDim.x) sum += expf(l[j] - mx);
  sum = internal::BlockSum(sum, scratch);
  if (threadIdx.x == 0) {
    stats[2 * row] = mx;
    stats[2 * row + 1] = 1.0f / sum;
  }
}

// grid = (ceil(P / 256), out_heads). acc fp32 [out_heads, P]: sum (or max when reduce_max) over
// the row's query heads (in order) and window queries (in order) of the normalised probabilities.
__global__ void AccumulateKernel(const float* __restrict__ logits, const float* __restrict__ stats,
                                 int window, int64_t seq_len, int heads_per_row, bool reduce_max,
                                 float* __restrict__ acc) {
  const int64_t prefix = seq_len - window;
  const int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (j >= prefix) return;
  const int out_row = blockIdx.y;
  float sum = 0.f;
  for (int hh = 0; hh < heads_per_row; ++hh) {
    const int h = out_row * heads_per_row + hh;
    for (int i = 0; i < window; ++i) {
      const int row = h * window + i;
      const float p = expf(logits[static_cast<int64_t>(row) * seq_len + j] - stats[2 * row]) *
                      stats[2 * row + 1];
      sum = reduce_max ? fmaxf(sum, p) : sum + p;
    }
  }
  acc[out_row * prefix + j] = sum;
}

// grid = (ceil(P / 256), out_heads). 'same' average pooling with count_include_pad=True, or
// 'same' max pooling when pool_max.
__global__ void PoolKernel(const float* __restrict__ acc, int64_t prefix, int kernel, bool pool_max,
                           float* __restrict__ scores) {
  const int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (j >= prefix) return;
  const float* a = acc + blockIdx.y * prefix;
  const int r = kernel / 2;
  const int64_t lo = internal::Max64(0, j - r), hi = internal::Min64(prefix - 1, j + r);
  float sum = 0.f;
  for (int64_t t = lo; t <= hi; ++t) sum = pool_max ? fmaxf(sum, a[t]) : sum + a[t];
  scores[blockIdx.y * prefix + j] = pool_max ? sum : sum * (1.0f / static_cast<float>(kernel));
}

absl::Status CheckArgs(const float* q, const ImportanceShape& s, const ImportanceOptions& o,
                       const float* scores, void* workspace, size_t workspace_bytes) {
  if (s.n_heads <= 0 || s.n_kv_heads <= 0 || s.head_dim <= 0 || s.n_heads % s.n_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("cuda importance: bad heads ", s.n_heads, "/",
                                                   s.n_kv_heads, " head_dim ", s.head_dim));
  }
  if (o.window < 1 || o.window > s.seq_len || o.pool_kernel < 1 || o.pool_kernel % 2 == 0) {
    return absl::InvalidArgumentError(absl::StrCat("cuda importance: window ", o.window,
                                                   " (seq_len ", s.seq_len, "), pool_kernel ",
                                                   o.pool_kernel, " (odd, >= 1)"));
  }
  const int group = s.n_heads / s.n_kv_heads;
  const size_t smem = sizeof(float) * (static_cast<size_t>(group) * o.window * s.head_dim +
                                       kTile * (s.head_dim + 1));
  if (smem > kMaxSmem) {
    return absl::InvalidArgumentError(
        absl::StrCat("cuda importance: group*window*head_dim too "
                     "large for shared memory (",
                     smem, " bytes)"));
  }
  if (workspace_bytes < ImportanceWorkspaceBytes(s, o)) {
    return absl::InvalidArgumentError(absl::StrCat("cuda importance: workspace ", workspace_bytes,
                                                   " < ", ImportanceWorkspaceBytes(s, o)));
  }
  if (q == nullptr || workspace == nullptr || (scores == nullptr && s.seq_len > o.window)) {
    return absl::InvalidArgumentError("cuda importance: null pointer");
  }
  return absl::OkStatus();
}

template <typename Keys>
absl::Status Run(const float* q, Keys keys, const ImportanceShape& s, const ImportanceOptions& o,
                 float* scores, void* workspace, cudaStream_t stream) {
  const int64_t T = s.seq_len, P = T - o.window;
  if (P == 0) return absl::OkStatus();
  const int group = s.n_heads / s.n_kv_heads;
  const int rows = s.n_heads * o.window;
  float* logits = static_cast<float*>(workspace);
  float* stats = logits + static_cast<int64_t>(rows) * T;
  float* acc = stats + 2 * rows;
  const size_t smem = sizeof(float) * (static_cast<size_t>(group) * o.window * s.head_dim +
                                       kTile * (s.head_dim + 1));
  CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(
      LogitsKernel<Keys>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  LogitsKernel<Keys><<<dim3(static_cast<unsigned>(internal::CeilDiv(T, kTile)), s.n_kv_heads),
                       kThreads, smem, stream>>>(q, keys, s.n_heads, group, o.window, s.head_dim, T,
                                                 1.0f / std::sqrt(static_cast<float>(s.head_dim)),
                                                 logits);
  CUDA_RETURN_IF_LAUNCH_ERROR();
  StatsKernel<<<rows, kThreads, 0, stream>>>(logits, o.window, T, stats);
  CUDA_RETURN_IF_LAUNCH_ERROR();
  const int out_heads = ImportanceHeads(s, o.granularity);
  const int heads_per_row = s.n_heads / out_heads;
  const dim3 grid(static_cast<unsigned>(internal::CeilDiv(P, kThreads)), out_heads);
  AccumulateKernel<<<grid, kThreads, 0, stream>>>(logits, stats, o.window, T, heads_per_row,
                                                  o.reduce == ScoreReduce::kMax, acc);
  CUDA_RETURN_IF_LAUNCH_ERROR();
  PoolKernel<<<grid, kThreads, 0, stream>>>(acc, P, o.pool_kernel, o.pool == ScorePool::kMax,
                                            scores);
  CUDA_RETURN_IF_LAUNCH_ERROR();
  return absl::OkStatus();
}

}  // namespace

size_t ImportanceWorkspaceBytes(const ImportanceShape& s, const ImportanceOptions& o) {
  if (s.n_heads <= 0 || o.window <= 0 || s.seq_len < o.window) return 0;
  const int64_t rows = static_cast<int64_t>(s.n_heads) * o.window;
  const int64_t out_heads = ImportanceHeads(s, o.granularity);
  return sizeof(float) *
         static_cast<size_t>(rows * s.seq_len + 2 * rows + out_heads * (s.seq_len - o.window));
}

absl::Status LaunchImportance(const float* q, const float* k, const ImportanceShape& shape,
                              const ImportanceOptions& options, float* scores, void* workspace,
                              size_t workspace_bytes, cudaStream_t stream) {
  if (absl::Status st = CheckArgs(q, shape, options, scores, workspace, workspace_bytes);
      !st.ok()) {
    return st;
  }
  if (k == nullptr) return absl::InvalidArgumentError("cuda importance: null k");
  return Run(q, ContigKeys{k, shape.seq_len, shape.head_dim}, shape, options, scores, workspace,
             stream);
}

absl::Status LaunchImportancePaged(const float* q, const PagedKvLayer& cache,
                                   const int32_t* block_table, const ImportanceShape& shape,
                                   const ImportanceOptions& options, float* scores, void* workspace,
                                   size_t workspace_bytes, cudaStream_t stream) {
  if (absl::Status st = CheckArgs(q, shape, options, scores, workspace, workspace_bytes);
      !st.ok()) {
    return st;
  }
  if (absl::Status st = CheckPagedKvLayer(cache, "cuda importance"); !st.ok()) return st;
  if (cache.n_kv_heads != shape.n_kv_heads || cache.head_dim != shape.head_dim ||
      block_table == nullptr ||
      internal::CeilDiv(shape.seq_len, kKvBlockTokens) > MaxTableBlocks(cache)) {
    return absl::InvalidArgumentError("cuda importance: cache does not match the shape");
  }
  return Run(q,
             internal::PagedKeys{cache.k, block_table, cache.n_kv_heads, cache.head_dim,
                                 cache.head_table_stride},
             shape, options, scores, workspace, stream);
}

}  // namespace xkv::cuda
