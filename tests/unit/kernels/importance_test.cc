#include "kernels/cpu/importance.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <tuple>
#include <vector>

#include "gtest/gtest.h"

namespace xkv::cpu {
namespace {

// Independent reference: the FULL causal T x T attention matrix per query head in double
// (queries for every position; the window's rows are q, the other rows are random and unused
// by construction), then slice the last w rows, sum them (or take their max), drop the window
// columns, sum (max) into KV heads if asked, and pool with an explicitly zero-padded buffer divided
// by the kernel size (F.avg_pool1d(kernel, stride=1, padding=kernel//2), count_include_pad=True),
// or its maximum (max pooling; the zero padding never wins over probabilities >= 0).
std::vector<double> Reference(const std::vector<float>& q, const std::vector<float>& k,
                              const ImportanceShape& s, const ImportanceOptions& o) {
  const int64_t T = s.seq_len, w = o.window, P = T - w, d = s.head_dim;
  const int group = s.n_heads / s.n_kv_heads;
  const int out_heads = ImportanceHeads(s, o.granularity);
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  std::vector<double> summed(static_cast<size_t>(out_heads) * P, 0.0);
  for (int h = 0; h < s.n_heads; ++h) {
    const int kv = h / group;
    // Full query matrix [T, d]: random rows for non-window positions, the given q for the window.
    std::vector<double> qfull(T * d);
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t c = 0; c < d; ++c) {
        qfull[t * d + c] = t < P ? normal(rng) : q[((t - P) * s.n_heads + h) * d + c];
      }
    }
    std::vector<double> attn(T * T, 0.0);  // causal softmax rows
    for (int64_t t = 0; t < T; ++t) {
      double mx = -1e300;
      for (int64_t j = 0; j <= t; ++j) {
        double dot = 0;
        for (int64_t c = 0; c < d; ++c) dot += qfull[t * d + c] * k[(kv * T + j) * d + c];
        attn[t * T + j] = dot / std::sqrt(static_cast<double>(d));
        mx = std::max(mx, attn[t * T + j]);
      }
      double den = 0;
      for (int64_t j = 0; j <= t; ++j) den += (attn[t * T + j] = std::exp(attn[t * T + j] - mx));
      for (int64_t j = 0; j <= t; ++j) attn[t * T + j] /= den;
    }
    const int row = o.granularity == ScoreGranularity::kKvHead ? kv : h;
    for (int64_t t = T - w; t < T; ++t) {
      for (int64_t j = 0; j < P; ++j) {
        double& acc = summed[row * P + j];
        acc =
            o.reduce == ScoreReduce::kMax ? std::max(acc, attn[t * T + j]) : acc + attn[t * T + j];
      }
    }
  }
  const int r = o.pool_kernel / 2;
  std::vector<double> out(summed.size());
  for (int row = 0; row < out_heads; ++row) {
    std::vector<double> padded(P + 2 * r, 0.0);
    for (int64_t j = 0; j < P; ++j) padded[j + r] = summed[row * P + j];
    for (int64_t j = 0; j < P; ++j) {
      double acc = 0;
      for (int t = 0; t < o.pool_kernel; ++t) {
        acc = o.pool == ScorePool::kMax ? std::max(acc, padded[j + t]) : acc + padded[j + t];
      }
      out[row * P + j] = o.pool == ScorePool::kMax ? acc : acc / o.pool_kernel;
    }
  }
  return out;
}

// (n_heads, n_kv_heads, head_dim, T, window, pool_kernel)
using Shape = std::tuple<int, int, int, int, int, int>;

// (reduce, pool)
using Scoring = std::tuple<ScoreReduce, ScorePool>;

class ImportanceTest
    : public ::testing::TestWithParam<std::tuple<Shape, ScoreGranularity, Scoring>> {};

