// Dequantization of GGML blocks to fp32, and fp32 quantization (for the writer and tests).
#ifndef XKV_KERNELS_CPU_DEQUANT_H_
#define XKV_KERNELS_CPU_DEQUANT_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/ggml_types.h"

namespace xkv::cpu {

// src: `n` elements of `type` (n a multiple of the type's block size); dst: fp32 [n].
absl::Status DequantizeToF32(GgmlType type, const void* src, int64_t n, float* dst);
// src: fp32 [n]; dst: bytes of `type` for n elements (n a multiple of the block size). Q4_0, Q4_1
// and Q8_0 round as ggml's reference quantizers; K-quants use the simpler quantizer described in
// kernels/cpu/kquants.h.
absl::Status QuantizeFromF32(GgmlType type, const float* src, int64_t n, void* dst);

// Per-block minimums of a Q4_1 tensor: src `n` elements of Q4_1 (n % 32 == 0); mins: fp32
// [n / 32]. Used with act_quant's min_correction to reproduce ggml's Q4_1 × Q8_1 products.
absl::Status ExtractQ4_1Mins(const void* src, int64_t n, float* mins);

}  // namespace xkv::cpu

#endif  // XKV_KERNELS_CPU_DEQUANT_H_
