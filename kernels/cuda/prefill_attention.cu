#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/prefill_attention.cuh"

namespace xkv::cuda {
namespace {

using internal::FromFloat;

constexpr int kBq = 64;        // query rows per CTA
constexpr int kBk = 64;        // keys per tile
constexpr int kThreads = 256;  // 16 x 16: ty owns 4 query rows, tx 4 key columns / HD/16 dims
constexpr int kLdq = kBq + 4;  // padded rows of the transposed Q tile
constexpr int kLdp = kBq + 4;  // padded rows of the transposed P tile
constexpr float kLog2e = 1.4426950408889634f;

template <int HD>
constexpr size_t SmemBytes() {
  return sizeof(float) * (HD * kLdq + HD * kBk + kBk * HD + kBk * kLdp);
}

// grid = (query tiles, n_heads); heaviest (last) query tiles are scheduled first.
// q fp32 [n_new, n_heads, HD]; kc/vc bf16 [blocks, n_kv_heads, 16, HD]; block_table int32;
// out OutT [n_new, n_heads, HD] rows out_stride apart.
template <int HD, typename OutT>
__global__ void __launch_bounds__(kThreads)
    FlashPrefillKernel(const float* __restrict__ q, int64_t n_new, int n_heads, int group,
                       const __nv_bfloat16* __restrict__ kc, const __nv_bfloat16* __restrict__ vc,
                       int n_kv_heads, const int32_t* __restrict__ block_table, int64_t kv_len,
                       float scale_log2, OutT* __restrict__ out, int64_t out_stride) {
  constexpr int kCols = HD / 16;  // output dims per thread: tx*4 + 64*half + e
  extern __shared__ float4 smem4[];
  float* qs = reinterpret_cast<float*>(smem4);  // [HD][kLdq]  Q tile transposed, pre-scaled
  float* ks = qs + HD * kLdq;                   // [HD][kBk]   K tile transposed
  float* vs = ks + HD * kBk;                    // [kBk][HD]   V tile
  float* ps = vs + kBk * HD;                    // [kBk][kLdp] P tile transposed
  const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
  const int h = blockIdx.y, g = h / group;
  const int64_t q0 = static_cast<int64_t>(gridDim.x - 1 - blockIdx.x) * kBq;
  const int64_t past = kv_len - n_new;

  for (int c = tid; c < kBq * HD; c += kThreads) {
    const int i = c / HD, d = c % HD;
    const int64_t t = q0 + i;
    qs[d * kLdq + i] = t < n_new ? q[(t * n_heads + h) * HD + d] * scale_log2 : 0.f;
  }
  float m[4], l[4], o[4][kCols];
  int64_t lim[4];  // last visible slot of each of this thread's rows
#pragma unroll
  for (int ii = 0; ii < 4; ++ii) {
    m[ii] = -INFINITY;
    l[ii] = 0.f;
#pragma unroll
    for (int c = 0; c < kCols; ++c) o[ii][c] = 0.f;
    const int64_t t = q0 + ty * 4 + ii;
    lim[ii] = past + (t < n_new ? t : n_new - 1);
  }
  const int64_t last_row = (q0 + kBq < n_new ? q0 + kBq : n_new) - 1;
  const int64_t k_end = past + last_row + 1;  // keys visible to the tile's last row

  for (int64_t k0 = 0; k0 < k_end; k0 += kBk) {
    __syncthreads();  // the previous tile's readers are done (and qs is complete)
    for (int c = tid; c < kBk * (HD / 8); c += kThreads) {
      {  // K: consecutive threads take consecutive keys (conflict-free transposed stores)
        const int r = c % kBk, col = (c / kBk) * 8;
        const int64_t s = k0 + r;
        float vals[8];
        if (s < kv_len) {
          const int64_t blk = block_table[s >> 4];
          internal::LoadBf16x8(kc + ((blk * n_kv_heads + g) * kKvBlockTokens + (s & 15)) * HD + col,
                               vals);
        } else {
#pragma unroll
          for (int e = 0; e < 8; ++e) vals[e] = 0.f;
        }
#pragma unroll
        for (int e = 0; e < 8; ++e) ks[(col + e) * kBk + r] = vals[e];
      }
      {  // V: consecutive threads take consecutive 8-dim chunks of a row (coalesced)
        const int r = c / (HD / 8), col = (c % (HD / 8)) * 8;
        const int64_t s = k0 + r;
        float vals[8];
        if (s < kv_len) {
          const int64_t blk = block_table[s >> 4];
          internal::LoadBf16x8(vc + ((blk * n_kv_heads + g) * kKvBlockTokens + (s & 15)) * HD + col,
                               vals);
        } else {
#pragma unroll
          for (int e = 0; e < 8; ++e) vals[e] = 0.f;
        }
        float4* dst = reinterpret_cast<float4*>(vs + r * HD + col);
        dst[0] = make_float4(vals[0], vals[1], vals[2], vals[3]);
        dst[1] = make_float4(vals[4], vals[5], vals[6], vals[7]);
      }
    }
    __syncthreads();

    // S = Q Kᵀ for rows ty*4+ii, key columns tx + 16*jj (log2 domain: Q carries scale*log2e).
    float s[4][4];
#pragma unroll
    for (int ii = 0; ii < 4; ++ii)
#pragma unroll
      for (int jj = 0; jj < 4; ++jj) s[ii][jj] = 0.f;
#pragma unroll 8
    for (int d = 0; d < HD; ++d) {
      const float4 qv = *reinterpret_cast<const float4*>(qs + d * kLdq + ty * 4);
      const float qa[4] = {qv.x, qv.y, qv.z, qv.w};
      float kv[4];
#pragma unroll
      for (int jj = 0; jj < 4; ++jj) kv[jj] = ks[d * kBk + tx + 16 * jj];
#pragma unroll
      for (int ii = 0; ii < 4; ++ii)
#pragma unroll
        for (int jj = 0; jj < 4; ++jj) s[ii][jj] = fmaf(qa[ii], kv[jj], s[ii][jj]);
    }

    // Online softmax; a row's 64 columns live in the 16 lanes sharing ty (one half-warp).
#pragma unroll
    for (int ii = 0; ii < 4; ++ii) {
      float mx = -INFINITY;
#pragma unroll
      for (int jj = 0; jj < 4; ++jj) {
        if (k0 + tx + 16 * jj > lim[ii]) s[ii][jj] = -INFINITY;
        mx = fmaxf(mx, s[ii][jj]);
      }
#pragma unroll
      for (int off = 8; off > 0; off >>= 1) {
        mx = fmaxf(mx, __shfl_xor_sync(internal::kFullMask, mx, off));
      }
      const float m_new = fmaxf(m[ii], mx);  // finite: key 0 is visible to every row
      const float alpha = exp2f(m[ii] - m_new);
      m[ii] = m_new;
      float sum = 0.f;
#pragma unroll
      for (int jj = 0; jj < 4; ++jj) {
        s[ii][jj] = exp2f(s[ii][jj] - m_new);
        sum += s[ii][jj];
      }
      l[ii] = l[ii] * alpha + sum;  // this thread's partial row sum
#pragma unroll
      for (int c = 0; c < kCols; ++c) o[ii][c] *= alpha;
    }
#pragma unroll
    for (int jj = 0; jj < 4; ++jj) {
      *reinterpret_cast<float4*>(ps + (tx + 16 * jj) * kLdp + ty * 4) =
          make_float4(s[0][jj], s[1][jj], s[2][jj], s[3][jj]);
    }
    __syncthreads();

    // O += P V for rows ty*4+ii, dims 64*half + tx*4 + e.
#pragma unroll 4
    for (int j = 0; j < kBk; ++j) {
      const float4 pv = *reinterpret_cast<const float4*>(ps + j * kLdp + ty * 4);
      const float pa[4] = {pv.x, pv.y, pv.z, pv.w};
#pragma unroll
      for (int half = 0; half < HD / 64; ++half) {
        const float4 vv = *reinterpret_cast<const float4*>(vs + j * HD + half * 64 + tx * 4);
        const float va[4] = {vv.x, vv.y, vv.z, vv.w};
#pragma unroll
        for (int ii = 0; ii < 4; ++ii)
#pragma unroll
          for (int e = 0; e < 4; ++e)
            o[ii][half * 4 + e] = fmaf(pa[ii], va[e], o[ii][half * 4 + e]);
      }
    }
  }

#pragma unroll
  for (int ii = 0; ii < 4; ++ii) {
    float sum = l[ii];
#pragma unroll
    for (int off = 8; off > 0; off >>= 1) sum += __shfl_xor_sync(internal::kFullMask, sum, off);
    const int64_t t = q0 + ty * 4 + ii;
    if (t >= n_new) continue;
    const float inv = 1.0f / sum;
    OutT* dst = out + t * out_stride + static_cast<int64_t>(h) * HD;
#pragma unroll
    for (int half = 0; half < HD / 64; ++half)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        dst[half * 64 + tx * 4 + e] = FromFloat<OutT>(o[ii][half * 4 + e] * inv);
      }
  }
}

template <int HD, typename OutT>
absl::Status Run(const AttentionShape& shape, const float* q, int64_t n_new,
                 const PagedKvLayer& cache, const int32_t* block_table, int64_t kv_len, OutT* out,
                 int64_t out_stride, cudaStream_t stream) {
  auto kernel = FlashPrefillKernel<HD, OutT>;
  constexpr size_t smem = SmemBytes<HD>();
  CUDA_RETURN_IF_ERROR(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  const dim3 grid(static_cast<unsigned>(internal::CeilDiv(n_new, kBq)),
                  static_cast<unsigned>(shape.n_heads));
  kernel<<<grid, kThreads, smem, stream>>>(
      q, n_new, shape.n_heads, shape.n_heads / shape.n_kv_heads, cache.k, cache.v, cache.n_kv_heads,
      block_table, kv_len, shape.scale * kLog2e, out, out_stride);
  CUDA_RETURN_IF_LAUNCH_ERROR();
  return absl::OkStatus();
}

template <typename OutT>
absl::Status Prefill(const AttentionShape& shape, const float* q, int64_t n_new,
                     const PagedKvLayer& cache, const int32_t* block_table, int64_t kv_len,
                     OutT* out, int64_t out_stride, cudaStream_t stream) {
  if (absl::Status st = CheckAttentionShape(shape, cache, "cuda prefill_attention"); !st.ok()) {
    return st;
  }
  if (n_new < 1 || kv_len < n_new || n_new > 0x7fffffffLL * kBq ||
      internal::CeilDiv(kv_len, kKvBlockTokens) > cache.num_blocks ||
      out_stride < static_cast<int64_t>(shape.n_heads) * shape.head_dim) {
    return absl::InvalidArgumentError(
        absl::StrCat("cuda prefill_attention: bad lengths n_new=", n_new, " kv_len=", kv_len,
                     " out_stride=", out_stride));
  }
  if (q == nullptr || block_table == nullptr || out == nullptr) {
    return absl::InvalidArgumentError("cuda prefill_attention: null pointer");
  }
  if (shape.head_dim == 64) {
    return Run<64>(shape, q, n_new, cache, block_table, kv_len, out, out_stride, stream);
  }
  return Run<128>(shape, q, n_new, cache, block_table, kv_len, out, out_stride, stream);
}

}  // namespace

absl::Status CheckAttentionShape(const AttentionShape& s, const PagedKvLayer& cache,
                                 const char* who) {
  if (absl::Status st = CheckPagedKvLayer(cache, who); !st.ok()) return st;
  if (s.n_heads <= 0 || s.n_kv_heads <= 0 || s.n_heads % s.n_kv_heads != 0 || !(s.scale > 0.f) ||
      s.n_kv_heads != cache.n_kv_heads || s.head_dim != cache.head_dim) {
    return absl::InvalidArgumentError(
        absl::StrCat(who, ": bad shape heads=", s.n_heads, " kv_heads=", s.n_kv_heads,
                     " head_dim=", s.head_dim, " scale=", s.scale,
                     " (cache: kv_heads=", cache.n_kv_heads, " head_dim=", cache.head_dim, ")"));
  }
  if (s.head_dim != 64 && s.head_dim != 128) {
    return absl::UnimplementedError(
        absl::StrCat(who, ": head_dim ", s.head_dim, " (supported: 64, 128)"));
  }
  if (s.round_probs_f16) {
    return absl::UnimplementedError(absl::StrCat(who, ": round_probs_f16 is CPU-only"));
  }
  return absl::OkStatus();
}

absl::Status LaunchPrefillAttention(const AttentionShape& shape, const float* q, int64_t n_new,
                                    const PagedKvLayer& cache, const int32_t* block_table,
                                    int64_t kv_len, float* out, int64_t out_stride,
                                    cudaStream_t stream) {
  return Prefill(shape, q, n_new, cache, block_table, kv_len, out, out_stride, stream);
}

absl::Status LaunchPrefillAttention(const AttentionShape& shape, const float* q, int64_t n_new,
                                    const PagedKvLayer& cache, const int32_t* block_table,
                                    int64_t kv_len, __nv_bfloat16* out, int64_t out_stride,
                                    cudaStream_t stream) {
  return Prefill(shape, q, n_new, cache, block_table, kv_len, out, out_stride, stream);
}

}  // namespace xkv::cuda
