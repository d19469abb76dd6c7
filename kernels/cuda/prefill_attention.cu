// Tensor-core flash prefill attention (FlashAttention-2 style) over a paged bf16 KV cache.
//
// One CTA = 4 warps = one query head x 16 * MT query rows per warp (MT = 1 or 2, chosen per
// launch). Key/value tiles of kBk = 64 slots (4 paged blocks of 16) are gathered into shared
// memory with cp.async, double-buffered. S = Q Kᵀ and O += P V run on mma.sync m16n8k16 (bf16 in,
// fp32 accumulate) with ldmatrix fragments (.trans for V); the online softmax stays in fp32
// registers (log2 domain: Q is rounded to bf16 pre-scaled by scale * log2(e)); P is rounded to
// bf16 for the P V product. Shared tiles are [rows][head_dim] bf16 with 16-byte chunks
// XOR-swizzled by row (conflict-free ldmatrix and cp.async). Causal: tiles past a warp's last
// row are skipped, tiles crossing the diagonal are masked per element. Covers every shape the
// launcher accepts (head_dim 64 / 128, any GQA group, any chunk offset); no SIMT fallback.
#include <cstdint>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/paged_keys.cuh"
#include "kernels/cuda/prefill_attention.cuh"

namespace xkv::cuda {
namespace {

using internal::FromFloat;
using internal::Mma16816;
using internal::PackBf16;

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kBk = 64;  // keys per tile: 4 paged blocks
constexpr float kLog2e = 1.4426950408889634f;

// ---- PTX wrappers --------------------------------------------------------------------------

__device__ __forceinline__ uint32_t SmemAddr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared, bypassing L1; zero-fills the destination when !valid (nothing read).
__device__ __forceinline__ void CpAsync16(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
               "r"(valid ? 16 : 0)
               : "memory");
}
__device__ __forceinline__ void CpAsyncCommit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ void LdMatrixX4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}
__device__ __forceinline__ void LdMatrixX4Trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}

