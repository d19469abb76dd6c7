// GGUF tensor data (raw file bytes, uploaded as-is) dequantized on the device.
// Block formats as in kernels/cpu/dequant.cc: Q8_0, Q4_0, Q4_1 (32 elements per block), F16, BF16,
// F32 (K-quants are not taken here: the CUDA engine dequantizes them on the host and uploads fp32).
// Each element is computed in fp32 exactly as the CPU reference does, then rounded once
// (round-to-nearest-even) to bf16, so results equal bf16(cpu::DequantizeToF32) up to FMA
// contraction in Q4_1 (<= 1 bf16 ulp).
#ifndef XKV_KERNELS_CUDA_DEQUANT_CUH_
#define XKV_KERNELS_CUDA_DEQUANT_CUH_

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/ggml_types.h"

namespace xkv::cuda {

// src: device bytes of `n` elements of `type` (n a multiple of the block size; any alignment).
// dst: device bf16 [n] (or fp32 [n]); must not overlap src.
// F32 -> bf16 through this call is also the plain fp32 -> bf16 conversion of activations.
absl::Status DequantizeToBf16(GgmlType type, const void* src, int64_t n, __nv_bfloat16* dst,
                              cudaStream_t stream);
absl::Status DequantizeToF32(GgmlType type, const void* src, int64_t n, float* dst,
                             cudaStream_t stream);

}  // namespace xkv::cuda

#endif  // XKV_KERNELS_CUDA_DEQUANT_CUH_
