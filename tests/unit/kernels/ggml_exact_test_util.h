// Shared helpers of the ggml_exact tests: the lane trees written out, products rounded on their
// own, little-endian fp16 writes.
#ifndef XKV_TESTS_UNIT_KERNELS_GGML_EXACT_TEST_UTIL_H_
#define XKV_TESTS_UNIT_KERNELS_GGML_EXACT_TEST_UTIL_H_

#include <cstdint>
#include <limits>

#include "kernels/cpu/half.h"

namespace xkv::cpu::ggml::test_util {

inline constexpr float kInf = std::numeric_limits<float>::infinity();

inline float RoundF16(float x) { return F16ToF32(F32ToF16(x)); }

// A product rounded to fp32 on its own. The tests are built with GCC's default
// -ffp-contract=fast, which could fuse a product into a following addition; the bit-exact
// re-derivations use Mul for every product that feeds a sum and spell out each fma they mean.
inline float Mul(float a, float b) {
  volatile float p = a * b;
  return p;
}

// The documented lane trees, written out: hsum_float_8 and GCC's _mm512_reduce_add_ps.
inline float Tree8(const float* l) {
  return ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
}

inline float Tree16(const float* l) {
  const float t[8] = {l[0] + l[8],  l[1] + l[9],  l[2] + l[10], l[3] + l[11],
                      l[4] + l[12], l[5] + l[13], l[6] + l[14], l[7] + l[15]};
  return Tree8(t);
}

inline float LeftToRight(const float* l, int n) {
  float s = 0.f;
  for (int i = 0; i < n; ++i) s += l[i];
  return s;
}

inline void PutU16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v & 0xff);
  p[1] = static_cast<uint8_t>(v >> 8);
}

}  // namespace xkv::cpu::ggml::test_util

#endif  // XKV_TESTS_UNIT_KERNELS_GGML_EXACT_TEST_UTIL_H_
