// Branch-free float helpers that GCC/Clang auto-vectorise in plain loops (std::exp does not without
// -ffast-math). Accuracy: FastExp is within ~2 ulp of expf on [-87, 88]; inputs below -87.3 give a
// value under 2e-38 (treated as 0 by softmax sums), above 88.3 are clamped.
#ifndef XKV_KERNELS_CPU_FAST_MATH_H_
#define XKV_KERNELS_CPU_FAST_MATH_H_

#include <bit>
#include <cstdint>

namespace xkv::cpu {

inline float FastExp(float x) {
  x = x < -87.3f ? -87.3f : x;
  x = x > 88.3f ? 88.3f : x;
  // x = n*ln2 + r, |r| <= ln2/2; ln2 split in two parts for an exact n*ln2_hi.
  // Round to nearest by the 1.5 * 2^23 trick (std::floor is a libm call that blocks vectorising).
  constexpr float kRound = 12582912.f;
  const float n = (x * 1.44269504088896341f + kRound) - kRound;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  return p * std::bit_cast<float>(bits);
}

// silu(x) = x * sigmoid(x).
inline float FastSilu(float x) { return x / (1.0f + FastExp(-x)); }

}  // namespace xkv::cpu

#endif  // XKV_KERNELS_CPU_FAST_MATH_H_
