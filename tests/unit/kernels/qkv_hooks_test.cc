#include "kernels/cpu/qkv_hooks.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

namespace xkv::cpu {
namespace {

std::vector<float> Random(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-2.f, 2.f);
  std::vector<float> v(n);
  for (float& x : v) x = u(rng);
  return v;
}

TEST(QkvHooksTest, AddsTheBiasThenNormalisesEachQAndKHead) {
  const QkvHookShape shape{4, 2, 8, 1e-6f};
  const int64_t qkv_dim = 64, stride = 70, n = 3;
  const std::vector<float> x = Random(n * stride, 1), bias = Random(qkv_dim, 2);
  const std::vector<float> q_norm = Random(8, 3), k_norm = Random(8, 4);
  std::vector<float> got = x;
  ASSERT_TRUE(
      LaunchQkvHooks(shape, got.data(), stride, n, bias.data(), q_norm.data(), k_norm.data()).ok());
  for (int64_t t = 0; t < n; ++t) {
    for (int head = 0; head < 8; ++head) {  // 4 Q heads, 2 K heads, 2 V heads
      double ss = 0;
      for (int i = 0; i < 8; ++i) {
        const int64_t j = head * 8 + i;
        ss += double(x[t * stride + j] + bias[j]) * (x[t * stride + j] + bias[j]);
      }
      const double scale = head < 6 ? 1.0 / std::sqrt(ss / 8 + 1e-6) : 1.0;
      for (int i = 0; i < 8; ++i) {
        const int64_t j = head * 8 + i;
        const double gain = head < 4 ? q_norm[i] : head < 6 ? k_norm[i] : 1.0;
        EXPECT_NEAR(got[t * stride + j], (x[t * stride + j] + bias[j]) * scale * gain, 1e-5)
            << "token " << t << " head " << head << " dim " << i;
      }
    }
    for (int64_t j = qkv_dim; j < stride; ++j) EXPECT_EQ(got[t * stride + j], x[t * stride + j]);
  }
}

TEST(QkvHooksTest, NoHooksChangeNothingAndBadArgumentsAreRejected) {
  const QkvHookShape shape{4, 2, 8, 1e-6f};
  std::vector<float> x = Random(2 * 64, 5);
  const std::vector<float> before = x, norm(8, 1.f);
  ASSERT_TRUE(LaunchQkvHooks(shape, x.data(), 64, 2, nullptr, nullptr, nullptr).ok());
  EXPECT_EQ(x, before);
  EXPECT_FALSE(LaunchQkvHooks(shape, x.data(), 63, 2, nullptr, nullptr, nullptr).ok());
  EXPECT_FALSE(LaunchQkvHooks(shape, x.data(), 64, 2, nullptr, norm.data(), nullptr).ok());
  EXPECT_FALSE(LaunchQkvHooks({0, 2, 8, 1e-6f}, x.data(), 64, 2, nullptr, nullptr, nullptr).ok());
  EXPECT_EQ(x, before);
}

}  // namespace
}  // namespace xkv::cpu
