#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/gemv.cuh"

namespace xkv::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
// 16-byte W loads per lane and W row per iteration, double-buffered (8 measured slower on the
// 4096-wide rows of an H100).
constexpr int kUnroll = 4;
// The fused-norm kernels keep the m bf16 input rows in (default-limit: 48 KiB with the static)
// shared memory, next to the rows' scales (NormRowsToShared).
constexpr size_t kMaxNormSharedBytes = 48 * 1024 - kGemvMaxRows * sizeof(float);

// W is read once per step: keep it out of L1 (x and the KV cache live there and in L2).
__device__ __forceinline__ uint4 LoadStreaming(const uint4* p) {
  uint4 r;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
               : "l"(p));
  return r;
}

// With kNorm, x is not read: each token row's input is bf16(RmsNorm(h) * gain), the LaunchRmsNorm
// (bf16 out) formula. The block's warps first share out the rows' sums of squares, then the block
// writes the m bf16 input rows to shared memory once (h is L2-resident: [m <= 8, k] fp32), and
// the product reads them there as the plain kernel reads x (no per-warp conversion).
struct NormInput {
  const float* h = nullptr;  // fp32 [m, k], rows ldh apart
  int64_t ldh = 0;
  const float* gain = nullptr;  // fp32 [k]
  float eps = 0.f;
};

// The kNorm prologue of both kernels (every thread of the block calls it): x_shared[r * (k / 8) +
// c] = 8 bf16 of token row r's input, r < m. Ends with a block barrier.
template <int kBlockWarps>
__device__ __forceinline__ void NormRowsToShared(const NormInput& norm, int m, int64_t k,
                                                 uint4* x_shared) {
  __shared__ float row_scale[kGemvMaxRows];
  const int lane = threadIdx.x & 31;
  const int64_t chunks = k >> 3;
  for (int r = threadIdx.x >> 5; r < m; r += kBlockWarps) {
    const float4* hr = reinterpret_cast<const float4*>(norm.h + r * norm.ldh);
    float sum = 0.f;
    for (int64_t i = lane; i < (k >> 2); i += 32) {
      const float4 v = hr[i];
      sum += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
    }
    sum = internal::WarpSum(sum);
    if (lane == 0) row_scale[r] = rsqrtf(sum / static_cast<float>(k) + norm.eps);
  }
  __syncthreads();
  for (int64_t i = threadIdx.x; i < m * chunks; i += 32 * kBlockWarps) {
    const int64_t r = i / chunks, c = i - r * chunks;
    const float4* hp = reinterpret_cast<const float4*>(norm.h + r * norm.ldh) + 2 * c;
    const float4* gp = reinterpret_cast<const float4*>(norm.gain) + 2 * c;
    const float4 h0 = hp[0], h1 = hp[1], g0 = __ldg(gp), g1 = __ldg(gp + 1);
    const float scale = row_scale[r];
    auto pack = [&](float a, float ga, float b, float gb) {  // as RmsNormVecKernel's bf16 out
      const __nv_bfloat162 v = __halves2bfloat162(__float2bfloat16_rn((a * scale) * ga),
                                                  __float2bfloat16_rn((b * scale) * gb));
      return *reinterpret_cast<const uint32_t*>(&v);
    };
    x_shared[i] = uint4{pack(h0.x, g0.x, h0.y, g0.y), pack(h0.z, g0.z, h0.w, g0.w),
                        pack(h1.x, g1.x, h1.y, g1.y), pack(h1.z, g1.z, h1.w, g1.w)};
  }
  __syncthreads();
}

