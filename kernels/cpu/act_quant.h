// Activation rounding as llama.cpp's CPU backend applies it before a product with a quantized
// weight: ggml quantizes the activation row to the weight type's "vec_dot_type" (Q4_0 and Q8_0 →
// Q8_0 blocks, Q4_1 → Q8_1 blocks, K-quants → Q8_K blocks, F16 → fp16, BF16 → bf16, F32 →
// unchanged) and multiplies
// integer blocks. Rounding the fp32 activations the same way and then multiplying with the
// dequantized weights reproduces its products up to fp32 summation order, which is what makes
// xkv's CPU engine produce llama.cpp's text on the same file.
#ifndef XKV_KERNELS_CPU_ACT_QUANT_H_
#define XKV_KERNELS_CPU_ACT_QUANT_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/ggml_types.h"

namespace xkv::cpu {

// The rounding applied to activations multiplied with a weight of `weight_type`.
enum class ActRounding { kNone, kF16, kBf16, kQ8Blocks, kQ8KBlocks };
ActRounding ActRoundingFor(GgmlType weight_type);

// x: fp32 [rows, cols] row-major; out: fp32 [rows, cols] (may alias x). For kQ8Blocks, cols must be
// a multiple of 32: each 32-element block becomes q * fp16(amax / 127) with
// q = round-half-even(x * 127 / amax), as ggml's quantize_row_q8_0 / q8_1.
// For kQ8KBlocks, cols must be a multiple of 256: each 256-element block becomes q * (1 / iscale)
// with iscale = -127 / max (max: the element of largest magnitude, with its sign) and
// q = min(127, round-half-even(x * iscale)), as ggml's quantize_row_q8_K (fp32 scale).
// min_correction: optional fp32 [rows, cols / 32] (kQ8Blocks only). A Q8_1 block also stores its
// sum s = fp16(d * Σq), which ggml multiplies with the minimum of a Q4_1 weight block; the entry is
// s - fp16(d) * Σq, so that out·wᵀ + min_correction·minsᵀ equals ggml's Q4_1 × Q8_1 product.
absl::Status LaunchRoundActivations(ActRounding rounding, const float* x, int64_t rows,
                                    int64_t cols, float* out, float* min_correction = nullptr);

}  // namespace xkv::cpu

#endif  // XKV_KERNELS_CPU_ACT_QUANT_H_
