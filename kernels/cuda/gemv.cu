#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/gemv.cuh"

namespace xkv::cuda {
namespace {

constexpr int kWarps = 4;  // one output row per warp
constexpr int kThreads = 32 * kWarps;
// 16-byte W loads per lane and W row per iteration, double-buffered (8 measured slower on the
// 4096-wide rows of an H100).
template <bool kGlu>
constexpr int kUnroll = 4;

// W is read once per step: keep it out of L1 (x and the KV cache live there and in L2).
__device__ __forceinline__ uint4 LoadStreaming(const uint4* p) {
  uint4 r;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
               : "l"(p));
  return r;
}

__device__ __forceinline__ float Dot8(const uint4& a, const uint4& b, float acc) {
  const __nv_bfloat162* a2 = reinterpret_cast<const __nv_bfloat162*>(&a);
  const __nv_bfloat162* b2 = reinterpret_cast<const __nv_bfloat162*>(&b);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 fa = __bfloat1622float2(a2[i]), fb = __bfloat1622float2(b2[i]);
    acc = fmaf(fa.x, fb.x, acc);
    acc = fmaf(fa.y, fb.y, acc);
  }
  return acc;
}

// grid.x = ceil(n / kWarps); warp w of block b computes output row r = b * kWarps + w for all M
// token rows: lanes stride over the row's 16-byte chunks, then a warp sum. kGlu: the warp also
// reads up row r + n and writes silu(gate) * up as bf16 to y16; otherwise fp32 to y.
template <int M, bool kGlu>
__global__ void __launch_bounds__(kThreads)
    GemvKernel(const __nv_bfloat16* __restrict__ x, int64_t ldx,
               const __nv_bfloat16* __restrict__ w, int64_t ldw, int64_t n, int64_t k,
               float* __restrict__ y, __nv_bfloat16* __restrict__ y16, int64_t ldy,
               bool accumulate) {
  constexpr int R = kGlu ? 2 : 1;
  internal::LaunchDependents();
  const int lane = threadIdx.x & 31;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (r >= n) return;
  const int64_t chunks = k >> 3;
  const uint4* wrow[R];
  wrow[0] = reinterpret_cast<const uint4*>(w + r * ldw);
  if constexpr (kGlu) wrow[R - 1] = reinterpret_cast<const uint4*>(w + (r + n) * ldw);
  auto load = [&](uint4(&dst)[R][kUnroll<kGlu>], int64_t c0) {
#pragma unroll
    for (int u = 0; u < kUnroll<kGlu>; ++u) {
      const int64_t c = c0 + 32 * u;
#pragma unroll
      for (int j = 0; j < R; ++j) dst[j][u] = c < chunks ? LoadStreaming(wrow[j] + c) : uint4{};
    }
  };
  uint4 cur[R][kUnroll<kGlu>];
  load(cur, lane);  // W does not depend on the previous kernel: start before waiting on it
  internal::GridDependencyWait();
  float acc[R][M];
#pragma unroll
  for (int j = 0; j < R; ++j) {
#pragma unroll
    for (int m = 0; m < M; ++m) acc[j][m] = 0.f;
  }
  for (int64_t c0 = lane; c0 < chunks; c0 += 32 * kUnroll<kGlu>) {
    uint4 next[R][kUnroll<kGlu>];
    load(next, c0 + 32 * kUnroll<kGlu>);
#pragma unroll
    for (int u = 0; u < kUnroll<kGlu>; ++u) {
      const int64_t c = c0 + 32 * u;
      if (c >= chunks) break;
#pragma unroll
      for (int m = 0; m < M; ++m) {
        const uint4 xv = __ldg(reinterpret_cast<const uint4*>(x + m * ldx) + c);
#pragma unroll
        for (int j = 0; j < R; ++j) acc[j][m] = Dot8(cur[j][u], xv, acc[j][m]);
      }
    }
#pragma unroll
    for (int j = 0; j < R; ++j) {
#pragma unroll
      for (int u = 0; u < kUnroll<kGlu>; ++u) cur[j][u] = next[j][u];
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
      y16[m * ldy + r] = __float2bfloat16_rn(g / (1.0f + expf(-g)) * u);  // as SwiGluKernel
    } else {
      y[m * ldy + r] = accumulate ? y[m * ldy + r] + acc[0][m] : acc[0][m];
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
  const dim3 grid(static_cast<unsigned>(internal::CeilDiv(n, kWarps)));
  cudaError_t err = cudaSuccess;
  switch (m) {
#define XKV_GEMV_ROWS(M)                                                                       \
  case M:                                                                                      \
    err = internal::LaunchKernel(pdl, GemvKernel<M, kGlu>, grid, dim3(kThreads), 0, stream, x, \
                                 ldx, w, ldw, n, k, y, y16, ldy, accumulate);                  \
    break;
    XKV_GEMV_ROWS(1)
    XKV_GEMV_ROWS(2)
    XKV_GEMV_ROWS(3)
    XKV_GEMV_ROWS(4)
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
