#include "kernels/cpu/random_fill.h"

#include "kernels/cpu/half.h"

namespace xkv::cpu {

absl::Status LaunchRandomFill(uint64_t seed, int64_t n, float step, uint16_t* out) {
  if (n < 0 || (n > 0 && out == nullptr)) {
    return absl::InvalidArgumentError("cpu random_fill: bad arguments");
  }
  for (int64_t i = 0; i < n; ++i) {
    const float v = static_cast<float>(RandomFillInt(seed, static_cast<uint64_t>(i))) * step;
    out[i] = F32ToBf16(v);
  }
  return absl::OkStatus();
}

}  // namespace xkv::cpu
