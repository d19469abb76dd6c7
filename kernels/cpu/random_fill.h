// Seeded pseudo-random bf16 tensors for random-weight models of real shapes (issue: performance
// work where the weight values do not matter). Element i of a tensor with `seed` is
//   bf16( float(h24(seed, i) - 2^23) * step ),   h24 = the top 24 bits of SplitMix64(seed ^ i·φ)
// i.e. uniform in [-scale, scale) with step = scale / 2^23 computed by the caller once (one fp32
// multiply: the CPU reference and the CUDA kernel give identical bits).
#ifndef XKV_KERNELS_CPU_RANDOM_FILL_H_
#define XKV_KERNELS_CPU_RANDOM_FILL_H_

#include <cstdint>

#include "absl/status/status.h"

namespace xkv {

// The element's signed 24-bit integer in [-2^23, 2^23); host and device.
#if defined(__CUDACC__)
__host__ __device__
#endif
    inline int32_t
    RandomFillInt(uint64_t seed, uint64_t i) {
  uint64_t z = seed ^ (i * 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return static_cast<int32_t>(z >> 40) - (1 << 23);
}

// fp32 step for a uniform range [-scale, scale).
inline float RandomFillStep(float scale) { return scale / 8388608.0f; }

namespace cpu {

// out: bf16 bits [n]; element i as above. INVALID_ARGUMENT for n < 0 or a null out.
absl::Status LaunchRandomFill(uint64_t seed, int64_t n, float step, uint16_t* out);

}  // namespace cpu
}  // namespace xkv

#endif  // XKV_KERNELS_CPU_RANDOM_FILL_H_
