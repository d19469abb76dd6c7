// IEEE binary16 (fp16) and bfloat16 <-> fp32 conversions, round-to-nearest-even, with subnormals,
// infinities and NaNs handled. Header-only so CPU kernels can inline them in inner loops.
#ifndef XKV_KERNELS_CPU_HALF_H_
#define XKV_KERNELS_CPU_HALF_H_

#include <cstdint>
#include <cstring>

namespace xkv::cpu {

inline uint32_t FloatBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

inline float BitsToFloat(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// fp32 -> fp16 bits. Values at or beyond 65520 round to infinity; NaN stays a (quiet) NaN.
inline uint16_t F32ToF16(float f) {
  const uint32_t x = FloatBits(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t abs = x & 0x7fffffffu;
  if (abs >= 0x7f800000u) {  // inf or NaN: keep the top payload bits, force a quiet NaN
    if (abs == 0x7f800000u) return sign | 0x7c00u;
    return static_cast<uint16_t>(sign | 0x7e00u | ((abs >> 13) & 0x3ffu));
  }
  if (abs >= 0x477ff000u) return sign | 0x7c00u;  // >= 65520 rounds (to even) to infinity
  if (abs >= 0x38800000u) {                       // normal fp16 range: >= 2^-14
    uint32_t h = (abs - 0x38000000u) >> 13;       // rebias exponent 127 -> 15, drop 13 bits
    const uint32_t rest = abs & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // carry may bump the exponent
    return static_cast<uint16_t>(sign | h);
  }
  // Subnormal fp16 (or zero): result = round(value / 2^-24).
  const uint32_t exp = abs >> 23;
  const uint32_t shift = 126u - exp;  // value = mant * 2^(exp-150) = (mant >> shift) * 2^-24
  if (exp == 0 || shift > 24u) return sign;
  const uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
  uint32_t h = mant >> shift;
  const uint32_t rest = mant & ((1u << shift) - 1u);
  const uint32_t half = 1u << (shift - 1u);
  if (rest > half || (rest == half && (h & 1u))) ++h;  // may become 0x400, the smallest normal
  return static_cast<uint16_t>(sign | h);
}

// fp16 bits -> fp32 (exact).
inline float F16ToF32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  if (exp == 0) {
    // Zero or subnormal: mant * 2^-24, exact in fp32.
    const float mag = static_cast<float>(mant) * 5.9604644775390625e-8f;
    return sign ? -mag : mag;
  }
  if (exp == 31) return BitsToFloat(sign | 0x7f800000u | (mant << 13));
  return BitsToFloat(sign | ((exp + 112u) << 23) | (mant << 13));
}

// fp32 -> bf16 bits, round-to-nearest-even; NaN stays a quiet NaN.
inline uint16_t F32ToBf16(float f) {
  const uint32_t x = FloatBits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);
  return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

// bf16 bits -> fp32 (exact).
inline float Bf16ToF32(uint16_t b) { return BitsToFloat(static_cast<uint32_t>(b) << 16); }

}  // namespace xkv::cpu

#endif  // XKV_KERNELS_CPU_HALF_H_
