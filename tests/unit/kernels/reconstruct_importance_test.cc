#include "kernels/cpu/reconstruct_importance.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace xkv::cpu {
namespace {

// Independent reference in double: for every query row, the dense attention over ALL past and
// current keys with a 0/1 mask (allowed: the sinks before the chunk, the chunk, the input's own
// keys up to the row), masked softmax, then the max over rows and the group's heads.
std::vector<double> Reference(const std::vector<float>& q, const std::vector<float>& k,
                              int64_t stride, const ReconstructShape& s) {
  const int64_t d = s.head_dim, C = s.past_len, R = s.n_queries, nc = s.chunk_end - s.chunk_begin;
  const int group = s.n_heads / s.n_kv_heads;
  std::vector<double> out(static_cast<size_t>(s.n_kv_heads) * nc, 0.0);
  for (int h = 0; h < s.n_heads; ++h) {
    const int g = h / group;
    for (int64_t i = 0; i < R; ++i) {
      std::vector<double> p(C + R, 0.0);
      double mx = -1e300, sum = 0.0;
      auto allowed = [&](int64_t j) {
        return (j < s.sinks && j < s.chunk_begin) || (j >= s.chunk_begin && j < s.chunk_end) ||
               (j >= C && j <= C + i);
      };
      for (int64_t j = 0; j < C + R; ++j) {
        if (!allowed(j)) continue;
        double dot = 0.0;
        for (int64_t c = 0; c < d; ++c) {
          dot += double(q[(i * s.n_heads + h) * d + c]) * k[g * stride + j * d + c];
        }
        p[j] = dot / std::sqrt(double(d));
        mx = std::max(mx, p[j]);
      }
      for (int64_t j = 0; j < C + R; ++j) {
        p[j] = allowed(j) ? std::exp(p[j] - mx) : 0.0;
        sum += p[j];
      }
      for (int64_t j = 0; j < nc; ++j) {
        double& o = out[g * nc + j];
        o = std::max(o, p[s.chunk_begin + j] / sum);
      }
    }
  }
  return out;
}

struct Case {
  int64_t R, C, b, e;
  int sinks;
};

class ReconstructScoresTest : public ::testing::TestWithParam<Case> {};

TEST_P(ReconstructScoresTest, MatchesDenseMaskedReference) {
  const Case c = GetParam();
  ReconstructShape s{4, 2, 8, c.R, c.C, c.b, c.e, c.sinks};
  const int64_t stride = (c.C + c.R + 3) * s.head_dim;  // padded like a cache with spare capacity
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0f, 1.5f);
  std::vector<float> q(c.R * s.n_heads * s.head_dim), k(s.n_kv_heads * stride);
  for (float& x : q) x = normal(rng);
  for (float& x : k) x = normal(rng);
  std::vector<float> scores(s.n_kv_heads * (c.e - c.b), 0.0f);
  ASSERT_TRUE(LaunchReconstructScores(q.data(), k.data(), stride, s, scores.data()).ok());
  const std::vector<double> ref = Reference(q, k, stride, s);
  for (size_t j = 0; j < ref.size(); ++j) EXPECT_NEAR(scores[j], ref[j], 2e-5) << j;
  // Scores are probabilities, and at least one chunk key gets a visible share.
  EXPECT_GT(*std::max_element(scores.begin(), scores.end()), 0.0f);
  EXPECT_LE(*std::max_element(scores.begin(), scores.end()), 1.0f + 1e-6f);
}

// More than one 512-query block, a chunk after the sinks, a chunk at the start (no sinks), a
// chunk at the end, and no sinks at all.
INSTANTIATE_TEST_SUITE_P(Shapes, ReconstructScoresTest,
                         ::testing::Values(Case{600, 40, 10, 30, 4}, Case{7, 30, 0, 12, 4},
                                           Case{20, 50, 25, 50, 4}, Case{5, 16, 8, 16, 0},
                                           Case{1, 9, 2, 3, 8}));

TEST(ReconstructScores, AccumulatesTheMaximum) {
  ReconstructShape s{2, 1, 4, 3, 6, 0, 6, 4};
  std::vector<float> q(3 * 2 * 4, 0.0f), k(9 * 4, 0.0f);  // zero logits: uniform attention
  std::vector<float> scores(6, 0.5f);                     // already above 1/7
  ASSERT_TRUE(LaunchReconstructScores(q.data(), k.data(), 9 * 4, s, scores.data()).ok());
  for (float x : scores) EXPECT_FLOAT_EQ(x, 0.5f);
}

TEST(ReconstructScores, RejectsBadShapes) {
  std::vector<float> q(64), k(256), out(64);
  const ReconstructShape good{2, 1, 4, 2, 6, 0, 6, 4};
  EXPECT_TRUE(LaunchReconstructScores(q.data(), k.data(), 8 * 4, good, out.data()).ok());
  ReconstructShape bad = good;
  bad.chunk_end = 7;  // past the cached context
  EXPECT_EQ(LaunchReconstructScores(q.data(), k.data(), 8 * 4, bad, out.data()).code(),
            absl::StatusCode::kInvalidArgument);
  bad = good;
  bad.n_heads = 3;
  bad.n_kv_heads = 2;
  EXPECT_EQ(LaunchReconstructScores(q.data(), k.data(), 8 * 4, bad, out.data()).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(LaunchReconstructScores(q.data(), k.data(), 7 * 4, good, out.data()).code(),
            absl::StatusCode::kInvalidArgument);  // stride holds fewer than C + R keys
  EXPECT_EQ(LaunchReconstructScores(nullptr, k.data(), 8 * 4, good, out.data()).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace xkv::cpu
