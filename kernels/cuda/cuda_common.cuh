// Device-side helpers shared by the .cu files of kernels/cuda (not a public interface).
#ifndef XKV_KERNELS_CUDA_CUDA_COMMON_CUH_
#define XKV_KERNELS_CUDA_CUDA_COMMON_CUH_

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>

namespace xkv::cuda::internal {

inline constexpr unsigned kFullMask = 0xffffffffu;

__host__ __device__ inline int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

__host__ __device__ inline int64_t Min64(int64_t a, int64_t b) { return a < b ? a : b; }
__host__ __device__ inline int64_t Max64(int64_t a, int64_t b) { return a > b ? a : b; }

__device__ __forceinline__ float ToFloat(float x) { return x; }
__device__ __forceinline__ float ToFloat(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T FromFloat(float x);
template <>
__device__ __forceinline__ float FromFloat<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __nv_bfloat16 FromFloat<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

__device__ __forceinline__ float WarpSum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}

__device__ __forceinline__ float WarpMax(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}

// Sum over the whole block (blockDim.x a multiple of 32, <= 1024); every thread gets the result.
// `scratch` holds >= 33 floats of shared memory; the call ends with the block synchronised.
__device__ inline float BlockSum(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = WarpSum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float x = lane < warps ? scratch[lane] : 0.f;
    x = WarpSum(x);
    if (lane == 0) scratch[32] = x;
  }
  __syncthreads();
  return scratch[32];
}

__device__ inline float BlockMax(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = WarpMax(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float x = lane < warps ? scratch[lane] : -INFINITY;
    x = WarpMax(x);
    if (lane == 0) scratch[32] = x;
  }
  __syncthreads();
  return scratch[32];
}

// 8 bf16 packed in 16 bytes (already loaded) -> 8 floats.
__device__ __forceinline__ void UnpackBf16x8(const uint4& raw, float* out) {
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 f = __bfloat1622float2(h[i]);
    out[2 * i] = f.x;
    out[2 * i + 1] = f.y;
  }
}

// 8 consecutive bf16 (16 bytes, 16-byte aligned) -> 8 floats.
__device__ __forceinline__ void LoadBf16x8(const __nv_bfloat16* p, float* out) {
  UnpackBf16x8(*reinterpret_cast<const uint4*>(p), out);
}

// Programmatic dependent launch (sm_90; architecture.md §8): a kernel launched with
// LaunchKernel(pdl = true, ...) may start while the previous kernel of the stream is still
// running. Before GridDependencyWait() it may only read data no earlier kernel writes (weights);
// after it, everything earlier kernels wrote is visible. Without the launch attribute the wait
// returns at once. LaunchDependents() lets the next PDL kernel start (its blocks then wait in
// their own GridDependencyWait); our kernels call it first thing.
__device__ __forceinline__ void GridDependencyWait() {
  asm volatile("griddepcontrol.wait;" ::: "memory");
}
__device__ __forceinline__ void LaunchDependents() {
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
}

// Float ordered as an unsigned integer: a < b (as floats, no NaN) iff Key(a) < Key(b).
__device__ __forceinline__ uint32_t OrderedKey(float f) {
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Launches kernel<<<grid, block, smem, stream>>>(args...), with programmatic stream
// serialization when `pdl` (the kernel must call GridDependencyWait before touching what earlier
// kernels write). Returns the launch error.
template <typename... KernelArgs, typename... Args>
cudaError_t LaunchKernel(bool pdl, void (*kernel)(KernelArgs...), dim3 grid, dim3 block,
                         size_t smem, cudaStream_t stream, Args&&... args) {
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[0].val.programmaticStreamSerializationAllowed = 1;
  config.attrs = pdl ? attribute : nullptr;
  config.numAttrs = pdl ? 1 : 0;
  return cudaLaunchKernelEx(&config, kernel, static_cast<KernelArgs>(args)...);
}

// Tensor cores (sm_80+): c[16x8] += a[16x16] (row) * b[16x8] (col) with bf16 operands and fp32
// accumulators, mma.sync m16n8k16. Lane (g = lane / 4, t = lane % 4): a0 / a1 = rows g / g + 8 at
// k 2t, 2t+1; a2 / a3 the same rows at k 2t+8, 2t+9; b0 / b1 = column g at k 2t.. / 2t+8..;
// c0, c1 = row g, columns 2t, 2t+1; c2, c3 = row g + 8.
__device__ __forceinline__ void Mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats -> bf16x2 (round to nearest even), `lo` in the low half (the lower k / column).
__device__ __forceinline__ uint32_t PackBf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  uint32_t u;
  memcpy(&u, &v, sizeof(u));
  return u;
}

}  // namespace xkv::cuda::internal

#endif  // XKV_KERNELS_CUDA_CUDA_COMMON_CUH_