// grid.x = ceil(n / (kWarps * RW)) (kGlu: ceil(n / kWarps)). Each warp owns R weight rows for all
// M token rows: lanes stride over the rows' 16-byte chunks, then a warp sum per (row, token).
// kGlu: rows r and r + n (gate, up); silu(gate) * up goes to y16 as bf16. Otherwise RW
// consecutive rows, fp32 to y; RW = 2 at M >= 2 shares each x chunk's conversion over two rows.
template <int M, bool kGlu, int RW, bool kNorm>
__global__ void __launch_bounds__(kThreads)
    GemvKernel(const __nv_bfloat16* __restrict__ x, int64_t ldx, NormInput norm,
               const __nv_bfloat16* __restrict__ w, int64_t ldw, int64_t n, int64_t k,
               float* __restrict__ y, __nv_bfloat16* __restrict__ y16, int64_t ldy,
               bool accumulate) {
  constexpr int R = kGlu ? 2 : RW;
  constexpr int U = kUnroll;
  internal::LaunchDependents();
  const int lane = threadIdx.x & 31;
  const int64_t warp_id = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  const int64_t r0 = kGlu ? warp_id : warp_id * RW;
  const bool active = r0 < n;
  if (!kNorm && !active) return;  // with kNorm the warp still takes part in the row scales
  const int64_t chunks = k >> 3;
  const uint4* wrow[R];
#pragma unroll
  for (int j = 0; j < R; ++j) {
    int64_t row = kGlu ? r0 + j * n : (r0 + j < n ? r0 + j : r0);  // past n: reread r0
    if (!active) row = 0;
    wrow[j] = reinterpret_cast<const uint4*>(w + row * ldw);
  }
  auto load = [&](uint4(&dst)[R][U], int64_t c0) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t c = c0 + 32 * u;
#pragma unroll
      for (int j = 0; j < R; ++j) dst[j][u] = c < chunks ? LoadStreaming(wrow[j] + c) : uint4{};
    }
  };
  uint4 cur[R][U];
  // W does not depend on the previous kernel: start before waiting on it (an idle warp loads
  // nothing).
  load(cur, active ? lane : chunks);
  internal::GridDependencyWait();
  [[maybe_unused]] extern __shared__ uint4 x_shared[];  // kNorm: bf16 [M][chunks]
  if constexpr (kNorm) {
    NormRowsToShared<kWarps>(norm, M, k, x_shared);
    if (!active) return;
  }
  auto x_chunk = [&](int m, int64_t c) {
    if constexpr (kNorm) {
      return x_shared[m * chunks + c];
    } else {
      return __ldg(reinterpret_cast<const uint4*>(x + m * ldx) + c);
    }
  };
  float acc[R][M];
#pragma unroll
  for (int j = 0; j < R; ++j) {
#pragma unroll
    for (int m = 0; m < M; ++m) acc[j][m] = 0.f;
  }
  for (int64_t c0 = lane; c0 < chunks; c0 += 32 * U) {
    uint4 next[R][U];
    load(next, c0 + 32 * U);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t c = c0 + 32 * u;
      if (c >= chunks) break;
      float wf[R][8];
#pragma unroll
      for (int j = 0; j < R; ++j) internal::UnpackBf16x8(cur[j][u], wf[j]);
#pragma unroll
      for (int m = 0; m < M; ++m) {
        float xf[8];
        internal::UnpackBf16x8(x_chunk(m, c), xf);
#pragma unroll
        for (int j = 0; j < R; ++j) {
#pragma unroll
          for (int e = 0; e < 8; ++e) acc[j][m] = fmaf(wf[j][e], xf[e], acc[j][m]);
        }
      }
    }
#pragma unroll
    for (int j = 0; j < R; ++j) {
#pragma unroll
      for (int u = 0; u < U; ++u) cur[j][u] = next[j][u];
    }
  }
#pragma unroll
  for (int j = 0; j < R; ++j) {
#pragma unroll
    for (int m = 0; m < M; ++m) acc[j][m] = internal::WarpSum(acc[j][m]);
  }
  if (lane != 0) return;
#pragma unroll
  for (int m = 0; m < M; ++m) {
    if constexpr (kGlu) {
      const float g = acc[0][m], u = acc[R - 1][m];
      y16[m * ldy + r0] = __float2bfloat16_rn(g / (1.0f + expf(-g)) * u);  // as SwiGluKernel
    } else {
#pragma unroll
      for (int j = 0; j < R; ++j) {
        if (r0 + j >= n) break;
        float* out = y + m * ldy + r0 + j;
        *out = accumulate ? *out + acc[j][m] : acc[j][m];
      }
    }
  }
}

// Tensor-core variant for kGemvMmaMinRows..8 token rows (k a multiple of 32): one block per tile
// of kMmaTileRows weight rows (kGlu: that many gate rows and their up rows), its kMmaWarps warps
// sharing out the tile's 32-wide k blocks (warp w takes blocks w, w + kMmaWarps, ...). Per k
// block lane (g = lane / 4, t = lane % 4) loads one 16-byte chunk, k in [32 b + 8 t, 32 b + 8 t +
// 8), of its weight rows and of token row g (zero for g >= m) and feeds two mma.m16n8k16: chunk
// elements 0-3 to the first, 4-7 to the second. The PTX fragments give lane (g, t) the k columns
// 2t, 2t+1, 2t+8, 2t+9 of A and the same rows of B; mapping them to chunk elements 0, 1, 2, 3
// permutes k identically in A and B, which the dot product does not see.
//   16-row tiles: A = weights (rows n0 + g, n0 + g + 8), B = token rows (8 tokens); D[row][token].
//   8-row tiles (twice the blocks: every SmolLM2 projection has fewer than 132 16-row tiles):
//   A = token rows (g; A rows 8..15 are zeros), B = weights (row n0 + g); D[token][row], of
//   which lane (g, t) keeps token g, rows n0 + 2t, n0 + 2t + 1 (c0, c1; c2, c3 are zeros).
// The warps' D fragments are summed through shared memory in warp order: deterministic, PDL or
// not.
constexpr int kMmaTileRows = 8;  // or 16
constexpr int kMmaWarps = 8;
constexpr int kMmaThreads = 32 * kMmaWarps;
constexpr int kMmaRowsPerLane = kMmaTileRows / 8;    // weight rows per lane and tile
constexpr int kMmaOut = kMmaTileRows == 16 ? 4 : 2;  // useful D values per lane
static_assert(kMmaTileRows == 8 || kMmaTileRows == 16);

