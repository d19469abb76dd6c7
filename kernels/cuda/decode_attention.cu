#include <algorithm>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/decode_attention.cuh"

namespace xkv::cuda {
namespace {

using internal::FromFloat;
using internal::kFullMask;

constexpr int kWarps = 4;  // 8 warps, or 128-token splits, measured slower at batch 1 (H100)
constexpr int kThreads = 32 * kWarps;
constexpr int kMinBlocksPerSplit = 16;  // 256 tokens per split (fixed: batch-invariant results)
constexpr int kMaxGroup = 8;
constexpr float kLog2e = 1.4426950408889634f;

int64_t MaxSplits(int64_t max_kv_len) {
  return std::max<int64_t>(
      1, internal::CeilDiv(internal::CeilDiv(max_kv_len, kKvBlockTokens), kMinBlocksPerSplit));
}

// grid = (splits, n_kv_heads, batch). Lane layout inside a warp: LPT = HD/8 lanes share a token
// (lane c holds dims c*8..c*8+7), TPP = 32/LPT tokens per pass, 16/TPP passes per KV block.
// q fp32 [batch, n_heads, HD]; caches bf16 paged; part_o fp32 [batch, n_heads, splits, HD];
// part_ml fp32 [batch, n_heads, splits, 2] = (max in log2 domain, sum of exp2).
// Blocks per SM the register budget must allow: at head_dim 128 and a GQA group of 4 (Llama-3)
// the kernel wants 172 registers, two blocks per SM; capped at 168 (spilling 12 bytes) three fit.
constexpr int DecodeMinBlocks(int hd, int g) { return hd == 128 && g == 4 ? 3 : 1; }

template <int HD, int G>
__global__ void __launch_bounds__(kThreads, DecodeMinBlocks(HD, G))
    DecodeSplitKernel(const float* __restrict__ q, int n_heads,
                      const __nv_bfloat16* __restrict__ kc, const __nv_bfloat16* __restrict__ vc,
                      int n_kv_heads, const int32_t* __restrict__ block_tables,
                      int64_t max_blocks_per_seq, const int32_t* __restrict__ kv_lens,
                      int blocks_per_split, float scale_log2, float* __restrict__ part_o,
                      float* __restrict__ part_ml) {
  constexpr int kLpt = HD / 8, kTpp = 32 / kLpt, kPasses = kKvBlockTokens / kTpp;
  __shared__ float sm_m[kWarps][G], sm_l[kWarps][G];
  __shared__ float sm_o[kWarps][G][HD];
  internal::LaunchDependents();
  internal::GridDependencyWait();
  const int split = blockIdx.x, g = blockIdx.y, b = blockIdx.z, splits = gridDim.x;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int c = lane % kLpt, sub = lane / kLpt;
  // Clamped so a length above the host's max_kv_len cannot index past the block table row.
  const int64_t kv_len = internal::Min64(kv_lens[b], max_blocks_per_seq * kKvBlockTokens);
  const int64_t n_blocks = kv_len > 0 ? internal::CeilDiv(kv_len, kKvBlockTokens) : 0;
  const int64_t blk_begin = static_cast<int64_t>(split) * blocks_per_split;
  const int64_t blk_end = internal::Min64(n_blocks, blk_begin + blocks_per_split);
  const int32_t* table = block_tables + b * max_blocks_per_seq;

  float qr[G][8], o[G][8], m[G], l[G];
#pragma unroll
  for (int h = 0; h < G; ++h) {
    const float* qh = q + (static_cast<int64_t>(b) * n_heads + g * G + h) * HD + c * 8;
    const float4 a = reinterpret_cast<const float4*>(qh)[0];
    const float4 a2 = reinterpret_cast<const float4*>(qh)[1];
    qr[h][0] = a.x * scale_log2, qr[h][1] = a.y * scale_log2;
    qr[h][2] = a.z * scale_log2, qr[h][3] = a.w * scale_log2;
    qr[h][4] = a2.x * scale_log2, qr[h][5] = a2.y * scale_log2;
    qr[h][6] = a2.z * scale_log2, qr[h][7] = a2.w * scale_log2;
    m[h] = -INFINITY;
    l[h] = 0.f;
#pragma unroll
    for (int e = 0; e < 8; ++e) o[h][e] = 0.f;
  }

  for (int64_t bi = blk_begin + warp; bi < blk_end; bi += kWarps) {
    const int64_t blk = table[bi];
    const int64_t base = ((blk * n_kv_heads + g) * kKvBlockTokens) * HD + c * 8;
    const int n_valid = static_cast<int>(internal::Min64(kKvBlockTokens, kv_len - bi * 16));
    uint4 kraw[kPasses], vraw[kPasses];
#pragma unroll
    for (int p = 0; p < kPasses; ++p) {  // all loads of the block in flight before first use
      const int tok = p * kTpp + sub;
      kraw[p] = *reinterpret_cast<const uint4*>(kc + base + tok * HD);
      vraw[p] = *reinterpret_cast<const uint4*>(vc + base + tok * HD);
    }
    float s[kPasses][G];
#pragma unroll
    for (int p = 0; p < kPasses; ++p) {
      const __nv_bfloat162* k2 = reinterpret_cast<const __nv_bfloat162*>(&kraw[p]);
      float kf[8];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float2 f = __bfloat1622float2(k2[i]);
        kf[2 * i] = f.x, kf[2 * i + 1] = f.y;
      }
#pragma unroll
      for (int h = 0; h < G; ++h) {
        float acc = 0.f;
#pragma unroll
        for (int e = 0; e < 8; ++e) acc = fmaf(qr[h][e], kf[e], acc);
#pragma unroll
        for (int off = kLpt / 2; off > 0; off >>= 1) acc += __shfl_xor_sync(kFullMask, acc, off);
        s[p][h] = (p * kTpp + sub < n_valid) ? acc : -INFINITY;
      }
    }
#pragma unroll
    for (int h = 0; h < G; ++h) {
      float mx = -INFINITY;
#pragma unroll
      for (int p = 0; p < kPasses; ++p) mx = fmaxf(mx, s[p][h]);
#pragma unroll
      for (int off = kLpt; off < 32; off <<= 1) mx = fmaxf(mx, __shfl_xor_sync(kFullMask, mx, off));
      const float m_new = fmaxf(m[h], mx);  // finite: the block has >= 1 valid token
      const float alpha = exp2f(m[h] - m_new);
      m[h] = m_new;
      l[h] *= alpha;
#pragma unroll
      for (int e = 0; e < 8; ++e) o[h][e] *= alpha;
    }
#pragma unroll
    for (int p = 0; p < kPasses; ++p) {
      const __nv_bfloat162* v2 = reinterpret_cast<const __nv_bfloat162*>(&vraw[p]);
      float vf[8];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float2 f = __bfloat1622float2(v2[i]);
        vf[2 * i] = f.x, vf[2 * i + 1] = f.y;
      }
      if (p * kTpp + sub >= n_valid) continue;  // unwritten slot: its V may hold NaN bits
#pragma unroll
      for (int h = 0; h < G; ++h) {
        const float pr = exp2f(s[p][h] - m[h]);
        l[h] += pr;
#pragma unroll
        for (int e = 0; e < 8; ++e) o[h][e] = fmaf(pr, vf[e], o[h][e]);
      }
    }
  }

