// GGML block formats (all little-endian, blocks of 32 elements for the quantized types):
//   Q8_0: fp16 d, int8 qs[32]                      x[j] = qs[j] * d
//   Q4_0: fp16 d, uint8 qs[16]                     x[j] = ((qs[j] & 15) - 8) * d, j < 16
//                                                  x[j + 16] = ((qs[j] >> 4) - 8) * d
//   Q4_1: fp16 d, fp16 m, uint8 qs[16]             x[j] = (qs[j] & 15) * d + m, high nibbles as
//   Q4_0
// K-quants (Q2_K .. Q6_K, super-blocks of 256): kernels/cpu/kquants.h.
// Quantizers follow ggml's reference (quantize_row_*_ref) rounding so files match llama.cpp's.
#include "kernels/cpu/dequant.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/half.h"
#include "kernels/cpu/kquants.h"

namespace xkv::cpu {
namespace {

constexpr int kBlock = 32;

uint16_t LoadU16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

void StoreU16(uint8_t* p, uint16_t v) { std::memcpy(p, &v, sizeof(v)); }

void DequantQ8_0(const uint8_t* src, int64_t blocks, float* dst) {
  for (int64_t b = 0; b < blocks; ++b, src += 34, dst += kBlock) {
    const float d = F16ToF32(LoadU16(src));
    for (int j = 0; j < kBlock; ++j) dst[j] = static_cast<int8_t>(src[2 + j]) * d;
  }
}

void DequantQ4_0(const uint8_t* src, int64_t blocks, float* dst) {
  for (int64_t b = 0; b < blocks; ++b, src += 18, dst += kBlock) {
    const float d = F16ToF32(LoadU16(src));
    const uint8_t* qs = src + 2;
    for (int j = 0; j < kBlock / 2; ++j) {
      dst[j] = static_cast<float>((qs[j] & 0x0f) - 8) * d;
      dst[j + kBlock / 2] = static_cast<float>((qs[j] >> 4) - 8) * d;
    }
  }
}

void DequantQ4_1(const uint8_t* src, int64_t blocks, float* dst) {
  for (int64_t b = 0; b < blocks; ++b, src += 20, dst += kBlock) {
    const float d = F16ToF32(LoadU16(src));
    const float m = F16ToF32(LoadU16(src + 2));
    const uint8_t* qs = src + 4;
    for (int j = 0; j < kBlock / 2; ++j) {
      dst[j] = static_cast<float>(qs[j] & 0x0f) * d + m;
      dst[j + kBlock / 2] = static_cast<float>(qs[j] >> 4) * d + m;
    }
  }
}

// ggml's MIN(15, (int8_t)v) for v >= 0 (truncation toward zero), made total: NaN and negatives
// give 0, anything at or above 15 gives 15.
int Nibble(float v) {
  if (!(v > 0.0f)) return 0;
  if (v >= 15.0f) return 15;
  return static_cast<int>(v);
}

void QuantQ8_0(const float* x, int64_t blocks, uint8_t* dst) {
  for (int64_t b = 0; b < blocks; ++b, x += kBlock, dst += 34) {
    float amax = 0.0f;
    for (int j = 0; j < kBlock; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    StoreU16(dst, F32ToF16(d));
    for (int j = 0; j < kBlock; ++j) {
      float q = std::round(x[j] * id);  // |q| <= 127 up to rounding; NaN only if amax overflowed
      q = q != q ? 0.0f : std::clamp(q, -127.0f, 127.0f);
      dst[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(q));
    }
  }
}

void QuantQ4_0(const float* x, int64_t blocks, uint8_t* dst) {
  for (int64_t b = 0; b < blocks; ++b, x += kBlock, dst += 18) {
    float amax = 0.0f, max = 0.0f;  // the value of largest magnitude keeps its sign
    for (int j = 0; j < kBlock; ++j) {
      if (amax < std::fabs(x[j])) {
        amax = std::fabs(x[j]);
        max = x[j];
      }
    }
    const float d = max / -8.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    StoreU16(dst, F32ToF16(d));
    for (int j = 0; j < kBlock / 2; ++j) {
      // x * id lies in [-8, 8] (up to rounding); +8.5 then truncation rounds half up.
      const int lo = Nibble(x[j] * id + 8.5f);
      const int hi = Nibble(x[j + 16] * id + 8.5f);
      dst[2 + j] = static_cast<uint8_t>(lo | (hi << 4));
    }
  }
}

void QuantQ4_1(const float* x, int64_t blocks, uint8_t* dst) {
  for (int64_t b = 0; b < blocks; ++b, x += kBlock, dst += 20) {
    float min = FLT_MAX, max = -FLT_MAX;
    for (int j = 0; j < kBlock; ++j) {
      min = std::min(min, x[j]);
      max = std::max(max, x[j]);
    }
    const float d = (max - min) / 15.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    StoreU16(dst, F32ToF16(d));
    StoreU16(dst + 2, F32ToF16(min));
    for (int j = 0; j < kBlock / 2; ++j) {
      const int lo = Nibble((x[j] - min) * id + 0.5f);
      const int hi = Nibble((x[j + 16] - min) * id + 0.5f);
      dst[4 + j] = static_cast<uint8_t>(lo | (hi << 4));
    }
  }
}

absl::Status CheckArgs(GgmlType type, const void* src, int64_t n, const void* dst,
                       int64_t* blocks) {
  const auto traits = GetGgmlTypeTraits(static_cast<uint32_t>(type));
  if (!traits) {
    return absl::InvalidArgumentError(
        absl::StrCat("unsupported ggml type ", static_cast<uint32_t>(type)));
  }
  if (n < 0 || n % traits->block_elements != 0) {
    return absl::InvalidArgumentError(absl::StrCat("element count ", n, " is not a multiple of ",
                                                   traits->block_elements, " for ",
                                                   std::string(traits->name)));
  }
  if (n > 0 && (src == nullptr || dst == nullptr)) {
    return absl::InvalidArgumentError("null buffer");
  }
  *blocks = n / traits->block_elements;
  return absl::OkStatus();
}

}  // namespace

absl::Status DequantizeToF32(GgmlType type, const void* src, int64_t n, float* dst) {
  int64_t blocks = 0;
  if (absl::Status s = CheckArgs(type, src, n, dst, &blocks); !s.ok()) return s;
  const auto* in = static_cast<const uint8_t*>(src);
  switch (type) {
    case GgmlType::kF32:
      if (n > 0) std::memcpy(dst, in, static_cast<size_t>(n) * sizeof(float));
      break;
    case GgmlType::kF16:
      for (int64_t i = 0; i < n; ++i) dst[i] = F16ToF32(LoadU16(in + 2 * i));
      break;
    case GgmlType::kBF16:
      for (int64_t i = 0; i < n; ++i) dst[i] = Bf16ToF32(LoadU16(in + 2 * i));
      break;
    case GgmlType::kQ8_0:
      DequantQ8_0(in, blocks, dst);
      break;
    case GgmlType::kQ4_0:
      DequantQ4_0(in, blocks, dst);
      break;
    case GgmlType::kQ4_1:
      DequantQ4_1(in, blocks, dst);
      break;
    default:  // the K-quants (CheckArgs accepted the type)
      DequantizeKQuant(type, in, blocks, dst);
      break;
  }
  return absl::OkStatus();
}

absl::Status QuantizeFromF32(GgmlType type, const float* src, int64_t n, void* dst) {
  int64_t blocks = 0;
  if (absl::Status s = CheckArgs(type, src, n, dst, &blocks); !s.ok()) return s;
  auto* out = static_cast<uint8_t*>(dst);
  const bool quantized = type == GgmlType::kQ8_0 || type == GgmlType::kQ4_0 ||
                         type == GgmlType::kQ4_1 || IsKQuant(type);
  if (quantized) {
    for (int64_t i = 0; i < n; ++i) {
      if (!std::isfinite(src[i])) {
        return absl::InvalidArgumentError(
            absl::StrCat("cannot quantize non-finite value at element ", i));
      }
    }
  }
  switch (type) {
    case GgmlType::kF32:
      if (n > 0) std::memcpy(out, src, static_cast<size_t>(n) * sizeof(float));
      break;
    case GgmlType::kF16:
      for (int64_t i = 0; i < n; ++i) StoreU16(out + 2 * i, F32ToF16(src[i]));
      break;
    case GgmlType::kBF16:
      for (int64_t i = 0; i < n; ++i) StoreU16(out + 2 * i, F32ToBf16(src[i]));
      break;
    case GgmlType::kQ8_0:
      QuantQ8_0(src, blocks, out);
      break;
    case GgmlType::kQ4_0:
      QuantQ4_0(src, blocks, out);
      break;
    case GgmlType::kQ4_1:
      QuantQ4_1(src, blocks, out);
      break;
    default:  // the K-quants (CheckArgs accepted the type)
      QuantizeKQuant(type, src, blocks, out);
      break;
  }
  return absl::OkStatus();
}

}  // namespace xkv::cpu

namespace xkv::cpu {

absl::Status ExtractQ4_1Mins(const void* src, int64_t n, float* mins) {
  if (n < 0 || n % 32 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("q4_1 mins: ", n, " is not a multiple of 32"));
  }
  if (n > 0 && (src == nullptr || mins == nullptr)) {
    return absl::InvalidArgumentError("q4_1 mins: null pointer");
  }
  const uint8_t* p = static_cast<const uint8_t*>(src);
  for (int64_t b = 0; b < n / 32; ++b) {  // block: fp16 d, fp16 m, 16 bytes of nibbles
    uint16_t m;
    std::memcpy(&m, p + b * 20 + 2, sizeof(m));
    mins[b] = F16ToF32(m);
  }
  return absl::OkStatus();
}

}  // namespace xkv::cpu
