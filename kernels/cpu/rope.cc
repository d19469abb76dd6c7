#include "kernels/cpu/rope.h"

#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"

namespace xkv::cpu {

absl::Status LaunchRopeCache(const int64_t* positions, int64_t n_tokens, int rope_dims, float base,
                             float* cos_sin, const RopeScaling& scaling) {
  if (n_tokens < 0 || rope_dims <= 0 || rope_dims % 2 != 0 || !(base > 0.f)) {
    return absl::InvalidArgumentError(absl::StrCat("rope_cache: bad arguments n=", n_tokens,
                                                   " rope_dims=", rope_dims, " base=", base));
  }
  if (n_tokens == 0) return absl::OkStatus();
  if (positions == nullptr || cos_sin == nullptr) {
    return absl::InvalidArgumentError("rope_cache: null pointer");
  }
  const int half = rope_dims / 2;
  std::vector<double> inv_freq(half);
  for (int i = 0; i < half; ++i) {
    inv_freq[i] = std::pow(static_cast<double>(base), -2.0 * i / static_cast<double>(rope_dims));
    if (scaling.freq_factors != nullptr) inv_freq[i] /= scaling.freq_factors[i];
    inv_freq[i] *= scaling.freq_scale;
  }
  for (int64_t t = 0; t < n_tokens; ++t) {
    if (positions[t] < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("rope_cache: negative position ", positions[t], " at ", t));
    }
    float* cs = cos_sin + t * rope_dims;
    for (int i = 0; i < half; ++i) {
      const double theta = static_cast<double>(positions[t]) * inv_freq[i];
      cs[2 * i] = static_cast<float>(std::cos(theta));
      cs[2 * i + 1] = static_cast<float>(std::sin(theta));
    }
  }
  return absl::OkStatus();
}

absl::Status LaunchRope(const float* x, int64_t x_stride, int64_t n_tokens, int n_heads,
                        int head_dim, int rope_dims, RopeMode mode, const float* cos_sin,
                        float* out, int64_t out_stride) {
  const int64_t row = static_cast<int64_t>(n_heads) * head_dim;
  if (n_tokens < 0 || n_heads <= 0 || head_dim <= 0 || rope_dims <= 0 || rope_dims % 2 != 0 ||
      rope_dims > head_dim || x_stride < row || out_stride < row) {
    return absl::InvalidArgumentError(
        absl::StrCat("rope: bad arguments n=", n_tokens, " heads=", n_heads, " head_dim=", head_dim,
                     " rope_dims=", rope_dims, " strides=", x_stride, "/", out_stride));
  }
  if (n_tokens == 0) return absl::OkStatus();
  if (x == nullptr || cos_sin == nullptr || out == nullptr) {
    return absl::InvalidArgumentError("rope: null pointer");
  }
  const int half = rope_dims / 2;
  // Pair (i0, i1) of pair index i: adjacent for kNorm, half apart for kNeox.
  const int step_first = mode == RopeMode::kNorm ? 2 : 1;
  const int second_offset = mode == RopeMode::kNorm ? 1 : half;
  for (int64_t t = 0; t < n_tokens; ++t) {
    const float* cs = cos_sin + t * rope_dims;
    for (int h = 0; h < n_heads; ++h) {
      const float* xi = x + t * x_stride + static_cast<int64_t>(h) * head_dim;
      float* yo = out + t * out_stride + static_cast<int64_t>(h) * head_dim;
      for (int i = 0; i < half; ++i) {
        const int i0 = i * step_first;
        const int i1 = i0 + second_offset;
        const float a = xi[i0], b = xi[i1];
        const float c = cs[2 * i], s = cs[2 * i + 1];
        yo[i0] = a * c - b * s;
        yo[i1] = a * s + b * c;
      }
      if (yo != xi) {
        for (int d = rope_dims; d < head_dim; ++d) yo[d] = xi[d];
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace xkv::cpu