  // Sum the token sub-groups of the warp (they share m), then merge the warps.
#pragma unroll
  for (int h = 0; h < G; ++h) {
#pragma unroll
    for (int off = kLpt; off < 32; off <<= 1) {
      l[h] += __shfl_xor_sync(kFullMask, l[h], off);
#pragma unroll
      for (int e = 0; e < 8; ++e) o[h][e] += __shfl_xor_sync(kFullMask, o[h][e], off);
    }
    if (sub == 0) {
#pragma unroll
      for (int e = 0; e < 8; ++e) sm_o[warp][h][c * 8 + e] = o[h][e];
    }
    if (lane == 0) {
      sm_m[warp][h] = m[h];
      sm_l[warp][h] = l[h];
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < G * HD; i += kThreads) {
    const int h = i / HD, d = i % HD;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, sm_m[w][h]);
    float acc = 0.f, sum = 0.f;
    if (mx != -INFINITY) {
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        const float f = exp2f(sm_m[w][h] - mx);
        acc += sm_o[w][h][d] * f;
        sum += sm_l[w][h] * f;
      }
    }
    const int64_t row = (static_cast<int64_t>(b) * n_heads + g * G + h) * splits + split;
    part_o[row * HD + d] = acc;
    if (d == 0) {
      part_ml[row * 2] = mx;
      part_ml[row * 2 + 1] = sum;
    }
  }
}

