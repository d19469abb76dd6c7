#include "kernels/cpu/attention.h"

#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace xkv::cpu {
namespace {

struct Case {
  int n_heads, n_kv_heads, head_dim;
  int64_t past, n_new, capacity_extra;
};

// Naive per-element reference in double, causal by slot order.
std::vector<double> Naive(const Case& c, const std::vector<float>& q, const std::vector<float>& k,
                          const std::vector<float>& v, int64_t head_stride) {
  const int64_t len = c.past + c.n_new;
  const int group = c.n_heads / c.n_kv_heads;
  std::vector<double> out(c.n_new * c.n_heads * c.head_dim, 0.0);
  for (int64_t t = 0; t < c.n_new; ++t) {
    for (int h = 0; h < c.n_heads; ++h) {
      const int g = h / group;
      const int64_t visible = c.past + t + 1;
      std::vector<double> s(visible);
      double mx = -1e300;
      for (int64_t j = 0; j < visible; ++j) {
        double dot = 0;
        for (int d = 0; d < c.head_dim; ++d) {
          dot += double(q[(t * c.n_heads + h) * c.head_dim + d]) *
                 k[g * head_stride + j * c.head_dim + d];
        }
        s[j] = dot / std::sqrt(double(c.head_dim));
        mx = std::max(mx, s[j]);
      }
      double sum = 0;
      for (double& x : s) sum += (x = std::exp(x - mx));
      for (int64_t j = 0; j < visible; ++j) {
        for (int d = 0; d < c.head_dim; ++d) {
          out[(t * c.n_heads + h) * c.head_dim + d] +=
              s[j] / sum * v[g * head_stride + j * c.head_dim + d];
        }
      }
    }
    (void)len;
  }
  return out;
}

class AttentionTest : public ::testing::TestWithParam<Case> {};

// Tolerance: 2e-5 absolute (inputs in [-1, 1]; outputs are convex mixes of V).
TEST_P(AttentionTest, PrefillMatchesNaive) {
  const Case c = GetParam();
  const int64_t len = c.past + c.n_new, cap = len + c.capacity_extra;
  const int64_t head_stride = cap * c.head_dim;
  std::mt19937 rng(6);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<float> q(c.n_new * c.n_heads * c.head_dim), k(c.n_kv_heads * head_stride),
      v(k.size());
  for (float& x : q) x = 2.f * u(rng);
  for (float& x : k) x = 2.f * u(rng);
  for (float& x : v) x = u(rng);
  const AttentionShape shape{c.n_heads, c.n_kv_heads, c.head_dim,
                             1.0f / std::sqrt(float(c.head_dim))};
  const std::vector<double> want = Naive(c, q, k, v, head_stride);
  ThreadPool pool(2);
  for (ThreadPool* p : {static_cast<ThreadPool*>(nullptr), &pool}) {
    const int64_t out_stride = c.n_heads * c.head_dim + 3;
    std::vector<float> out(c.n_new * out_stride, 7.f);
    ASSERT_TRUE(LaunchPrefillAttention(shape, q.data(), c.n_new, k.data(), v.data(), head_stride,
                                       len, out.data(), out_stride, p)
                    .ok());
    for (int64_t t = 0; t < c.n_new; ++t) {
      for (int64_t i = 0; i < c.n_heads * c.head_dim; ++i) {
        ASSERT_NEAR(out[t * out_stride + i], want[t * c.n_heads * c.head_dim + i], 2e-5)
            << "t=" << t << " i=" << i;
      }
      EXPECT_EQ(out[t * out_stride + c.n_heads * c.head_dim], 7.f);  // padding untouched
    }
  }
  if (c.n_new == 1) {
    std::vector<float> out(c.n_heads * c.head_dim);
    ASSERT_TRUE(LaunchDecodeAttention(shape, q.data(), k.data(), v.data(), head_stride, len,
                                      out.data(), &pool)
                    .ok());
    for (size_t i = 0; i < out.size(); ++i) EXPECT_NEAR(out[i], want[i], 2e-5);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, AttentionTest,
    ::testing::Values(Case{4, 4, 16, 0, 9, 0},     // MHA, fresh prompt
                      Case{9, 3, 64, 0, 300, 5},   // SmolLM2 GQA, several query blocks
                      Case{9, 3, 64, 37, 50, 11},  // prefill chunk after an existing cache
                      Case{8, 1, 32, 100, 1, 0},   // MQA decode
                      Case{9, 3, 64, 500, 1, 20},  // GQA decode with spare capacity
                      Case{6, 2, 8, 3, 2, 0}));    // tiny chunk

TEST(AttentionTest, RejectsBadShapes) {
  std::vector<float> buf(1024);
  const AttentionShape bad{9, 2, 64, 0.125f};
  EXPECT_FALSE(LaunchPrefillAttention(bad, buf.data(), 1, buf.data(), buf.data(), 64, 1, buf.data(),
                                      9 * 64, nullptr)
                   .ok());
  const AttentionShape ok{2, 1, 4, 0.5f};
  // kv_len smaller than n_new.
  EXPECT_FALSE(LaunchPrefillAttention(ok, buf.data(), 3, buf.data(), buf.data(), 64, 2, buf.data(),
                                      8, nullptr)
                   .ok());
}

}  // namespace
}  // namespace xkv::cpu
