// Random importance profiles for the allocator tests: L layers of H heads over P positions,
// exponential scores [H, P] per layer (seeded); head (l, h) gets mass scale[l][h] (empty: 1).
#ifndef XKV_TESTS_UNIT_ALLOCATOR_RANDOM_PROFILES_H_
#define XKV_TESTS_UNIT_ALLOCATOR_RANDOM_PROFILES_H_

#include <cstdint>
#include <random>
#include <vector>

#include "allocator/importance_profile.h"

namespace xkv::testing_allocator {

inline std::vector<LayerProfile> Profiles(int L, int H, int64_t P, uint32_t seed,
                                          const std::vector<std::vector<float>>& scale = {}) {
  std::mt19937 rng(seed);
  std::exponential_distribution<float> e(1.0f);
  std::vector<LayerProfile> out;
  for (int l = 0; l < L; ++l) {
    std::vector<float> s(static_cast<size_t>(H) * P);
    for (int h = 0; h < H; ++h) {
      for (int64_t j = 0; j < P; ++j) s[h * P + j] = e(rng) * (scale.empty() ? 1.0f : scale[l][h]);
    }
    out.push_back(*BuildLayerProfile(s, H, P));
  }
  return out;
}

}  // namespace xkv::testing_allocator

#endif  // XKV_TESTS_UNIT_ALLOCATOR_RANDOM_PROFILES_H_