// grid = (n_heads, batch), HD threads. Merges the splits of one (sequence, head).
template <int HD, typename OutT>
__global__ void DecodeMergeKernel(const float* __restrict__ part_o,
                                  const float* __restrict__ part_ml, int n_heads, int splits,
                                  OutT* __restrict__ out, int64_t out_stride) {
  internal::LaunchDependents();
  internal::GridDependencyWait();
  const int h = blockIdx.x, b = blockIdx.y, d = threadIdx.x;
  const int64_t row0 = (static_cast<int64_t>(b) * n_heads + h) * splits;
  float mx = -INFINITY;
  for (int s = 0; s < splits; ++s) mx = fmaxf(mx, part_ml[(row0 + s) * 2]);
  float acc = 0.f, sum = 0.f;
  if (mx != -INFINITY) {
    for (int s = 0; s < splits; ++s) {
      const float f = exp2f(part_ml[(row0 + s) * 2] - mx);
      acc += part_o[(row0 + s) * HD + d] * f;
      sum += part_ml[(row0 + s) * 2 + 1] * f;
    }
  }
  out[b * out_stride + static_cast<int64_t>(h) * HD + d] =
      FromFloat<OutT>(sum > 0.f ? acc / sum : 0.f);
}

template <int HD, int G, typename OutT>
absl::Status Run(const AttentionShape& shape, const float* q, int64_t batch,
                 const PagedKvLayer& cache, const int32_t* block_tables, int64_t max_blocks_per_seq,
                 const int32_t* kv_lens, int64_t max_kv_len, OutT* out, int64_t out_stride,
                 float* part_o, float* part_ml, bool pdl, cudaStream_t stream) {
  // Fixed 256-token splits (not sized to the batch or the GPU): a sequence's output depends only
  // on its own keys — not on the batch it shares, on max_kv_len or on the device — so a pipeline
  // split, a CUDA-graph context bucket or a batch change cannot flip a near-tie (batch-invariant
  // decode). Splits past a sequence's length are empty and merge as exact zeros.
  const int64_t blocks = internal::CeilDiv(max_kv_len, kKvBlockTokens);
  const int64_t per_split = kMinBlocksPerSplit;
  const int64_t splits = internal::CeilDiv(blocks, per_split);
  const dim3 grid(static_cast<unsigned>(splits), static_cast<unsigned>(shape.n_kv_heads),
                  static_cast<unsigned>(batch));
  CUDA_RETURN_IF_ERROR(internal::LaunchKernel(
      pdl, DecodeSplitKernel<HD, G>, grid, dim3(kThreads), 0, stream, q, shape.n_heads, cache.k,
      cache.v, cache.n_kv_heads, block_tables, max_blocks_per_seq, kv_lens,
      static_cast<int>(per_split), shape.scale * kLog2e, part_o, part_ml));
  CUDA_RETURN_IF_ERROR(internal::LaunchKernel(
      pdl, DecodeMergeKernel<HD, OutT>, dim3(shape.n_heads, static_cast<unsigned>(batch)), dim3(HD),
      0, stream, part_o, part_ml, shape.n_heads, static_cast<int>(splits), out, out_stride));
  return absl::OkStatus();
}

template <int HD, typename OutT>
absl::Status DispatchGroup(int group, const AttentionShape& shape, const float* q, int64_t batch,
                           const PagedKvLayer& cache, const int32_t* bt, int64_t mb,
                           const int32_t* kv_lens, int64_t max_kv_len, OutT* out,
                           int64_t out_stride, float* po, float* pml, bool pdl,
                           cudaStream_t stream) {
  switch (group) {
#define XKV_DECODE_GROUP(G)                                                                     \
  case G:                                                                                       \
    return Run<HD, G>(shape, q, batch, cache, bt, mb, kv_lens, max_kv_len, out, out_stride, po, \
                      pml, pdl, stream);
    XKV_DECODE_GROUP(1)
    XKV_DECODE_GROUP(2)
    XKV_DECODE_GROUP(3)
    XKV_DECODE_GROUP(4)
    XKV_DECODE_GROUP(5)
    XKV_DECODE_GROUP(6)
    XKV_DECODE_GROUP(7)
    XKV_DECODE_GROUP(8)
#undef XKV_DECODE_GROUP
  }
  return absl::UnimplementedError(
      absl::StrCat("cuda decode_attention: GQA group ", group, " (supported: 1..", kMaxGroup, ")"));
}