__device__ __forceinline__ float Exp2(float x) {  // 2^x; exp2(-inf) = +0
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Byte offset of 16-byte chunk `chunk` of row `row` in a [rows][HD] bf16 shared tile, chunks
// XOR-swizzled with (row & 7): the 8 rows of one ldmatrix phase land in 8 distinct bank groups.
template <int HD>
__device__ __forceinline__ uint32_t Swz(int row, int chunk) {
  return static_cast<uint32_t>(row * (HD * 2) + ((chunk ^ (row & 7)) << 4));
}

// ldmatrix addressing without per-step swizzle arithmetic. A lane reads row r0 + rl and chunk
// 2 * c2 + cb (r0 a multiple of 8, c2 a compile-time step): since (2*c2 + cb) ^ x ==
// 2*c2 ^ (cb ^ x), Swz = r0 * row_bytes + (base ^ ((c2 & 3) << 5)) + (c2 >> 2) * 128 with
// base = Swz(rl, cb). Holds the 4 lane offsets for c2 & 3 = 0..3.
template <int HD>
struct LaneOffsets {
  uint32_t off[4];
  __device__ __forceinline__ LaneOffsets(int rl, int cb) {
    const uint32_t base = Swz<HD>(rl, cb);
#pragma unroll
    for (int i = 0; i < 4; ++i) off[i] = base ^ (i << 5);
  }
  // Offset of (row r0 + rl, chunk 2 * c2 + cb); r0 and c2 compile-time after unrolling.
  __device__ __forceinline__ uint32_t At(int r0, int c2) const {
    return off[c2 & 3] + (c2 >> 2) * 128 + r0 * (HD * 2);
  }
};

template <int MT>
constexpr int kQTileRows = 16 * MT* kWarps;  // query rows per CTA

template <int HD, int MT>
constexpr size_t SmemBytes() {  // Q tile + 2 stages of K and V
  return static_cast<size_t>(kQTileRows<MT> + 4 * kBk) * HD * 2;
}

// grid = (n_heads, query tiles), the heaviest (last) query tiles first; the query heads of one KV
// head are adjacent in launch order (they read the same K/V from L2).
// q   fp32 [n_new, n_heads, HD] contiguous, 16-byte aligned.
// kc  bf16 [blocks, n_kv_heads, 16, HD] (vc alike), 16-byte aligned.
// block_table int32 [ceil(kv_len / 16)] (per KV head when head_table_stride > 0, paged_kv.cuh).
// head_kv_lens int32 [n_kv_heads] or null: KV head g's own kv_len (else `kv_len` for every head).
// out OutT [n_new, n_heads, HD], token rows out_stride apart.
// MT = m16 tiles per warp (1: 64-row CTAs, 2: 128-row CTAs).
template <int HD, int MT, typename OutT>
__global__ void __launch_bounds__(kThreads)
    FlashPrefillKernel(const float* __restrict__ q, int n_new, int n_heads, int group,
                       const __nv_bfloat16* __restrict__ kc, const __nv_bfloat16* __restrict__ vc,
                       int n_kv_heads, const int32_t* __restrict__ block_table,
                       int64_t head_table_stride, int all_kv_len,
                       const int32_t* __restrict__ head_kv_lens, float scale_log2,
                       OutT* __restrict__ out, int64_t out_stride) {
  constexpr int kBq = kQTileRows<MT>;
  constexpr int kCpr = HD / 8;  // 16-byte chunks per row
  constexpr int kTileBytes = kBk * HD * 2;
  constexpr int kKSteps = HD / 16;           // k16 steps of Q Kᵀ
  constexpr int kDTiles = HD / 8;            // n8 tiles of O
  constexpr int kNTiles = kBk / 8;           // n8 tiles of S
  constexpr bool kQInRegs = HD * MT <= 128;  // Q fragments in registers (else ldmatrix per tile)
  extern __shared__ __align__(128) uint8_t smem[];
  const uint32_t q_s = SmemAddr(smem);
  const uint32_t k_s = q_s + kBq * HD * 2;    // [2][kBk][HD]
  const uint32_t v_s = k_s + 2 * kTileBytes;  // [2][kBk][HD]

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int h = blockIdx.x, g = h / group;
  const int kv_len = head_kv_lens != nullptr ? head_kv_lens[g] : all_kv_len;
  const int q0 = static_cast<int>(gridDim.y - 1 - blockIdx.y) * kBq;
  const int past = kv_len - n_new;
  const int cta_last = min(q0 + kBq, n_new) - 1;
  const int n_tiles = (past + cta_last + kBk) / kBk;

  // Gathers K/V slots [tile * kBk, +kBk) of KV head g into stage `stage`; slots >= kv_len
  // (the tail of the last block, possibly never written) are zero-filled without a read.
  auto load_tile = [&](int tile, int stage) {
    const int col = tid % kCpr;
#pragma unroll
    for (int i = 0; i < kBk * kCpr / kThreads; ++i) {
      const int r = tid / kCpr + i * (kThreads / kCpr);
      const int s = tile * kBk + r;
      const bool valid = s < kv_len;
      int64_t off = 0;
      if (valid) {
        const int64_t hb = internal::HeadBlockOf(block_table, head_table_stride, n_kv_heads, g, s);
        off = (hb * kKvBlockTokens + (s & 15)) * HD + col * 8;
      }
      const uint32_t dst = stage * kTileBytes + Swz<HD>(r, col);
      CpAsync16(k_s + dst, kc + off, valid);
      CpAsync16(v_s + dst, vc + off, valid);
    }
  };
  load_tile(0, 0);
  CpAsyncCommit();

  // Q tile -> bf16 (pre-scaled into the log2 domain) in shared memory; rows >= n_new are zero.
  for (int c = tid; c < kBq * kCpr; c += kThreads) {
    const int r = c / kCpr, col = c % kCpr;
    const int t = q0 + r;
    uint4 packed = make_uint4(0u, 0u, 0u, 0u);
    if (t < n_new) {
      const float4* src =
          reinterpret_cast<const float4*>(q + (int64_t{t} * n_heads + h) * HD + col * 8);
      const float4 a = __ldg(src), b = __ldg(src + 1);
      packed.x = PackBf16(a.x * scale_log2, a.y * scale_log2);
      packed.y = PackBf16(a.z * scale_log2, a.w * scale_log2);
      packed.z = PackBf16(b.x * scale_log2, b.y * scale_log2);
      packed.w = PackBf16(b.z * scale_log2, b.w * scale_log2);
    }
    *reinterpret_cast<uint4*>(smem + Swz<HD>(r, col)) = packed;
  }

  // This warp's rows: w_first + m * 16 + lane / 4 (+ 8). Row t sees slots [0, past + t]; rows
  // past n_new (padding of the last tile) are computed with row n_new - 1's limit, never written.
  const int w_first = q0 + warp * 16 * MT;
  const int w_last = min(w_first + 16 * MT, n_new) - 1;
  const int w_min_lim = past + w_first;
  const int w_max_lim = w_last >= w_first ? past + w_last : -1;  // -1: no rows, no work
  // ldmatrix lane offsets: Q (A operand: rows lane & 15, chunk + lane / 16), K (B operand, keys
  // (lane & 7) + 8 * (lane / 16), chunk + (lane / 8) & 1), V (B operand via .trans: keys
  // (lane & 7) + 8 * ((lane / 8) & 1), chunk + lane / 16).
  const int qrow0 = warp * 16 * MT;
  const LaneOffsets<HD> q_off(lane & 15, lane >> 4);
  const LaneOffsets<HD> k_off((lane & 7) + ((lane >> 4) << 3), (lane >> 3) & 1);
  const LaneOffsets<HD> v_off((lane & 7) + (((lane >> 3) & 1) << 3), lane >> 4);

  uint32_t qf[kQInRegs ? MT : 1][kQInRegs ? kKSteps : 1][4];
  if constexpr (kQInRegs) {
    __syncthreads();
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
      for (int kk = 0; kk < kKSteps; ++kk)
        LdMatrixX4(qf[m][kk], q_s + q_off.At(qrow0 + m * 16, kk));
  }

  float o[MT][kDTiles][4];
  float row_max[MT][2], row_sum[MT][2];  // running max (log2 domain), this thread's partial sum
#pragma unroll
  for (int m = 0; m < MT; ++m) {
#pragma unroll
    for (int d = 0; d < kDTiles; ++d)
#pragma unroll
      for (int e = 0; e < 4; ++e) o[m][d][e] = 0.f;
    row_max[m][0] = row_max[m][1] = -INFINITY;
    row_sum[m][0] = row_sum[m][1] = 0.f;
  }

  for (int j = 0; j < n_tiles; ++j) {
    if (j + 1 < n_tiles) load_tile(j + 1, (j + 1) & 1);
    CpAsyncCommit();  // possibly empty: keeps one group per iteration
    CpAsyncWait<1>();
    __syncthreads();  // tile j (and the Q tile) visible to every warp
    const int k0 = j * kBk;
    if (k0 <= w_max_lim) {  // else every key of the tile is masked for this warp
      const uint32_t ks = k_s + (j & 1) * kTileBytes, vs = v_s + (j & 1) * kTileBytes;

      // S = Q Kᵀ (log2 domain).
      float s[MT][kNTiles][4];
#pragma unroll
      for (int m = 0; m < MT; ++m)
#pragma unroll
        for (int n = 0; n < kNTiles; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e) s[m][n][e] = 0.f;
#pragma unroll
      for (int kk = 0; kk < kKSteps; ++kk) {
        uint32_t a[MT][4];
#pragma unroll
        for (int m = 0; m < MT; ++m) {
          if constexpr (kQInRegs) {
#pragma unroll
            for (int e = 0; e < 4; ++e) a[m][e] = qf[m][kk][e];
          } else {
            LdMatrixX4(a[m], q_s + q_off.At(qrow0 + m * 16, kk));
          }
        }
#pragma unroll
        for (int np = 0; np < kNTiles / 2; ++np) {
          uint32_t b[4];  // keys np*16 + [0, 8) -> b[0..1], np*16 + [8, 16) -> b[2..3]
          LdMatrixX4(b, ks + k_off.At(np * 16, kk));
#pragma unroll
          for (int m = 0; m < MT; ++m) {
            Mma16816(s[m][2 * np], a[m], b[0], b[1]);
            Mma16816(s[m][2 * np + 1], a[m], b[2], b[3]);
          }
        }
      }

      // Causal mask (only where some key of the tile lies past some row's limit).
      if (k0 + kBk - 1 > w_min_lim) {
#pragma unroll
        for (int m = 0; m < MT; ++m)
#pragma unroll
          for (int hf = 0; hf < 2; ++hf) {
            const int t = w_first + m * 16 + (lane >> 2) + 8 * hf;
            const int lim = past + min(t, n_new - 1) - k0;  // last visible key in the tile
#pragma unroll
            for (int n = 0; n < kNTiles; ++n)
#pragma unroll
              for (int e = 0; e < 2; ++e) {
                if (n * 8 + 2 * (lane & 3) + e > lim) s[m][n][2 * hf + e] = -INFINITY;
              }
          }
      }

      // Online softmax; a row's 64 scores live in the 4 lanes of a quad. Tile 0 always holds
      // slot 0, visible to every row, so row_max is finite from the first tile on.
      float alpha[MT][2];  // rescale of the old O and row sums per row (1 when the max held)
      bool rescale = false;
#pragma unroll
      for (int m = 0; m < MT; ++m) {
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          float mx = row_max[m][hf];
#pragma unroll
          for (int n = 0; n < kNTiles; ++n) {
            mx = fmaxf(mx, fmaxf(s[m][n][2 * hf], s[m][n][2 * hf + 1]));
          }
          mx = fmaxf(mx, __shfl_xor_sync(internal::kFullMask, mx, 1));
          mx = fmaxf(mx, __shfl_xor_sync(internal::kFullMask, mx, 2));
          rescale |= mx != row_max[m][hf];
          alpha[m][hf] = Exp2(row_max[m][hf] - mx);
          row_max[m][hf] = mx;
        }
      }
      // O is rescaled only when some row of the warp found a new maximum (late tiles rarely do).
      if (__any_sync(internal::kFullMask, rescale)) {
#pragma unroll
        for (int m = 0; m < MT; ++m)
#pragma unroll
          for (int d = 0; d < kDTiles; ++d)
#pragma unroll
            for (int e = 0; e < 4; ++e) o[m][d][e] *= alpha[m][e >> 1];
      }
      uint32_t p[MT][kBk / 16][4];  // P as bf16 A fragments, one per k16 step of P V
#pragma unroll
      for (int m = 0; m < MT; ++m) {
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          const float mx = row_max[m][hf];
          float sum = 0.f;
#pragma unroll
          for (int n = 0; n < kNTiles; ++n) {
            s[m][n][2 * hf] = Exp2(s[m][n][2 * hf] - mx);
            s[m][n][2 * hf + 1] = Exp2(s[m][n][2 * hf + 1] - mx);
            sum += s[m][n][2 * hf] + s[m][n][2 * hf + 1];
          }
          row_sum[m][hf] = row_sum[m][hf] * alpha[m][hf] + sum;
        }
#pragma unroll
        for (int kk = 0; kk < kBk / 16; ++kk) {
          p[m][kk][0] = PackBf16(s[m][2 * kk][0], s[m][2 * kk][1]);
          p[m][kk][1] = PackBf16(s[m][2 * kk][2], s[m][2 * kk][3]);
          p[m][kk][2] = PackBf16(s[m][2 * kk + 1][0], s[m][2 * kk + 1][1]);
          p[m][kk][3] = PackBf16(s[m][2 * kk + 1][2], s[m][2 * kk + 1][3]);
        }
      }

      // O += P V.
#pragma unroll
      for (int kk = 0; kk < kBk / 16; ++kk) {
#pragma unroll
        for (int dp = 0; dp < kDTiles / 2; ++dp) {
          uint32_t b[4];  // dims dp*16 + [0, 8) -> b[0..1], dp*16 + [8, 16) -> b[2..3]
          LdMatrixX4Trans(b, vs + v_off.At(kk * 16, dp));
#pragma unroll
          for (int m = 0; m < MT; ++m) {
            Mma16816(o[m][2 * dp], p[m][kk], b[0], b[1]);
            Mma16816(o[m][2 * dp + 1], p[m][kk], b[2], b[3]);
          }
        }
      }
    }
    __syncthreads();  // every warp is done with stage j & 1 before tile j + 2 overwrites it
  }