// D += the lane's weight chunks wc[kMmaRowsPerLane] times its token chunk xc, over their 8 k.
__device__ __forceinline__ void MmaChunk(float (&d)[4], const uint4* wc, const uint4& xc) {
  if constexpr (kMmaTileRows == 16) {
    internal::Mma16816(d, {wc[0].x, wc[1].x, wc[0].y, wc[1].y}, xc.x, xc.y);
    internal::Mma16816(d, {wc[0].z, wc[1].z, wc[0].w, wc[1].w}, xc.z, xc.w);
  } else {
    internal::Mma16816(d, {xc.x, 0u, xc.y, 0u}, wc[0].x, wc[0].y);
    internal::Mma16816(d, {xc.z, 0u, xc.w, 0u}, wc[0].z, wc[0].w);
  }
}

// grid.x = ceil(n / kMmaTileRows); m in [1, 8] (tokens m..7 of the mma are zeros). Same arguments
// and outputs as GemvKernel.
template <bool kGlu, bool kNorm>
__global__ void __launch_bounds__(kMmaThreads)
    GemvMmaKernel(const __nv_bfloat16* __restrict__ x, int64_t ldx, NormInput norm,
                  const __nv_bfloat16* __restrict__ w, int64_t ldw, int m, int64_t n, int64_t k,
                  float* __restrict__ y, __nv_bfloat16* __restrict__ y16, int64_t ldy,
                  bool accumulate) {
  constexpr int D = kGlu ? 2 : 1;         // D fragments (gate, up)
  constexpr int R = D * kMmaRowsPerLane;  // 16-byte W chunks per lane and k block
  constexpr int U = 8 / R;                // k blocks per warp in flight, double-buffered
  internal::LaunchDependents();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kMmaTileRows;
  const int64_t blocks = k >> 5;
  const uint4* wrow[R];  // [fragment d][row h]: row n0 + g + 8h (+ n for up)
#pragma unroll
  for (int j = 0; j < R; ++j) {
    int64_t row = n0 + g + 8 * (j % kMmaRowsPerLane);
    if (row >= n) row = n0;  // past n: reread n0, not written
    if (j >= kMmaRowsPerLane) row += n;
    wrow[j] = reinterpret_cast<const uint4*>(w + row * ldw) + t;
  }
  // k block b of this warp's i-th: warp + kMmaWarps * i.
  auto load = [&](uint4(&dst)[U][R], int64_t i0) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t b = warp + kMmaWarps * (i0 + u);
#pragma unroll
      for (int j = 0; j < R; ++j) dst[u][j] = b < blocks ? LoadStreaming(wrow[j] + 4 * b) : uint4{};
    }
  };
  uint4 cur[U][R];
  load(cur, 0);  // weights: before waiting on the previous kernel
  internal::GridDependencyWait();
  [[maybe_unused]] extern __shared__ uint4 x_shared[];  // kNorm: bf16 [m][k / 8]
  if constexpr (kNorm) NormRowsToShared<kMmaWarps>(norm, m, k, x_shared);
  const bool has_token = g < m;
  const uint4* xrow = nullptr;
  if constexpr (kNorm) {
    xrow = x_shared + (has_token ? g : 0) * (k >> 3) + t;
  } else {
    xrow = reinterpret_cast<const uint4*>(x + (has_token ? g : 0) * ldx) + t;
  }
  float acc[D][4] = {};
  for (int64_t i0 = 0; warp + kMmaWarps * i0 < blocks; i0 += U) {
    uint4 next[U][R];
    load(next, i0 + U);
    uint4 xc[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t b = warp + kMmaWarps * (i0 + u);
      if (!has_token || b >= blocks) {
        xc[u] = uint4{};
      } else if constexpr (kNorm) {
        xc[u] = xrow[4 * b];
      } else {
        xc[u] = __ldg(xrow + 4 * b);
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (warp + kMmaWarps * (i0 + u) >= blocks) break;  // warp-uniform
#pragma unroll
      for (int d = 0; d < D; ++d) MmaChunk(acc[d], &cur[u][d * kMmaRowsPerLane], xc[u]);
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
#pragma unroll
      for (int j = 0; j < R; ++j) cur[u][j] = next[u][j];
    }
  }
  // Warps 1.. leave their useful D values, [value][lane] (no bank conflicts).
  __shared__ float partial[kMmaWarps - 1][D * kMmaOut][32];
  if (warp > 0) {
#pragma unroll
    for (int d = 0; d < D; ++d) {
#pragma unroll
      for (int e = 0; e < kMmaOut; ++e) partial[warp - 1][kMmaOut * d + e][lane] = acc[d][e];
    }
  }
  __syncthreads();
  if (warp > 0) return;
#pragma unroll 1
  for (int v = 0; v < kMmaWarps - 1; ++v) {
#pragma unroll
    for (int d = 0; d < D; ++d) {
#pragma unroll
      for (int e = 0; e < kMmaOut; ++e) acc[d][e] += partial[v][kMmaOut * d + e][lane];
    }
  }
#pragma unroll
  for (int e = 0; e < kMmaOut; ++e) {
    const int64_t row = kMmaTileRows == 16 ? n0 + g + 8 * (e >> 1) : n0 + 2 * t + e;
    const int token = kMmaTileRows == 16 ? 2 * t + (e & 1) : g;
    if (row >= n || token >= m) continue;
    if constexpr (kGlu) {
      const float gt = acc[0][e], up = acc[D - 1][e];
      y16[token * ldy + row] =
          __float2bfloat16_rn(gt / (1.0f + expf(-gt)) * up);  // as SwiGluKernel
    } else {
      float* out = y + token * ldy + row;
      *out = accumulate ? *out + acc[0][e] : acc[0][e];
    }
  }
}

