// GGML's K-quants (Q2_K .. Q6_K): super-blocks of 256 elements with an fp16 super-block scale
// (and minimum) and small per-sub-block scales. Layouts as ggml-common.h declares them; the
// dequantizers are ggml's dequantize_row_q{2,3,4,5,6}_K element for element. Every product in them
// is exact in fp32 (fp16 scale x 4-8-bit sub-scale x 2-6-bit value; only Q6_K's d * sc * q may
// round, once), so the results do not depend on FMA contraction. Callers validate arguments:
// kernels/cpu/dequant.h is the public entry point.
#ifndef XKV_KERNELS_CPU_KQUANTS_H_
#define XKV_KERNELS_CPU_KQUANTS_H_

#include <cstdint>

#include "kernels/ggml_types.h"

namespace xkv::cpu {

inline constexpr int64_t kKQuantBlock = 256;  // ggml's QK_K

// True for Q2_K, Q3_K, Q4_K, Q5_K and Q6_K.
bool IsKQuant(GgmlType type);

// src: `blocks` super-blocks of `type` (a K-quant); dst: fp32 [blocks * 256].
void DequantizeKQuant(GgmlType type, const uint8_t* src, int64_t blocks, float* dst);

// x: finite fp32 [blocks * 256]; dst: `blocks` super-blocks of `type` (a K-quant).
// A simpler quantizer than ggml's quantize_row_q*_K_ref (which searches for the sub-block scales
// that minimise a weighted error): each sub-block takes the scale (and minimum) that spans its
// range, the sub-block scales are quantized against the largest one exactly as ggml does, and the
// values are then rounded to nearest against the quantized scales, as ggml's final pass does. The
// blocks are valid for any reader; the bytes differ from llama-quantize's for the same input.
void QuantizeKQuant(GgmlType type, const float* x, int64_t blocks, uint8_t* dst);

}  // namespace xkv::cpu

#endif  // XKV_KERNELS_CPU_KQUANTS_H_