#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      float sum = row_sum[m][hf];
      sum += __shfl_xor_sync(internal::kFullMask, sum, 1);
      sum += __shfl_xor_sync(internal::kFullMask, sum, 2);
      const int t = w_first + m * 16 + (lane >> 2) + 8 * hf;
      if (t >= n_new) continue;
      const float inv = 1.0f / sum;
      OutT* dst = out + int64_t{t} * out_stride + static_cast<int64_t>(h) * HD + 2 * (lane & 3);
#pragma unroll
      for (int d = 0; d < kDTiles; ++d) {
        dst[d * 8] = FromFloat<OutT>(o[m][d][2 * hf] * inv);
        dst[d * 8 + 1] = FromFloat<OutT>(o[m][d][2 * hf + 1] * inv);
      }
    }
}

template <int HD, int MT, typename OutT>
absl::Status RunMma(const AttentionShape& shape, const float* q, int64_t n_new,
                    const PagedKvLayer& cache, const int32_t* block_table, int64_t kv_len,
                    const int32_t* head_kv_lens, OutT* out, int64_t out_stride,
                    cudaStream_t stream) {
  auto kernel = FlashPrefillKernel<HD, MT, OutT>;
  constexpr size_t smem = SmemBytes<HD, MT>();
  CUDA_RETURN_IF_ERROR(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  const dim3 grid(static_cast<unsigned>(shape.n_heads),
                  static_cast<unsigned>(internal::CeilDiv(n_new, kQTileRows<MT>)));
  kernel<<<grid, kThreads, smem, stream>>>(
      q, static_cast<int>(n_new), shape.n_heads, shape.n_heads / shape.n_kv_heads, cache.k, cache.v,
      cache.n_kv_heads, block_table, cache.head_table_stride, static_cast<int>(kv_len),
      head_kv_lens, shape.scale * kLog2e, out, out_stride);
  CUDA_RETURN_IF_LAUNCH_ERROR();
  return absl::OkStatus();
}

// 128-row CTAs (2 m16 tiles per warp: each K/V fragment read from shared memory feeds two MMAs)
// once they make more than 3 CTAs per SM (2 fit at a time); below that, 64-row CTAs spread the
// work wider (measured on an H100, docs/benchmarks.md: e.g. 9 heads x 4K tokens, 213 vs 179
// TFLOP/s; 32 heads x 4K, 298 vs 254 the other way).
bool UseTwoMTiles(const AttentionShape& shape, int64_t n_new) {
  int dev = 0, sms = 132;
  if (cudaGetDevice(&dev) == cudaSuccess) {
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  }
  return internal::CeilDiv(n_new, 128) * shape.n_heads > 3 * sms;
}

template <int HD, typename OutT>
absl::Status RunHd(const AttentionShape& shape, const float* q, int64_t n_new,
                   const PagedKvLayer& cache, const int32_t* block_table, int64_t kv_len,
                   const int32_t* head_kv_lens, OutT* out, int64_t out_stride,
                   cudaStream_t stream) {
  if (UseTwoMTiles(shape, n_new)) {
    return RunMma<HD, 2>(shape, q, n_new, cache, block_table, kv_len, head_kv_lens, out, out_stride,
                         stream);
  }
  return RunMma<HD, 1>(shape, q, n_new, cache, block_table, kv_len, head_kv_lens, out, out_stride,
                       stream);
}

bool Aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

template <typename OutT>
absl::Status Prefill(const AttentionShape& shape, const float* q, int64_t n_new,
                     const PagedKvLayer& cache, const int32_t* block_table, int64_t kv_len,
                     const int32_t* head_kv_lens, OutT* out, int64_t out_stride,
                     cudaStream_t stream) {
  if (absl::Status st = CheckAttentionShape(shape, cache, "cuda prefill_attention"); !st.ok()) {
    return st;
  }
  if (n_new < 1 || kv_len < n_new || internal::CeilDiv(n_new, 64) > 65535 ||
      kv_len > (int64_t{1} << 30) ||
      internal::CeilDiv(kv_len, kKvBlockTokens) > MaxTableBlocks(cache) ||
      out_stride < static_cast<int64_t>(shape.n_heads) * shape.head_dim) {
    return absl::InvalidArgumentError(
        absl::StrCat("cuda prefill_attention: bad lengths n_new=", n_new, " kv_len=", kv_len,
                     " out_stride=", out_stride));
  }
  if (q == nullptr || block_table == nullptr || out == nullptr) {
    return absl::InvalidArgumentError("cuda prefill_attention: null pointer");
  }
  if (!Aligned16(q) || !Aligned16(cache.k) || !Aligned16(cache.v)) {
    return absl::InvalidArgumentError(
        "cuda prefill_attention: q and the cache need 16-byte "
        "alignment");
  }
  if (shape.head_dim == 64) {
    return RunHd<64>(shape, q, n_new, cache, block_table, kv_len, head_kv_lens, out, out_stride,
                     stream);
  }
  return RunHd<128>(shape, q, n_new, cache, block_table, kv_len, head_kv_lens, out, out_stride,
                    stream);
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
                                    cudaStream_t stream, const int32_t* head_kv_lens) {
  return Prefill(shape, q, n_new, cache, block_table, kv_len, head_kv_lens, out, out_stride,
                 stream);
}

absl::Status LaunchPrefillAttention(const AttentionShape& shape, const float* q, int64_t n_new,
                                    const PagedKvLayer& cache, const int32_t* block_table,
                                    int64_t kv_len, __nv_bfloat16* out, int64_t out_stride,
                                    cudaStream_t stream, const int32_t* head_kv_lens) {
  return Prefill(shape, q, n_new, cache, block_table, kv_len, head_kv_lens, out, out_stride,
                 stream);
}

}  // namespace xkv::cuda