template <bool kGlu, bool kNorm>
absl::Status Launch(const __nv_bfloat16* x, int64_t ldx, const NormInput& norm,
                    const __nv_bfloat16* w, int64_t ldw, float* y, __nv_bfloat16* y16, int64_t ldy,
                    int64_t m, int64_t n, int64_t k, bool accumulate, bool pdl,
                    cudaStream_t stream) {
  const char* who = kNorm ? (kGlu ? "cuda rms_norm_gemv_swiglu" : "cuda rms_norm_gemv")
                          : (kGlu ? "cuda gemv_swiglu" : "cuda gemv");
  const int64_t ld_in = kNorm ? norm.ldh : ldx;
  // h (fp32) is read as float4: its rows need only be 4 floats apart.
  const bool ld_ok = kNorm ? GemvSupports(m, k, k, ldw) && ld_in >= k && ld_in % 4 == 0
                           : GemvSupports(m, k, ldx, ldw);
  if (!ld_ok || n < 1 || ldy < n || n > (int64_t{1} << 32)) {
    return absl::InvalidArgumentError(absl::StrCat(who, ": bad sizes m=", m, " (1..", kGemvMaxRows,
                                                   ") n=", n, " k=", k, " ld=", ld_in, "/", ldw,
                                                   "/", ldy, " (k, ldw multiples of 8)"));
  }
  void* out = kGlu ? static_cast<void*>(y16) : static_cast<void*>(y);
  const void* in = kNorm ? static_cast<const void*>(norm.h) : static_cast<const void*>(x);
  if (in == nullptr || w == nullptr || out == nullptr || (kNorm && norm.gain == nullptr)) {
    return absl::InvalidArgumentError(absl::StrCat(who, ": null pointer"));
  }
  if (kNorm && !(norm.eps >= 0.f)) {
    return absl::InvalidArgumentError(absl::StrCat(who, ": eps ", norm.eps, " (want >= 0)"));
  }
  // kNorm: the m bf16 input rows in shared memory.
  const size_t smem = kNorm ? static_cast<size_t>(m * k) * sizeof(__nv_bfloat16) : 0;
  if (smem > kMaxNormSharedBytes) {
    return absl::InvalidArgumentError(absl::StrCat(who, ": m x k = ", m, " x ", k, " bf16 is ",
                                                   smem, " bytes of shared memory (max ",
                                                   kMaxNormSharedBytes, ")"));
  }
  const uintptr_t addresses = reinterpret_cast<uintptr_t>(in) | reinterpret_cast<uintptr_t>(w) |
                              reinterpret_cast<uintptr_t>(kNorm ? norm.gain : nullptr);
  if (addresses % 16 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(who, kNorm ? ": h, gain and w" : ": x and w", " must be 16-byte aligned"));
  }
  cudaError_t err = cudaSuccess;
  // The mma kernel's shared memory: kNorm's input rows plus the warps' partial sums.
  constexpr size_t kMmaPartialBytes =
      (kMmaWarps - 1) * (kGlu ? 2 : 1) * kMmaOut * 32 * sizeof(float);
  if (m >= kGemvMmaMinRows && k % 32 == 0 && smem + kMmaPartialBytes <= kMaxNormSharedBytes) {
    const dim3 grid(static_cast<unsigned>(internal::CeilDiv(n, kMmaTileRows)));
    CUDA_RETURN_IF_ERROR(internal::LaunchKernel(
        pdl, GemvMmaKernel<kGlu, kNorm>, grid, dim3(kMmaThreads), smem, stream, x, ldx, norm, w,
        ldw, static_cast<int>(m), n, k, y, y16, ldy, accumulate));
    return absl::OkStatus();
  }
  switch (m) {
#define XKV_GEMV_ROWS(M, RW)                                                                       \
  case M: {                                                                                        \
    constexpr int kRw = kGlu ? 1 : RW;                                                             \
    const dim3 grid(static_cast<unsigned>(internal::CeilDiv(n, kWarps * kRw)));                    \
    err = internal::LaunchKernel(pdl, GemvKernel<M, kGlu, kRw, kNorm>, grid, dim3(kThreads), smem, \
                                 stream, x, ldx, norm, w, ldw, n, k, y, y16, ldy, accumulate);     \
    break;                                                                                         \
  }
    XKV_GEMV_ROWS(1, 1)
    XKV_GEMV_ROWS(2, 2)
    XKV_GEMV_ROWS(3, 2)
    XKV_GEMV_ROWS(4, 2)
    XKV_GEMV_ROWS(5, 2)
    XKV_GEMV_ROWS(6, 2)
    XKV_GEMV_ROWS(7, 2)
    XKV_GEMV_ROWS(8, 2)
#undef XKV_GEMV_ROWS
  }
  CUDA_RETURN_IF_ERROR(err);
  return absl::OkStatus();
}

}  // namespace

