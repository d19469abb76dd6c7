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

// W is read once per step: keep it out of L1 (x and the KV cache live there and in L2).
__device__ __forceinline__ uint4 LoadStreaming(const uint4* p) {
  uint4 r;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
               : "l"(p));
  return r;
}

// grid.x = ceil(n / (kWarps * RW)) (kGlu: ceil(n / kWarps)). Each warp owns R weight rows for all
// M token rows: lanes stride over the rows' 16-byte chunks, then a warp sum per (row, token).
// kGlu: rows r and r + n (gate, up); silu(gate) * up goes to y16 as bf16. Otherwise RW
// consecutive rows, fp32 to y; RW = 2 at M >= 2 shares each x chunk's conversion over two rows.
template <int M, bool kGlu, int RW>
__global__ void __launch_bounds__(kThreads)
    GemvKernel(const __nv_bfloat16* __restrict__ x, int64_t ldx,
               const __nv_bfloat16* __restrict__ w, int64_t ldw, int64_t n, int64_t k,
               float* __restrict__ y, __nv_bfloat16* __restrict__ y16, int64_t ldy,
               bool accumulate) {
  constexpr int R = kGlu ? 2 : RW;
  constexpr int U = kUnroll;
  internal::LaunchDependents();
  const int lane = threadIdx.x & 31;
  const int64_t warp_id = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  const int64_t r0 = kGlu ? warp_id : warp_id * RW;
  if (r0 >= n) return;
  const int64_t chunks = k >> 3;
  const uint4* wrow[R];
#pragma unroll
  for (int j = 0; j < R; ++j) {
    const int64_t row = kGlu ? r0 + j * n : (r0 + j < n ? r0 + j : r0);  // past n: reread r0
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
  load(cur, lane);  // W does not depend on the previous kernel: start before waiting on it
  internal::GridDependencyWait();
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
        internal::UnpackBf16x8(__ldg(reinterpret_cast<const uint4*>(x + m * ldx) + c), xf);
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

template <bool kGlu>
absl::Status Launch(const __nv_bfloat16* x, int64_t ldx, const __nv_bfloat16* w, int64_t ldw,
                    float* y, __nv_bfloat16* y16, int64_t ldy, int64_t m, int64_t n, int64_t k,
                    bool accumulate, bool pdl, cudaStream_t stream) {
  const char* who = kGlu ? "cuda gemv_swiglu" : "cuda gemv";
  if (!GemvSupports(m, k, ldx, ldw) || n < 1 || ldy < n || n > (int64_t{1} << 32)) {
    return absl::InvalidArgumentError(absl::StrCat(who, ": bad sizes m=", m, " (1..", kGemvMaxRows,
                                                   ") n=", n, " k=", k, " ld=", ldx, "/", ldw, "/",
                                                   ldy, " (multiples of 8)"));
  }
  void* out = kGlu ? static_cast<void*>(y16) : static_cast<void*>(y);
  if (x == nullptr || w == nullptr || out == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(who, ": null pointer"));
  }
  if ((reinterpret_cast<uintptr_t>(x) | reinterpret_cast<uintptr_t>(w)) % 16 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(who, ": x and w must be 16-byte aligned"));
  }
  cudaError_t err = cudaSuccess;
  switch (m) {
#define XKV_GEMV_ROWS(M, RW)                                                                     \
  case M: {                                                                                      \
    constexpr int kRw = kGlu ? 1 : RW;                                                           \
    const dim3 grid(static_cast<unsigned>(internal::CeilDiv(n, kWarps * kRw)));                  \
    err = internal::LaunchKernel(pdl, GemvKernel<M, kGlu, kRw>, grid, dim3(kThreads), 0, stream, \
                                 x, ldx, w, ldw, n, k, y, y16, ldy, accumulate);                 \
    break;                                                                                       \
  }
    XKV_GEMV_ROWS(1, 1)
    XKV_GEMV_ROWS(2, 2)
    XKV_GEMV_ROWS(3, 2)
    XKV_GEMV_ROWS(4, 2)
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
  return Launch<false>(x, ldx, w, ldw, y, nullptr, ldy, m, n, k, accumulate, pdl, stream);
}

absl::Status LaunchGemvSwiGlu(const __nv_bfloat16* x, int64_t ldx, const __nv_bfloat16* w,
                              int64_t ldw, __nv_bfloat16* out, int64_t ld_out, int64_t m, int64_t f,
                              int64_t k, bool pdl, cudaStream_t stream) {
  return Launch<true>(x, ldx, w, ldw, nullptr, out, ld_out, m, f, k, false, pdl, stream);
}

}  // namespace xkv::cuda
