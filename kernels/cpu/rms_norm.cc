#include "kernels/cpu/rms_norm.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace xkv::cpu {

absl::Status LaunchRmsNorm(const float* x, const float* weight, int64_t rows, int64_t dim,
                           float eps, float* out) {
  if (rows < 0 || dim <= 0 || !(eps >= 0.f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("rms_norm: bad sizes rows=", rows, " dim=", dim, " eps=", eps));
  }
  if (rows == 0) return absl::OkStatus();
  if (x == nullptr || weight == nullptr || out == nullptr) {
    return absl::InvalidArgumentError("rms_norm: null pointer");
  }
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * dim;
    float* yr = out + r * dim;
    double sum = 0.0;
    for (int64_t i = 0; i < dim; ++i) sum += static_cast<double>(xr[i] * xr[i]);
    const float mean = static_cast<float>(sum / static_cast<double>(dim));
    const float scale = 1.0f / std::sqrt(mean + eps);
    for (int64_t i = 0; i < dim; ++i) yr[i] = (xr[i] * scale) * weight[i];
  }
  return absl::OkStatus();
}

}  // namespace xkv::cpu