bool GemvSupports(int64_t m, int64_t k, int64_t ldx, int64_t ldw) {
  return m >= 1 && m <= kGemvMaxRows && k >= 8 && k % 8 == 0 && ldx >= k && ldw >= k &&
         ldx % 8 == 0 && ldw % 8 == 0;
}

absl::Status LaunchGemv(const __nv_bfloat16* x, int64_t ldx, const __nv_bfloat16* w, int64_t ldw,
                        float* y, int64_t ldy, int64_t m, int64_t n, int64_t k, bool accumulate,
                        bool pdl, cudaStream_t stream) {
  return Launch<false, false>(x, ldx, {}, w, ldw, y, nullptr, ldy, m, n, k, accumulate, pdl,
                              stream);
}

absl::Status LaunchGemvSwiGlu(const __nv_bfloat16* x, int64_t ldx, const __nv_bfloat16* w,
                              int64_t ldw, __nv_bfloat16* out, int64_t ld_out, int64_t m, int64_t f,
                              int64_t k, bool pdl, cudaStream_t stream) {
  return Launch<true, false>(x, ldx, {}, w, ldw, nullptr, out, ld_out, m, f, k, false, pdl, stream);
}

absl::Status LaunchRmsNormGemv(const float* h, int64_t ldh, const float* gain, float eps,
                               const __nv_bfloat16* w, int64_t ldw, float* y, int64_t ldy,
                               int64_t m, int64_t n, int64_t k, bool pdl, cudaStream_t stream) {
  return Launch<false, true>(nullptr, 0, {h, ldh, gain, eps}, w, ldw, y, nullptr, ldy, m, n, k,
                             false, pdl, stream);
}

absl::Status LaunchRmsNormGemvSwiGlu(const float* h, int64_t ldh, const float* gain, float eps,
                                     const __nv_bfloat16* w, int64_t ldw, __nv_bfloat16* out,
                                     int64_t ld_out, int64_t m, int64_t f, int64_t k, bool pdl,
                                     cudaStream_t stream) {
  return Launch<true, true>(nullptr, 0, {h, ldh, gain, eps}, w, ldw, nullptr, out, ld_out, m, f, k,
                            false, pdl, stream);
}

}  // namespace xkv::cuda
