// Lane helpers shared by the ggml_exact_*.cc files (private to them; the API is ggml_exact.h):
// the emulated build's vector width and the horizontal sums and fp16 rounding every part uses.
// Every file that includes this one is compiled with -ffp-contract=off (kernels/CMakeLists.txt):
// each rounding step is spelled out and the compiler must not fuse a * b + c on its own.
#ifndef XKV_KERNELS_CPU_GGML_EXACT_LANES_H_
#define XKV_KERNELS_CPU_GGML_EXACT_LANES_H_

#include <cstdint>

#include "kernels/cpu/ggml_exact.h"
#include "kernels/cpu/half.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define XKV_GGML_EXACT_AVX2 1
#endif

namespace xkv::cpu::ggml {

// fp32 lanes of the emulated build's vectors (tinyBLAS fp16 products, softmax and SiLU chunks):
// 16 for AVX-512, 8 for AVX2 (header: kEmulatedLanes).
constexpr int64_t kLanes = kEmulatedLanes;
constexpr bool kAvx512Profile = kLanes == 16;

inline float RoundF16(float x) { return F16ToF32(F32ToF16(x)); }

#ifdef XKV_GGML_EXACT_AVX2
// hsum_float_8, the same tree as Sum8.
inline float HSum8(__m256 t) {
  __m128 r = _mm_add_ps(_mm256_extractf128_ps(t, 1), _mm256_castps256_ps128(t));
  r = _mm_add_ps(r, _mm_movehl_ps(r, r));
  r = _mm_add_ss(r, _mm_movehdup_ps(r));
  return _mm_cvtss_f32(r);
}

// Sum16 of lanes 0..7 (lo) and 8..15 (hi).
inline float HSum16(__m256 lo, __m256 hi) { return HSum8(_mm256_add_ps(hi, lo)); }
#endif

}  // namespace xkv::cpu::ggml

#endif  // XKV_KERNELS_CPU_GGML_EXACT_LANES_H_
