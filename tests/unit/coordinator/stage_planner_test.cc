#include "coordinator/stage_planner.h"

#include <algorithm>
#include <cstdint>
#include <functional>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace xkv {
namespace {

// Brute force over every composition of L into S non-empty parts.
int64_t BruteForceBottleneck(const std::vector<int64_t>& costs, int S, int64_t first,
                             int64_t last) {
  const int L = static_cast<int>(costs.size());
  int64_t best = std::numeric_limits<int64_t>::max();
  std::vector<int> ends;
  std::function<void(int, int)> rec = [&](int begin, int s) {
    if (s == S - 1) {
      ends.push_back(L);
      int64_t worst = 0;
      int b = 0;
      for (int k = 0; k < S; ++k) {
        int64_t c = 0;
        for (int l = b; l < ends[k]; ++l) c += costs[l];
        if (k == 0) c += first;
        if (k == S - 1) c += last;
        worst = std::max(worst, c);
        b = ends[k];
      }
      best = std::min(best, worst);
      ends.pop_back();
      return;
    }
    for (int e = begin + 1; e + (S - 1 - s) <= L; ++e) {
      ends.push_back(e);
      rec(e, s + 1);
      ends.pop_back();
    }
  };
  rec(0, 0);
  return best;
}

int64_t Bottleneck(const std::vector<int64_t>& costs, const std::vector<int>& ends, int64_t first,
                   int64_t last) {
  int64_t worst = 0;
  int b = 0;
  for (size_t k = 0; k < ends.size(); ++k) {
    int64_t c = 0;
    for (int l = b; l < ends[k]; ++l) c += costs[l];
    if (k == 0) c += first;
    if (k + 1 == ends.size()) c += last;
    worst = std::max(worst, c);
    b = ends[k];
  }
  return worst;
}

TEST(PartitionLayersTest, MatchesBruteForceOnRandomInstances) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 2000; ++trial) {
    const int L = 1 + rng() % 9;
    const int S = 1 + rng() % L;
    std::vector<int64_t> costs(L);
    const int levels = 1 + rng() % 20;
    for (int64_t& c : costs) c = rng() % levels;
    const int64_t first = (rng() % 3 == 0) ? rng() % 15 : 0;
    const int64_t last = (rng() % 3 == 0) ? rng() % 15 : 0;
    absl::StatusOr<std::vector<int>> ends = PartitionLayers(costs, S, first, last);
    ASSERT_TRUE(ends.ok()) << ends.status();
    ASSERT_EQ(ends->size(), static_cast<size_t>(S));
    EXPECT_EQ(ends->back(), L);
    for (int k = 0; k < S; ++k) {
      EXPECT_GT((*ends)[k], k == 0 ? 0 : (*ends)[k - 1]) << "stage " << k << " is empty";
    }
    EXPECT_EQ(Bottleneck(costs, *ends, first, last), BruteForceBottleneck(costs, S, first, last))
        << "trial " << trial << " L=" << L << " S=" << S;
  }
}

TEST(PartitionLayersTest, UniformLayersSplitEvenly) {
  std::vector<int64_t> costs(30, 10);
  absl::StatusOr<std::vector<int>> ends = PartitionLayers(costs, 3);
  ASSERT_TRUE(ends.ok());
  EXPECT_EQ(*ends, (std::vector<int>{10, 20, 30}));
}

TEST(PartitionLayersTest, EmbeddingAndHeadShiftLayersAway) {
  std::vector<int64_t> costs(8, 10);
  // A heavy lm_head on the last stage: the last stage gets fewer layers.
  absl::StatusOr<std::vector<int>> ends = PartitionLayers(costs, 2, 0, 40);
  ASSERT_TRUE(ends.ok());
  EXPECT_EQ(*ends, (std::vector<int>{6, 8}));
}

TEST(PartitionLayersTest, RejectsBadStageCounts) {
  std::vector<int64_t> costs(4, 1);
  EXPECT_EQ(PartitionLayers(costs, 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PartitionLayers(costs, 5).status().code(), absl::StatusCode::kInvalidArgument);
  costs[2] = -1;
  EXPECT_EQ(PartitionLayers(costs, 2).status().code(), absl::StatusCode::kInvalidArgument);
}

ModelCostInputs UniformModel(int L) {
  ModelCostInputs m;
  m.weight_bytes.assign(L, 1000);
  m.kv_bytes_per_token.assign(L, 10);
  return m;
}

TEST(ExpectedKvBytesTest, CountsBlocksAtConcurrency) {
  ModelCostInputs m = UniformModel(2);
  StagePlannerOptions o;
  o.concurrency = 3;
  o.expected_prompt_tokens = 108;  // P = 100
  o.expected_new_tokens = 10;
  o.window = 8;
  o.block_tokens = 16;
  std::vector<double> f = {1.0, 0.5};
  absl::StatusOr<std::vector<int64_t>> kv = ExpectedKvBytes(m, f, o);
  ASSERT_TRUE(kv.ok());
  // Layer 0: 100 + 8 + 10 = 118 tokens -> 8 blocks = 128 tokens. Layer 1: 50 + 18 = 68 -> 80.
  EXPECT_EQ((*kv)[0], 3 * 128 * 10);
  EXPECT_EQ((*kv)[1], 3 * 80 * 10);
  std::vector<double> bad = {1.5, 0.5};
  EXPECT_EQ(ExpectedKvBytes(m, bad, o).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(PlanStagesTest, LayersWithMoreKvGetSmallerStages) {
  ModelCostInputs m = UniformModel(12);
  StagePlannerOptions o;
  o.num_stages = 2;
  o.concurrency = 4;
  o.expected_prompt_tokens = 1000;
  std::vector<double> uniform(12, 0.5);
  absl::StatusOr<StagePlan> even = PlanStages(m, uniform, o);
  ASSERT_TRUE(even.ok());
  EXPECT_EQ(DescribePlan(*even), "[0,6) [6,12)");
  // Early layers keep far more: the first stage must shrink.
  std::vector<double> skewed = {1, 1, 1, 1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1};
  absl::StatusOr<StagePlan> plan = PlanStages(m, skewed, o);
  ASSERT_TRUE(plan.ok());
  EXPECT_LT(plan->stages[0].layer_end, 6);
  int64_t total = 0;
  for (const StageRange& r : plan->stages) total += r.cost;
  EXPECT_EQ(total, plan->total_cost);
  absl::StatusOr<bool> replan = ShouldReplan(*even, m, skewed, o);
  ASSERT_TRUE(replan.ok());
  EXPECT_TRUE(*replan);
  absl::StatusOr<bool> keep = ShouldReplan(*even, m, uniform, o);
  ASSERT_TRUE(keep.ok());
  EXPECT_FALSE(*keep);
}

}  // namespace
}  // namespace xkv
