// RMS normalisation: y = x / sqrt(mean(x^2) + eps) * weight, row by row.
#ifndef XKV_KERNELS_CPU_RMS_NORM_H_
#define XKV_KERNELS_CPU_RMS_NORM_H_

#include <cstdint>

#include "absl/status/status.h"

namespace xkv::cpu {

// x:      fp32 [rows, dim] row-major.
// weight: fp32 [dim] (per-channel gain).
// out:    fp32 [rows, dim]; may alias x exactly (in place).
// The sum of squares is accumulated in double and the scale is 1/sqrtf(mean + eps), as ggml does.
absl::Status LaunchRmsNorm(const float* x, const float* weight, int64_t rows, int64_t dim,
                           float eps, float* out);

}  // namespace xkv::cpu

#endif  // XKV_KERNELS_CPU_RMS_NORM_H_