TEST_P(ImportanceTest, MatchesFullAttentionReference) {
  const auto [shape_tuple, granularity, scoring] = GetParam();
  const auto [nh, nkv, d, T, w, kernel] = shape_tuple;
  ImportanceShape s{nh, nkv, d, T};
  ImportanceOptions o{w, kernel, granularity, std::get<0>(scoring), std::get<1>(scoring)};
  std::mt19937 rng(1234 + nh * 7 + T);
  std::normal_distribution<float> normal(0.0f, 1.5f);  // peaky-enough softmax rows
  std::vector<float> q(static_cast<size_t>(w) * nh * d), k(static_cast<size_t>(nkv) * T * d);
  for (float& x : q) x = normal(rng);
  for (float& x : k) x = normal(rng);
  const int out_heads = ImportanceHeads(s, granularity);
  std::vector<float> got(static_cast<size_t>(out_heads) * (T - w), -1.0f);
  ASSERT_TRUE(LaunchImportance(q.data(), k.data(), s, o, got.data()).ok());
  const std::vector<double> want = Reference(q, k, s, o);
  ASSERT_EQ(got.size(), want.size());
  // fp32 vs double: 1e-5 absolute + 1e-4 relative (scores are sums of <= w*group probabilities).
  double mass = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_NEAR(got[i], want[i], 1e-5 + 1e-4 * std::abs(want[i])) << "index " << i;
    mass += want[i];
  }
  if (!want.empty()) {
    EXPECT_GT(mass, 0.0);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, ImportanceTest,
    ::testing::Combine(::testing::Values(Shape{4, 2, 16, 40, 8, 7},   // GQA group 2
                                         Shape{9, 3, 64, 70, 8, 7},   // SmolLM2-like heads
                                         Shape{8, 1, 32, 33, 8, 5},   // MQA
                                         Shape{2, 2, 8, 12, 8, 7},    // T-w = 4 < kernel
                                         Shape{3, 1, 8, 9, 8, 7},     // T-w = 1
                                         Shape{4, 4, 16, 25, 1, 1},   // w = 1, no pooling
                                         Shape{6, 2, 16, 20, 4, 9}),  // kernel > T-w
                       ::testing::Values(ScoreGranularity::kKvHead, ScoreGranularity::kQueryHead),
                       ::testing::Values(Scoring{ScoreReduce::kSum, ScorePool::kAvg},
                                         Scoring{ScoreReduce::kMax, ScorePool::kMax},
                                         Scoring{ScoreReduce::kMax, ScorePool::kAvg})));

TEST(ImportanceTest, KvHeadScoresAreSumOfQueryHeadScores) {
  ImportanceShape s{6, 2, 8, 30};
  std::mt19937 rng(5);
  std::normal_distribution<float> normal;
  std::vector<float> q(8 * 6 * 8), k(2 * 30 * 8);
  for (float& x : q) x = normal(rng);
  for (float& x : k) x = normal(rng);
  std::vector<float> per_kv(2 * 22), per_q(6 * 22);
  ASSERT_TRUE(
      LaunchImportance(q.data(), k.data(), s, {8, 7, ScoreGranularity::kKvHead}, per_kv.data())
          .ok());
  ASSERT_TRUE(
      LaunchImportance(q.data(), k.data(), s, {8, 7, ScoreGranularity::kQueryHead}, per_q.data())
          .ok());
  for (int kv = 0; kv < 2; ++kv) {
    for (int j = 0; j < 22; ++j) {
      const float sum =
          per_q[(3 * kv) * 22 + j] + per_q[(3 * kv + 1) * 22 + j] + per_q[(3 * kv + 2) * 22 + j];
      EXPECT_NEAR(per_kv[kv * 22 + j], sum, 1e-5);
    }
  }
}

TEST(ImportanceTest, WindowEqualToSequenceWritesNothing) {
  ImportanceShape s{2, 1, 4, 8};
  std::vector<float> q(8 * 2 * 4, 1.0f), k(8 * 4, 1.0f);
  EXPECT_TRUE(LaunchImportance(q.data(), k.data(), s, {8, 7}, nullptr).ok());
}

TEST(ImportanceTest, RejectsBadArguments) {
  std::vector<float> q(1024, 1.0f), k(1024, 1.0f), out(1024);
  auto run = [&](ImportanceShape s, ImportanceOptions o) {
    return LaunchImportance(q.data(), k.data(), s, o, out.data()).code();
  };
  const auto kBad = absl::StatusCode::kInvalidArgument;
  EXPECT_EQ(run({3, 2, 8, 20}, {}), kBad);      // heads not a multiple of KV heads
  EXPECT_EQ(run({2, 1, 8, 5}, {8, 7}), kBad);   // window > T
  EXPECT_EQ(run({2, 1, 8, 20}, {0, 7}), kBad);  // window 0
  EXPECT_EQ(run({2, 1, 8, 20}, {8, 6}), kBad);  // even kernel
  EXPECT_EQ(run({2, 1, 0, 20}, {8, 7}), kBad);  // head_dim 0
  EXPECT_EQ(LaunchImportance(nullptr, k.data(), {2, 1, 8, 20}, {}, out.data()).code(), kBad);
}

}  // namespace
}  // namespace xkv::cpu