template <typename OutT>
absl::Status Decode(const AttentionShape& shape, const float* q, int64_t batch,
                    const PagedKvLayer& cache, const int32_t* block_tables,
                    int64_t max_blocks_per_seq, const int32_t* kv_lens, int64_t max_kv_len,
                    OutT* out, int64_t out_stride, void* workspace, size_t workspace_bytes,
                    bool pdl, cudaStream_t stream) {
  if (absl::Status st = CheckAttentionShape(shape, cache, "cuda decode_attention"); !st.ok()) {
    return st;
  }
  if (cache.head_table_stride != 0) {
    return absl::InvalidArgumentError(
        "cuda decode_attention: per-KV-head tables: launch on OneHeadView(cache) (paged_kv.cuh)");
  }
  if (batch < 0 || batch > 65535 || max_kv_len < 1 ||
      internal::CeilDiv(max_kv_len, kKvBlockTokens) > max_blocks_per_seq ||
      out_stride < static_cast<int64_t>(shape.n_heads) * shape.head_dim) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cuda decode_attention: bad sizes batch=", batch, " (max 65535) max_kv_len=", max_kv_len,
        " max_blocks_per_seq=", max_blocks_per_seq, " out_stride=", out_stride));
  }
  if (batch == 0) return absl::OkStatus();
  const size_t need =
      DecodeAttentionWorkspaceBytes(batch, shape.n_heads, shape.head_dim, max_kv_len);
  if (workspace_bytes < need) {
    return absl::InvalidArgumentError(
        absl::StrCat("cuda decode_attention: workspace ", workspace_bytes, " bytes < ", need));
  }
  if (q == nullptr || block_tables == nullptr || kv_lens == nullptr || out == nullptr ||
      workspace == nullptr) {
    return absl::InvalidArgumentError("cuda decode_attention: null pointer");
  }
  const int64_t rows = batch * shape.n_heads * MaxSplits(max_kv_len);
  float* part_o = static_cast<float*>(workspace);
  float* part_ml = part_o + rows * shape.head_dim;
  const int group = shape.n_heads / shape.n_kv_heads;
  if (shape.head_dim == 64) {
    return DispatchGroup<64>(group, shape, q, batch, cache, block_tables, max_blocks_per_seq,
                             kv_lens, max_kv_len, out, out_stride, part_o, part_ml, pdl, stream);
  }
  return DispatchGroup<128>(group, shape, q, batch, cache, block_tables, max_blocks_per_seq,
                            kv_lens, max_kv_len, out, out_stride, part_o, part_ml, pdl, stream);
}

}  // namespace

size_t DecodeAttentionWorkspaceBytes(int64_t batch, int n_heads, int head_dim, int64_t max_kv_len) {
  const int64_t rows = std::max<int64_t>(batch, 0) * std::max(n_heads, 0) * MaxSplits(max_kv_len);
  return static_cast<size_t>(rows) * (std::max(head_dim, 0) + 2) * sizeof(float);
}

absl::Status LaunchDecodeAttention(const AttentionShape& shape, const float* q, int64_t batch,
                                   const PagedKvLayer& cache, const int32_t* block_tables,
                                   int64_t max_blocks_per_seq, const int32_t* kv_lens,
                                   int64_t max_kv_len, float* out, int64_t out_stride,
                                   void* workspace, size_t workspace_bytes, cudaStream_t stream,
                                   bool pdl) {
  return Decode(shape, q, batch, cache, block_tables, max_blocks_per_seq, kv_lens, max_kv_len, out,
                out_stride, workspace, workspace_bytes, pdl, stream);
}

absl::Status LaunchDecodeAttention(const AttentionShape& shape, const float* q, int64_t batch,
                                   const PagedKvLayer& cache, const int32_t* block_tables,
                                   int64_t max_blocks_per_seq, const int32_t* kv_lens,
                                   int64_t max_kv_len, __nv_bfloat16* out, int64_t out_stride,
                                   void* workspace, size_t workspace_bytes, cudaStream_t stream,
                                   bool pdl) {
  return Decode(shape, q, batch, cache, block_tables, max_blocks_per_seq, kv_lens, max_kv_len, out,
                out_stride, workspace, workspace_bytes, pdl, stream);
}

}  // namespace xkv::cuda
