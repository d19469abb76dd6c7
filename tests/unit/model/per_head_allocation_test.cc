// Per-(layer, KV head) budgets through model/kv_allocation.h: each KV head keeps its own budget's
// top tokens plus the window, and the compacted cache holds (and reports) exactly those bytes.
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "model/importance_collector.h"
#include "model/kv_allocation.h"
#include "model/kv_cache.h"
#include "tests/unit/model/llama_test_util.h"

namespace xkv {
namespace {

// Scores [heads, P] per layer; KV head 1 of every layer concentrates its mass on few tokens.
CollectedScores Scores(const ModelConfig& c, int64_t T, ScoreGranularity granularity) {
  ImportanceOptions o;
  o.window = 4;
  o.granularity = granularity;
  CollectedScores s = MakeCollectedScores(c, 0, c.n_layers, T, o);
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(0.0f, 0.01f);
  const int64_t P = s.prefix_len();
  const int group = s.heads / c.n_kv_heads;
  for (auto& layer : s.layers) {
    layer.resize(static_cast<size_t>(s.heads) * P);
    for (int h = 0; h < s.heads; ++h) {
      for (int64_t j = 0; j < P; ++j) {
        layer[h * P + j] = u(rng) + ((h / group == 1 && j % 7 == 0) ? 1.0f : 0.0f);
      }
    }
  }
  return s;
}

KvSettings PerHeadSpec(double fraction) {
  KvSettings spec;
  spec.allocator.per_head = true;
  spec.allocator.floor = 0.0;
  spec.target = KvTarget::Fraction(fraction);
  return spec;
}

TEST(PerHeadAllocationTest, HeadsKeepTheirOwnBudgetsAndBytes) {
  const ModelConfig c = testing::TinyConfig();  // 3 layers, 2 KV heads, head_dim 8
  const int64_t T = 40, P = 36;
  for (ScoreGranularity g : {ScoreGranularity::kKvHead, ScoreGranularity::kQueryHead}) {
    const CollectedScores scores = Scores(c, T, g);
    auto plan = PlanAllocation(scores, c, PerHeadSpec(0.25));
    ASSERT_TRUE(plan.ok()) << plan.status();
    ASSERT_EQ(plan->budgets.head_budgets.size(), c.n_layers);
    int64_t head_tokens = 0;
    for (int l = 0; l < c.n_layers; ++l) {
      const auto& heads = plan->budgets.head_budgets[l];
      for (int h = 0; h < c.n_kv_heads; ++h) {
        ASSERT_EQ(plan->kept[l][h].size(), heads[h] + (T - P)) << l << " " << h;
        EXPECT_EQ(plan->kept[l][h].back(), T - 1);  // the window
        head_tokens += heads[h];
      }
      // Head 1's mass sits on every 7th token and outranks head 0's noise: different budgets.
      EXPECT_NE(heads[0], heads[1]) << "layer " << l;
    }
    EXPECT_EQ(head_tokens, 27 * c.n_kv_heads);  // round(0.25 * 36 * 3) layer tokens
    // The compacted copy holds exactly the kept rows, and its report says so.
    KvCache full(0, c.n_layers, c.n_kv_heads, c.head_dim);
    const int64_t row = int64_t{c.n_kv_heads} * c.head_dim;
    std::vector<float> k(T * row), v(T * row);
    std::iota(k.begin(), k.end(), 0.0f);
    std::iota(v.begin(), v.end(), 1.0f);
    for (int l = 0; l < c.n_layers; ++l)
      ASSERT_TRUE(full.Append(l, k.data(), v.data(), T, row).ok());
    KvCache copy = full;
    ASSERT_TRUE(ApplyAllocation(copy, *plan).ok());
    const AllocationReport report = MakeReport(copy, *plan, c);
    int64_t rows = 0;
    for (int l = 0; l < c.n_layers; ++l) {
      for (int h = 0; h < c.n_kv_heads; ++h) {
        ASSERT_EQ(copy.head_length(l, h), plan->kept[l][h].size());
        const int32_t first = plan->kept[l][h][0];
        EXPECT_EQ(copy.k_head(l, h)[0], full.k_head(l, h)[first * c.head_dim]);
        rows += copy.head_length(l, h);
      }
    }
    const int64_t per_head_row = c.KvBytesPerTokenPerLayer(4) / c.n_kv_heads;
    EXPECT_EQ(copy.BytesHeld(), rows * per_head_row);
    EXPECT_EQ(report.kv_bytes_held, rows * per_head_row);
    EXPECT_LT(report.kv_bytes_held, report.kv_bytes_full);
  }
}

TEST(PerHeadAllocationTest, KeptSlotsChecksTheHeadBudgets) {
  const ModelConfig c = testing::TinyConfig();
  const CollectedScores scores = Scores(c, 40, ScoreGranularity::kKvHead);
  PolicyOptions policy{PolicyKind::kXkv};
  const std::vector<int64_t> three = {1, 2, 3};
  EXPECT_EQ(KeptSlots(scores, 0, 0, policy, three).status().code(),
            absl::StatusCode::kInvalidArgument);
  const std::vector<int64_t> two = {5, 0};
  auto kept = KeptSlots(scores, 0, 0, policy, two);
  ASSERT_TRUE(kept.ok()) << kept.status();
  EXPECT_EQ((*kept)[0].size(), 5 + 4);
  EXPECT_EQ((*kept)[1].size(), 4);  // the window alone
}

}  // namespace
}  // namespace xkv
