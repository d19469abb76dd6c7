#include "kernels/cpu/act_quant.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_format.h"
#include "kernels/cpu/half.h"

namespace xkv::cpu {
namespace {

constexpr int64_t kBlock = 32;
constexpr int64_t kKBlock = 256;

// One 32-element block to q8 and back: q = nearbyint(x * 127 / amax), x' = q * fp16(amax / 127).
// Returns fp16(d * Σq) - fp16(d) * Σq (the Q8_1 sum's rounding, see the header).
float RoundBlockQ8(const float* x, float* out) {
  float amax = 0.f;
  for (int64_t i = 0; i < kBlock; ++i) amax = std::fmax(amax, std::fabs(x[i]));
  const float d = amax / 127.f;
  const float id = amax != 0.f ? 127.f / amax : 0.f;
  const float dh = F16ToF32(F32ToF16(d));
  int32_t sum = 0;
  for (int64_t i = 0; i < kBlock; ++i) {
    const float q = std::nearbyint(x[i] * id);
    sum += static_cast<int32_t>(q);
    out[i] = q * dh;
  }
  return F16ToF32(F32ToF16(d * static_cast<float>(sum))) - dh * static_cast<float>(sum);
}

// One 256-element block to q8_K and back (ggml's quantize_row_q8_K_ref).
void RoundBlockQ8K(const float* x, float* out) {
  float amax = 0.f, max = 0.f;
  for (int64_t i = 0; i < kKBlock; ++i) {
    if (std::fabs(x[i]) > amax) {
      amax = std::fabs(x[i]);
      max = x[i];
    }
  }
  if (amax == 0.f) {
    std::fill(out, out + kKBlock, 0.f);
    return;
  }
  const float iscale = -127.f / max;
  const float d = 1 / iscale;
  for (int64_t i = 0; i < kKBlock; ++i) {
    out[i] = std::fmin(127.f, std::nearbyint(iscale * x[i])) * d;
  }
}

}  // namespace

ActRounding ActRoundingFor(GgmlType weight_type) {
  switch (weight_type) {
    case GgmlType::kQ4_0:
    case GgmlType::kQ4_1:
    case GgmlType::kQ8_0:
      return ActRounding::kQ8Blocks;
    case GgmlType::kQ2_K:
    case GgmlType::kQ3_K:
    case GgmlType::kQ4_K:
    case GgmlType::kQ5_K:
    case GgmlType::kQ6_K:
      return ActRounding::kQ8KBlocks;
    case GgmlType::kF16:
      return ActRounding::kF16;
    case GgmlType::kBF16:
      return ActRounding::kBf16;
    case GgmlType::kF32:
      return ActRounding::kNone;
  }
  return ActRounding::kNone;
}

absl::Status LaunchRoundActivations(ActRounding rounding, const float* x, int64_t rows,
                                    int64_t cols, float* out, float* min_correction) {
  if (rows < 0 || cols < 0) return absl::InvalidArgumentError("negative activation shape");
  if (rows * cols > 0 && (x == nullptr || out == nullptr)) {
    return absl::InvalidArgumentError("null activation pointer");
  }
  const int64_t n = rows * cols;
  if (min_correction != nullptr && rounding != ActRounding::kQ8Blocks) {
    return absl::InvalidArgumentError("min_correction needs q8 block rounding");
  }
  switch (rounding) {
    case ActRounding::kNone:
      if (out != x) std::copy(x, x + n, out);
      break;
    case ActRounding::kF16:
      for (int64_t i = 0; i < n; ++i) out[i] = F16ToF32(F32ToF16(x[i]));
      break;
    case ActRounding::kBf16:
      for (int64_t i = 0; i < n; ++i) out[i] = Bf16ToF32(F32ToBf16(x[i]));
      break;
    case ActRounding::kQ8Blocks:
      if (cols % kBlock != 0) {
        return absl::InvalidArgumentError(
            absl::StrFormat("q8 activation rounding needs cols %% 32 == 0, got %d", cols));
      }
      for (int64_t b = 0; b < n; b += kBlock) {
        const float c = RoundBlockQ8(x + b, out + b);
        if (min_correction != nullptr) min_correction[b / kBlock] = c;
      }
      break;
    case ActRounding::kQ8KBlocks:
      if (cols % kKBlock != 0) {
        return absl::InvalidArgumentError(
            absl::StrFormat("q8_K activation rounding needs cols %% 256 == 0, got %d", cols));
      }
      for (int64_t b = 0; b < n; b += kKBlock) RoundBlockQ8K(x + b, out + b);
      break;
  }
  return absl::OkStatus();
}

}  // namespace xkv::cpu
