// Seeded draws for the random-input tests of the service's edges (tests/unit/worker/
// random_steps_test.cc, tests/unit/http/openai_random_body_test.cc, tests/integration/
// random_requests_test.cc): each test's grammar is built on these. Header-only; test code.
#ifndef XKV_TESTS_COMMON_RANDOM_DRAW_H_
#define XKV_TESTS_COMMON_RANDOM_DRAW_H_

#include <cstdint>
#include <random>
#include <vector>

namespace xkv::testing {

class RandomDraw {
 public:
  explicit RandomDraw(uint64_t seed) : rng_(seed) {}
  // True with probability p.
  bool Chance(double p) { return std::uniform_real_distribution<double>(0, 1)(rng_) < p; }
  // Uniform in [lo, hi].
  int64_t Int(int64_t lo, int64_t hi) {
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng_);
  }
  // One of v (not empty), uniformly.
  template <typename T>
  T Pick(const std::vector<T>& v) {
    return v[static_cast<size_t>(Int(0, static_cast<int64_t>(v.size()) - 1))];
  }

 private:
  std::mt19937_64 rng_;
};

}  // namespace xkv::testing

#endif  // XKV_TESTS_COMMON_RANDOM_DRAW_H_
