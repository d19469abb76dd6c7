#include <cmath>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/paged_keys.cuh"
#include "kernels/cuda/reconstruct_importance.cuh"

namespace xkv::cuda {
namespace {

using internal::Mma16816;
using internal::PackBf16;

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
  // Dims [d0, d0 + 8) rounded to 8 bf16 (the tensor-core kernel's keys).
  __device__ uint4 Load8(int g, int64_t j, int d0) const {
    const float* p = k + g * head_stride + j * head_dim + d0;
    return uint4{PackBf16(p[0], p[1]), PackBf16(p[2], p[3]), PackBf16(p[4], p[5]),
                 PackBf16(p[6], p[7])};
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

// A row's softmax (max m, sum l) over its lane's keys merged with lane ^ off's (the online
// softmax's merge): every lane of the xor group ends with the stats over their keys together.
__device__ __forceinline__ void MergeRowStats(float& m, float& l, int off) {
  const float mo = __shfl_xor_sync(0xffffffffu, m, off);
  const float lo = __shfl_xor_sync(0xffffffffu, l, off);
  const float mn = fmaxf(m, mo);
  l = mn == -INFINITY ? 0.f : l * expf(m - mn) + lo * expf(mo - mn);
  m = mn;
}

// After a pass-2 tile: its keys' largest probabilities (col_max, shared, float bits) into
// scores (this KV head's row, chunk keys c0..) by atomicMax. Non-negative floats order as ints.
__device__ __forceinline__ void FlushColumnMax(const int* col_max, int64_t c0, int64_t chunk_len,
                                               float* scores) {
  const int64_t c = c0 + threadIdx.x;
  if (threadIdx.x < kTileK && c < chunk_len && col_max[threadIdx.x] > 0) {
    atomicMax(reinterpret_cast<int*>(scores + c), col_max[threadIdx.x]);
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
    for (int off = 8; off >= 1; off >>= 1) MergeRowStats(m[a], l[a], off);  // the row's 16 threads
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
    FlushColumnMax(col_max, c0, order.chunk_len, scores + g * order.chunk_len);
  }
}

// The tensor-core kernel (head_dim a multiple of 16, at most 256): the same two passes, each CTA
// 4 warps x 16 rows of one query head; a warp's logits for a 64-key tile are mma.m16n8k16 (bf16 Q
// and K, fp32 accumulation) into 8 fragments of 16 x 8: lane (g = lane / 4, t = lane % 4) holds
// rows g and g + 8, keys 8 nb + 2t and 8 nb + 2t + 1. The queries are rounded to bf16 (the keys
// are bf16 in the cache), as the tensor-core prefill attention takes them.
constexpr int kMmaWarps = 4, kMmaRows = 16 * kMmaWarps, kMmaKeys = 64, kMmaThreads = 32 * kMmaWarps;
constexpr int kMmaMaxSteps = 16;  // head_dim / 16 <= 16
static_assert(kMmaRows == kTileQ && kMmaKeys == kTileK);

// Keys [kk0, kk0 + kMmaKeys) of KV head g into ks (bf16 [kMmaKeys][ld]), zeros from kk_end on.
template <typename Keys>
__device__ void LoadKeysBf16(Keys keys, const KeyOrder& order, int g, int head_dim, int ld,
                             int64_t kk0, int64_t kk_end, __nv_bfloat16* ks) {
  const int words = head_dim / 8;  // 16-byte words per key
  for (int idx = threadIdx.x; idx < kMmaKeys * words; idx += kMmaThreads) {
    const int r = idx / words, d0 = (idx - r * words) * 8;
    const int64_t kk = kk0 + r;
    *reinterpret_cast<uint4*>(ks + r * ld + d0) =
        kk < kk_end ? keys.Load8(g, order.Slot(kk), d0) : uint4{};
  }
}

// s[nb][e] = the warp's logits (unscaled) against the tile's keys, from the query fragments qa.
__device__ __forceinline__ void MmaTileLogits(const uint32_t (&qa)[kMmaMaxSteps][4], int steps,
                                              const __nv_bfloat16* ks, int ld, int g, int t,
                                              float (&s)[8][4]) {
#pragma unroll
  for (int nb = 0; nb < 8; ++nb) {
#pragma unroll
    for (int e = 0; e < 4; ++e) s[nb][e] = 0.f;
  }
#pragma unroll
  for (int st = 0; st < kMmaMaxSteps; ++st) {
    if (st >= steps) break;
#pragma unroll
    for (int nb = 0; nb < 8; ++nb) {
      const __nv_bfloat16* row = ks + (nb * 8 + g) * ld + 16 * st + 2 * t;
      Mma16816(s[nb], qa[st], *reinterpret_cast<const uint32_t*>(row),
               *reinterpret_cast<const uint32_t*>(row + 8));
    }
  }
}

template <typename Keys>
__global__ void __launch_bounds__(kMmaThreads)
    ReconstructMmaKernel(const float* __restrict__ q, Keys keys, int n_heads, int group,
                         int head_dim, int64_t n_queries, KeyOrder order, float scale,
                         float* __restrict__ scores) {
  extern __shared__ __align__(16) unsigned char mma_smem[];
  const int ld = head_dim + 8;  // bf16 per key row: 16-byte aligned, conflict-free fragments
  __nv_bfloat16* ks = reinterpret_cast<__nv_bfloat16*>(mma_smem);  // [kMmaKeys][ld]
  int* col_max = reinterpret_cast<int*>(ks + kMmaKeys * ld);       // [kMmaKeys]
  const int h = blockIdx.y, kvh = h / group;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int64_t q0 = static_cast<int64_t>(blockIdx.x) * kMmaRows;
  const int64_t row[2] = {q0 + warp * 16 + g, q0 + warp * 16 + g + 8};
  const int steps = head_dim / 16;
  // A fragments: a0 (row g, k 2t, 2t+1), a1 (row g+8), a2 (row g, k 2t+8, 2t+9), a3 (row g+8).
  uint32_t qa[kMmaMaxSteps][4];
#pragma unroll
  for (int st = 0; st < kMmaMaxSteps; ++st) {
    if (st >= steps) break;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int64_t i = row[half];
      const float* p = q + (i * n_heads + h) * head_dim + 16 * st + 2 * t;
      const bool ok = i < n_queries;
      qa[st][half] = ok ? PackBf16(p[0], p[1]) : 0u;
      qa[st][2 + half] = ok ? PackBf16(p[8], p[9]) : 0u;
    }
  }
  const int64_t fixed = order.sinks + order.chunk_len;
  const int64_t last_row = min(n_queries, q0 + kMmaRows) - 1;
  const int64_t kk_end = fixed + last_row + 1;
  const int64_t warp_end = fixed + min(n_queries - 1, q0 + warp * 16 + 15) + 1;  // keys it sees
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f}, s[8][4];
  for (int64_t kk0 = 0; kk0 < kk_end; kk0 += kMmaKeys) {
    __syncthreads();
    LoadKeysBf16(keys, order, kvh, head_dim, ld, kk0, kk_end, ks);
    __syncthreads();
    if (kk0 >= warp_end) continue;  // warp-uniform: none of its rows sees this tile
    MmaTileLogits(qa, steps, ks, ld, g, t, s);
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int64_t visible = fixed + row[half];  // keys kk <= visible
      float tile_max = -INFINITY;
#pragma unroll
      for (int nb = 0; nb < 8; ++nb) {
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const int64_t kk = kk0 + nb * 8 + 2 * t + c;
          float& x = s[nb][2 * half + c];
          x = kk <= visible && row[half] < n_queries ? x * scale : -INFINITY;
          tile_max = fmaxf(tile_max, x);
        }
      }
      if (tile_max == -INFINITY) continue;
      const float mn = fmaxf(m[half], tile_max);
      float sum = 0.f;
#pragma unroll
      for (int nb = 0; nb < 8; ++nb) {
#pragma unroll
        for (int c = 0; c < 2; ++c) sum += expf(s[nb][2 * half + c] - mn);
      }
      l[half] = l[half] * expf(m[half] - mn) + sum;
      m[half] = mn;
    }
  }
  float inv[2];
