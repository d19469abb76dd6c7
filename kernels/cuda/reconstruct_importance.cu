#include <cmath>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/paged_keys.cuh"
#include "kernels/cuda/reconstruct_importance.cuh"

namespace xkv::cuda {
namespace {

// A CTA takes kTileQ input rows of one query head and walks the keys they see in tiles of kTileK
// through shared memory (each key read once per CTA, not once per row): 16 x 16 threads, each
// holding 4 x 4 (row, key) dot products, rows tq + 16a and keys tk + 16b (conflict-free with the
// rows padded to head_dim + 1 floats).
constexpr int kTileQ = 64, kTileK = 64, kThreads = 256, kPer = 4;
static_assert(kTileQ == 16 * kPer && kTileK == 16 * kPer && kThreads == 256);
constexpr size_t kMaxSmem = 200u << 10;

struct StridedKeys {  // fp32 [n_kv_heads][head_stride]
  const float* k;
  int64_t head_stride;
  int head_dim;
  __device__ float operator()(int g, int64_t j, int d) const {
    return k[g * head_stride + j * head_dim + d];
  }
};

// The keys a row sees, in order ("virtual" index kk): the sinks [0, sinks), the chunk's original
// keys, then the input's own keys (row i sees kk <= sinks + chunk_len + i).
struct KeyOrder {
  int64_t sinks, chunk_begin, chunk_len, past_len;
  __device__ int64_t Slot(int64_t kk) const {
    return kk < sinks               ? kk
           : kk < sinks + chunk_len ? chunk_begin + (kk - sinks)
                                    : past_len + (kk - sinks - chunk_len);
  }
};

// Keys [kk0, kk0 + kTileK) of KV head g into ks ([kTileK][ld] fp32), zeros from kk_end on.
template <typename Keys>
__device__ void LoadKeys(Keys keys, const KeyOrder& order, int g, int head_dim, int ld, int64_t kk0,
                         int64_t kk_end, float* ks) {
  for (int idx = threadIdx.x; idx < kTileK * head_dim; idx += kThreads) {
    const int r = idx / head_dim, d = idx - r * head_dim;
    const int64_t kk = kk0 + r;
    ks[r * ld + d] = kk < kk_end ? keys(g, order.Slot(kk), d) : 0.f;
  }
}

// acc[a][b] = scale * (row tq + 16a of qs) . (key tk + 16b of ks), the dot in dimension order.
__device__ void TileLogits(const float* qs, const float* ks, int ld, int head_dim, int tq, int tk,
                           float scale, float (&acc)[kPer][kPer]) {
  for (int a = 0; a < kPer; ++a) {
    for (int b = 0; b < kPer; ++b) acc[a][b] = 0.f;
  }
  for (int d = 0; d < head_dim; ++d) {
    float qv[kPer], kv[kPer];
    for (int a = 0; a < kPer; ++a) qv[a] = qs[(tq + 16 * a) * ld + d];
    for (int b = 0; b < kPer; ++b) kv[b] = ks[(tk + 16 * b) * ld + d];
    for (int a = 0; a < kPer; ++a) {
      for (int b = 0; b < kPer; ++b) acc[a][b] = fmaf(qv[a], kv[b], acc[a][b]);
    }
  }
  for (int a = 0; a < kPer; ++a) {
    for (int b = 0; b < kPer; ++b) acc[a][b] *= scale;
  }
}

// grid = (ceil(R / kTileQ), n_heads). Pass 1: each row's softmax max and sum over the keys it
// sees (online, per thread, then over the 16 threads of the row); pass 2: the chunk keys' logits
// again, their probabilities' maximum over the tile's rows (shared atomicMax), then atomicMax into
// `scores` (non-negative floats order as their int bits) across tiles and the GQA group's heads.
template <typename Keys>
__global__ void __launch_bounds__(kThreads)
    ReconstructKernel(const float* __restrict__ q, Keys keys, int n_heads, int group, int head_dim,
                      int64_t n_queries, KeyOrder order, float scale, float* __restrict__ scores) {
  extern __shared__ float smem[];
  const int ld = head_dim + 1;
  float* qs = smem;                                         // [kTileQ][ld]
  float* ks = qs + kTileQ * ld;                             // [kTileK][ld]
  int* col_max = reinterpret_cast<int*>(ks + kTileK * ld);  // [kTileK]
  const int h = blockIdx.y, g = h / group;
  const int tq = threadIdx.x / 16, tk = threadIdx.x % 16;  // a row's 16 threads: one half-warp
  const int64_t q0 = static_cast<int64_t>(blockIdx.x) * kTileQ;
  for (int idx = threadIdx.x; idx < kTileQ * head_dim; idx += kThreads) {
    const int r = idx / head_dim, d = idx - r * head_dim;
    const int64_t i = q0 + r;
    qs[r * ld + d] = i < n_queries ? q[(i * n_heads + h) * head_dim + d] : 0.f;
  }
  const int64_t fixed = order.sinks + order.chunk_len;  // keys every row sees
  const int64_t last_row = min(n_queries, q0 + kTileQ) - 1;
  const int64_t kk_end = fixed + last_row + 1;
  float m[kPer], l[kPer], acc[kPer][kPer];
  for (int a = 0; a < kPer; ++a) {
    m[a] = -INFINITY;
    l[a] = 0.f;
  }
  for (int64_t kk0 = 0; kk0 < kk_end; kk0 += kTileK) {
    __syncthreads();  // the previous tile is consumed (and qs is written, the first time)
    LoadKeys(keys, order, g, head_dim, ld, kk0, kk_end, ks);
    __syncthreads();
    TileLogits(qs, ks, ld, head_dim, tq, tk, scale, acc);
    for (int a = 0; a < kPer; ++a) {
      const int64_t i = q0 + tq + 16 * a;
      for (int b = 0; b < kPer; ++b) {
        const int64_t kk = kk0 + tk + 16 * b;
        if (i >= n_queries || kk > fixed + i) continue;
        const float x = acc[a][b];
        if (x > m[a]) {
          l[a] = l[a] * expf(m[a] - x) + 1.f;
          m[a] = x;
        } else {
          l[a] += expf(x - m[a]);
        }
      }
    }
  }
  float inv[kPer];
  for (int a = 0; a < kPer; ++a) {
    for (int off = 8; off >= 1; off >>= 1) {
      const float mo = __shfl_xor_sync(0xffffffffu, m[a], off);
      const float lo = __shfl_xor_sync(0xffffffffu, l[a], off);
      const float mn = fmaxf(m[a], mo);
      l[a] = mn == -INFINITY ? 0.f : l[a] * expf(m[a] - mn) + lo * expf(mo - mn);
      m[a] = mn;
    }
    inv[a] = l[a] > 0.f ? 1.0f / l[a] : 0.f;
  }
  for (int64_t c0 = 0; c0 < order.chunk_len; c0 += kTileK) {
    __syncthreads();
    LoadKeys(keys, order, g, head_dim, ld, order.sinks + c0, fixed, ks);
    if (threadIdx.x < kTileK) col_max[threadIdx.x] = 0;
    __syncthreads();
    TileLogits(qs, ks, ld, head_dim, tq, tk, scale, acc);
    for (int b = 0; b < kPer; ++b) {
      float best = 0.f;
      for (int a = 0; a < kPer; ++a) {
        if (q0 + tq + 16 * a < n_queries) best = fmaxf(best, expf(acc[a][b] - m[a]) * inv[a]);
      }
      if (best > 0.f) atomicMax(&col_max[tk + 16 * b], __float_as_int(best));
    }
    __syncthreads();
    const int64_t c = c0 + threadIdx.x;
    if (threadIdx.x < kTileK && c < order.chunk_len && col_max[threadIdx.x] > 0) {
      atomicMax(reinterpret_cast<int*>(scores + g * order.chunk_len + c), col_max[threadIdx.x]);
    }
  }
}

size_t SharedBytes(const ReconstructShape& s) {
  return sizeof(float) * static_cast<size_t>((kTileQ + kTileK) * (s.head_dim + 1) + kTileK);
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
    return absl::InvalidArgumentError(
        absl::StrCat("cuda reconstruct scores: head_dim ", s.head_dim, " needs ", SharedBytes(s),
                     " bytes of shared memory, more than ", kMaxSmem));
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
  const KeyOrder order{sinks, s.chunk_begin, s.chunk_end - s.chunk_begin, s.past_len};
  const int64_t tiles = (s.n_queries + kTileQ - 1) / kTileQ;
  ReconstructKernel<Keys>
      <<<dim3(static_cast<unsigned>(tiles), s.n_heads), kThreads, smem, stream>>>(
          q, keys, s.n_heads, s.n_heads / s.n_kv_heads, s.head_dim, s.n_queries, order,
          1.0f / std::sqrt(static_cast<float>(s.head_dim)), scores);
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
