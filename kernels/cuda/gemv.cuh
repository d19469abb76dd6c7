// Small-batch GEMM on the device for decode steps (m <= kGemvMaxRows token rows): y = x · Wᵀ
// with bf16 W [n, k] (the GGUF [out, in] layout) and bf16 x, fp32 accumulation. At m = 1..8 a
// decode step is a matrix-vector product bound by reading W once; these kernels stream W at
// close to the copy bandwidth (cuBLAS's GEMV kernels reach 66-94% of it on the Llama-3-8B
// projections, docs/benchmarks.md) and fuse what follows the product:
//   LaunchGemv        y (fp32) = x·Wᵀ, or y += x·Wᵀ (the residual add of o_proj / ffn_down);
//   LaunchGemvSwiGlu  out (bf16) = silu(x·W_gateᵀ) * (x·W_upᵀ) from a fused [2f, k] gate|up W,
//                     the same formula as LaunchSwiGlu (no fp32 [m, 2f] round trip);
//   LaunchRmsNormGemv / LaunchRmsNormGemvSwiGlu  the same two with the RMSNorm before them fused
//                     in: each block forms x = bf16(RmsNorm(h) * gain) in shared memory from the
//                     fp32 residual stream h (LaunchRmsNorm to bf16, then the GEMV: one launch
//                     instead of two).
// Same math as cpu::LaunchGemm (then cpu::LaunchSwiGlu; after cpu RmsNorm and a bf16 rounding for
// the fused norm); only the fp32 summation order differs.
// `pdl`: launched with programmatic dependent launch (cuda_common.cuh): the kernel starts
// loading W while the previous kernel finishes and waits before it reads x.
#ifndef XKV_KERNELS_CUDA_GEMV_CUH_
#define XKV_KERNELS_CUDA_GEMV_CUH_

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"

namespace xkv::cuda {

inline constexpr int64_t kGemvMaxRows = 8;
// From this many token rows on (and k a multiple of 32) the kernels multiply on tensor cores
// (mma.sync m16n8k16, bf16 in, fp32 accumulation); below, on CUDA cores.
inline constexpr int64_t kGemvMmaMinRows = 5;

// True when LaunchGemv / LaunchGemvSwiGlu take these sizes: 1 <= m <= kGemvMaxRows, k and the
// leading dimensions multiples of 8 (16-byte rows). Pointers must be 16-byte aligned.
bool GemvSupports(int64_t m, int64_t k, int64_t ldx, int64_t ldw);

// x: device bf16 [m, k], rows `ldx` apart; w: device bf16 [n, k], rows `ldw` apart;
// y: device fp32 [m, n], rows `ldy` apart (>= n); must not overlap x or w.
absl::Status LaunchGemv(const __nv_bfloat16* x, int64_t ldx, const __nv_bfloat16* w, int64_t ldw,
                        float* y, int64_t ldy, int64_t m, int64_t n, int64_t k, bool accumulate,
                        bool pdl, cudaStream_t stream);

// w: device bf16 [2 f, k]: rows [0, f) gate, [f, 2f) up; out: device bf16 [m, f], rows `ld_out`
// apart (>= f), must not overlap x or w.
absl::Status LaunchGemvSwiGlu(const __nv_bfloat16* x, int64_t ldx, const __nv_bfloat16* w,
                              int64_t ldw, __nv_bfloat16* out, int64_t ld_out, int64_t m, int64_t f,
                              int64_t k, bool pdl, cudaStream_t stream);

// h: device fp32 [m, k], rows `ldh` apart (ldh >= k, a multiple of 4; 16-byte aligned), the
// residual stream; gain: device fp32 [k] (16-byte aligned); eps >= 0; m * k <= 24576 (the bf16
// inputs stay in 48 KiB of shared memory: k <= 3072 at m = 8). Each token row's GEMV input is
// bf16((h * rsqrt(mean(h^2) + eps)) * gain), as LaunchRmsNorm's bf16 output. y and out as above
// (no accumulate: the projections after a norm overwrite); must not overlap h.
absl::Status LaunchRmsNormGemv(const float* h, int64_t ldh, const float* gain, float eps,
                               const __nv_bfloat16* w, int64_t ldw, float* y, int64_t ldy,
                               int64_t m, int64_t n, int64_t k, bool pdl, cudaStream_t stream);
absl::Status LaunchRmsNormGemvSwiGlu(const float* h, int64_t ldh, const float* gain, float eps,
                                     const __nv_bfloat16* w, int64_t ldw, __nv_bfloat16* out,
                                     int64_t ld_out, int64_t m, int64_t f, int64_t k, bool pdl,
                                     cudaStream_t stream);

}  // namespace xkv::cuda

#endif  // XKV_KERNELS_CUDA_GEMV_CUH_