#pragma unroll
  for (int half = 0; half < 2; ++half) {
#pragma unroll
    for (int off = 1; off <= 2; off <<= 1) MergeRowStats(m[half], l[half], off);  // 4 lanes (t)
    inv[half] = l[half] > 0.f ? 1.0f / l[half] : 0.f;
  }
  for (int64_t c0 = 0; c0 < order.chunk_len; c0 += kMmaKeys) {
    __syncthreads();
    LoadKeysBf16(keys, order, kvh, head_dim, ld, order.sinks + c0, fixed, ks);
    if (threadIdx.x < kMmaKeys) col_max[threadIdx.x] = 0;
    __syncthreads();
    MmaTileLogits(qa, steps, ks, ld, g, t, s);
#pragma unroll
    for (int nb = 0; nb < 8; ++nb) {
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        float best = 0.f;
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          if (row[half] < n_queries) {
            best = fmaxf(best, expf(s[nb][2 * half + c] * scale - m[half]) * inv[half]);
          }
        }
#pragma unroll
        for (int off = 4; off <= 16; off <<= 1) {  // the 8 lanes (g) of this key
          best = fmaxf(best, __shfl_xor_sync(0xffffffffu, best, off));
        }
        if (g == 0 && best > 0.f) atomicMax(&col_max[nb * 8 + 2 * t + c], __float_as_int(best));
      }
    }
    __syncthreads();
    FlushColumnMax(col_max, c0, order.chunk_len, scores + kvh * order.chunk_len);
  }
}

bool UsesMma(const ReconstructShape& s) {
  return s.head_dim % 16 == 0 && s.head_dim / 16 <= kMmaMaxSteps;
}

size_t MmaSharedBytes(const ReconstructShape& s) {
  return sizeof(__nv_bfloat16) * static_cast<size_t>(kMmaKeys * (s.head_dim + 8)) +
         sizeof(int) * kMmaKeys;
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
  const int64_t sinks = s.sinks < s.chunk_begin ? s.sinks : s.chunk_begin;
  const KeyOrder order{sinks, s.chunk_begin, s.chunk_end - s.chunk_begin, s.past_len};
  const int64_t tiles = (s.n_queries + kTileQ - 1) / kTileQ;
  const float scale = 1.0f / std::sqrt(static_cast<float>(s.head_dim));
  if (UsesMma(s)) {
    ReconstructMmaKernel<Keys>
        <<<dim3(static_cast<unsigned>(tiles), s.n_heads), kMmaThreads, MmaSharedBytes(s), stream>>>(
            q, keys, s.n_heads, s.n_heads / s.n_kv_heads, s.head_dim, s.n_queries, order, scale,
            scores);
    CUDA_RETURN_IF_LAUNCH_ERROR();
    return absl::OkStatus();
  }
  const size_t smem = SharedBytes(s);
  CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(ReconstructKernel<Keys>,
                                            cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            static_cast<int>(smem)));
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
