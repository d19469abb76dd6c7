#include "kernels/cpu/swiglu.h"

#include "absl/strings/str_cat.h"
#include "kernels/cpu/fast_math.h"

namespace xkv::cpu {

absl::Status LaunchSwiGlu(const float* gate, int64_t gate_stride, const float* up,
                          int64_t up_stride, int64_t rows, int64_t dim, float* out,
                          int64_t out_stride) {
  if (rows < 0 || dim <= 0 || gate_stride < dim || up_stride < dim || out_stride < dim) {
    return absl::InvalidArgumentError(absl::StrCat("swiglu: bad sizes rows=", rows, " dim=", dim,
                                                   " strides=", gate_stride, "/", up_stride, "/",
                                                   out_stride));
  }
  if (rows == 0) return absl::OkStatus();
  if (gate == nullptr || up == nullptr || out == nullptr) {
    return absl::InvalidArgumentError("swiglu: null pointer");
  }
  for (int64_t r = 0; r < rows; ++r) {
    const float* g = gate + r * gate_stride;
    const float* u = up + r * up_stride;
    float* o = out + r * out_stride;
    for (int64_t i = 0; i < dim; ++i) {
      o[i] = FastSilu(g[i]) * u[i];
    }
  }
  return absl::OkStatus();
}

}  // namespace xkv::cpu
