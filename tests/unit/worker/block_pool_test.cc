#include "worker/block_pool.h"

#include <map>
#include <random>
#include <set>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "worker/stage_options.h"

namespace xkv {
namespace {

using ::testing::HasSubstr;

BlockPool MakePool(int layer_begin, int layers, int64_t capacity, int block_tokens = 16) {
  absl::StatusOr<BlockPool> pool =
      BlockPool::Create({layer_begin, layers, capacity, block_tokens, /*block_bytes=*/1024});
  EXPECT_TRUE(pool.ok()) << pool.status();
  return *std::move(pool);
}

TEST(BlockPoolTest, RejectsBadOptions) {
  EXPECT_EQ(BlockPool::Create({0, 0, 4, 16, 0}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(BlockPool::Create({0, 1, 4, 0, 0}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(BlockPool::Create({0, 1, -1, 16, 0}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(BlockPool::Create({0, 1, int64_t{1} << 32, 16, 0}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(BlockPoolTest, BlocksAreCeilOfTokens) {
  BlockPool pool = MakePool(0, 1, 100);
  EXPECT_EQ(pool.BlocksFor(0), 0);
  EXPECT_EQ(pool.BlocksFor(1), 1);
  EXPECT_EQ(pool.BlocksFor(16), 1);
  EXPECT_EQ(pool.BlocksFor(17), 2);
  // After eviction: b_l + w + decoded tokens.
  EXPECT_EQ(pool.BlocksFor(100 + 8 + 3), 7);
}

TEST(BlockPoolTest, PlanCommitRelease) {
  BlockPool pool = MakePool(3, 2, 20);
  ASSERT_TRUE(pool.Apply({{7, 3, 40}, {7, 4, 17}}).ok());
  EXPECT_EQ(pool.layer_used(3), 3);
  EXPECT_EQ(pool.layer_used(4), 2);
  EXPECT_EQ(pool.tokens(7, 3), 40);
  EXPECT_EQ(pool.table(7, 3).size(), 3u);
  EXPECT_EQ(pool.used(), 5);
  EXPECT_EQ(pool.free(), 15);
  // Compaction shrinks; decode grows by one token.
  ASSERT_TRUE(pool.Apply({{7, 3, 12}}).ok());
  EXPECT_EQ(pool.layer_used(3), 1);
  ASSERT_TRUE(pool.Apply({{7, 3, 17}}).ok());
  EXPECT_EQ(pool.layer_used(3), 2);
  EXPECT_TRUE(pool.Release(7));
  EXPECT_FALSE(pool.Release(7));
  EXPECT_EQ(pool.used(), 0);
  EXPECT_EQ(pool.free(), 20);
  EXPECT_FALSE(pool.has_sequence(7));
}

TEST(BlockPoolTest, ExhaustionLeavesStateUnchanged) {
  BlockPool pool = MakePool(0, 2, 8);
  ASSERT_TRUE(pool.Apply({{1, 0, 32}, {1, 1, 32}}).ok());
  const std::vector<int32_t> before(pool.table(1, 0).begin(), pool.table(1, 0).end());
  // Sequence 2 needs 3 + 2 blocks, the stage has 4 free: nothing changes.
  absl::StatusOr<BlockPlan> plan = pool.Plan({{2, 0, 48}, {2, 1, 32}});
  ASSERT_EQ(plan.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(plan.status().message(), HasSubstr("5 more blocks"));
  EXPECT_THAT(plan.status().message(), HasSubstr("4 free of 8"));
  EXPECT_EQ(pool.Apply({{2, 0, 48}, {2, 1, 32}}).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(pool.layer_used(0), 2);
  EXPECT_EQ(pool.layer_used(1), 2);
  EXPECT_FALSE(pool.has_sequence(2));
  EXPECT_EQ(std::vector<int32_t>(pool.table(1, 0).begin(), pool.table(1, 0).end()), before);
  // Exactly full fits, in any split over the layers.
  EXPECT_TRUE(pool.Apply({{2, 0, 48}, {2, 1, 16}}).ok());
  EXPECT_EQ(pool.free(), 0);
}

// The point of one pool per stage: blocks one layer's compaction frees serve another layer.
TEST(BlockPoolTest, MemoryFreedByOneLayerServesAnother) {
  BlockPool pool = MakePool(0, 3, 12);
  ASSERT_TRUE(pool.Apply({{1, 0, 64}, {1, 1, 64}, {1, 2, 64}}).ok());  // 4 + 4 + 4: full
  EXPECT_EQ(pool.free(), 0);
  EXPECT_EQ(pool.Apply({{1, 2, 65}}).code(), absl::StatusCode::kResourceExhausted);
  // Layer 0 keeps little after eviction; layer 2 keeps everything and decodes on.
  ASSERT_TRUE(pool.Apply({{1, 0, 10}}).ok());
  EXPECT_EQ(pool.free(), 3);
  ASSERT_TRUE(pool.Apply({{1, 2, 64 + 48}}).ok());  // 3 more blocks, all freed by layer 0
  EXPECT_EQ(pool.layer_used(0), 1);
  EXPECT_EQ(pool.layer_used(2), 7);
  EXPECT_EQ(pool.free(), 0);
  // And another sequence's layer 1 can use what sequence 1's layer 2 gives back.
  ASSERT_TRUE(pool.Apply({{1, 2, 16}}).ok());
  ASSERT_TRUE(pool.Apply({{2, 1, 96}}).ok());
  EXPECT_EQ(pool.layer_used(1), 10);
  EXPECT_EQ(pool.free(), 0);
  std::set<int32_t> ids;
  for (uint64_t s : {1, 2}) {
    for (int l = 0; l < 3; ++l) {
      for (int32_t b : pool.table(s, l)) EXPECT_TRUE(ids.insert(b).second) << "block " << b;
    }
  }
  EXPECT_EQ(ids.size(), 12u);
  pool.ReleaseAll();
  EXPECT_EQ(pool.free(), 12);
}

TEST(BlockPoolTest, ShrinkAndGrowInOnePlanNetOut) {
  BlockPool pool = MakePool(0, 2, 4);
  ASSERT_TRUE(pool.Apply({{1, 0, 64}}).ok());  // all 4 blocks
  // Sequence 1's layer 0 shrinks to 1 block while sequence 2's layer 1 takes 3: fits only because
  // of the shrink.
  ASSERT_TRUE(pool.Apply({{2, 1, 48}, {1, 0, 16}}).ok());
  EXPECT_EQ(pool.table(1, 0).size(), 1u);
  EXPECT_EQ(pool.table(2, 1).size(), 3u);
  EXPECT_EQ(pool.free(), 0);
}

TEST(BlockPoolTest, StalePlanIsRejected) {
  BlockPool pool = MakePool(0, 1, 4);
  absl::StatusOr<BlockPlan> plan = pool.Plan({{1, 0, 16}});
  ASSERT_TRUE(plan.ok());
  ASSERT_TRUE(pool.Apply({{2, 0, 16}}).ok());
  EXPECT_EQ(pool.Commit(*plan).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_FALSE(pool.has_sequence(1));
}

TEST(BlockPoolTest, RejectsBadChanges) {
  BlockPool pool = MakePool(2, 1, 4);
  EXPECT_EQ(pool.Plan({{1, 1, 16}}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(pool.Plan({{1, 2, -1}}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(pool.Plan({{1, 2, 1}, {1, 2, 2}}).status().code(), absl::StatusCode::kInvalidArgument);
}

// Random plans against a plain reference (tokens per (seq, layer); one capacity for the stage):
// the pool accepts exactly the plans the reference accepts, block ids are never shared, and
// counts match.
TEST(BlockPoolTest, RandomPlansMatchReference) {
  const int kLayers = 3, kBlockTokens = 16;
  const int64_t kCapacity = 40;
  BlockPool pool = MakePool(5, kLayers, kCapacity, kBlockTokens);
  std::map<std::pair<uint64_t, int>, int64_t> ref;  // (seq, layer) -> tokens
  auto ref_used = [&](int layer) {
    int64_t n = 0;
    for (const auto& [key, t] : ref) {
      if (key.second == layer || layer < 0) n += (t + kBlockTokens - 1) / kBlockTokens;
    }
    return n;
  };
  std::mt19937_64 rng(42);
  int accepted = 0, rejected = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    const uint64_t seq = rng() % 6;
    if (rng() % 10 == 0) {
      pool.Release(seq);
      for (int l = 0; l < kLayers; ++l) ref.erase({seq, 5 + l});
    } else {
      std::vector<BlockChange> changes;
      auto next = ref;
      for (int l = 0; l < kLayers; ++l) {
        if (rng() % 2) continue;
        const int64_t t = static_cast<int64_t>(rng() % 120);
        changes.push_back({seq, 5 + l, t});
        next[{seq, 5 + l}] = t;
      }
      auto saved = ref;
      ref = next;
      const bool fits = ref_used(-1) <= kCapacity;
      if (!fits) ref = saved;
      const absl::Status s = pool.Apply(changes);
      ASSERT_EQ(s.ok(), fits) << "iteration " << iter << ": " << s;
      if (!fits) {
        EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
      }
      fits ? ++accepted : ++rejected;
    }
    ASSERT_EQ(pool.used(), ref_used(-1)) << "iteration " << iter;
    ASSERT_EQ(pool.used() + pool.free(), kCapacity);
    std::set<int32_t> ids;
    for (int l = 0; l < kLayers; ++l) {
      ASSERT_EQ(pool.layer_used(5 + l), ref_used(5 + l)) << "iteration " << iter;
      for (uint64_t s = 0; s < 6; ++s) {
        const int64_t t = ref.count({s, 5 + l}) ? ref[{s, 5 + l}] : 0;
        ASSERT_EQ(pool.tokens(s, 5 + l), t);
        ASSERT_EQ(static_cast<int64_t>(pool.table(s, 5 + l).size()),
                  (t + kBlockTokens - 1) / kBlockTokens);
        for (int32_t b : pool.table(s, 5 + l)) {
          ASSERT_TRUE(b >= 0 && b < kCapacity);
          ASSERT_TRUE(ids.insert(b).second) << "block " << b << " shared";
        }
      }
    }
  }
  EXPECT_GT(accepted, 100);
  EXPECT_GT(rejected, 10);
}

// The stage's one pool from its options: per-layer figures are summed over the stage's layers.
TEST(KvPoolCapacityTest, OnePoolPerStage) {
  StageOptions o;
  EXPECT_EQ(*KvPoolCapacity(o, 3, 1024), 3 * kDefaultBlocksPerLayer);
  o.kv_capacity_blocks = 10;
  EXPECT_EQ(*KvPoolCapacity(o, 3, 1024), 30);
  o.kv_capacity_blocks = 0;
  o.kv_capacity_bytes = 10 * 1024 + 5;
  EXPECT_EQ(*KvPoolCapacity(o, 3, 1024), 10);
  o.layer_capacity_blocks = {1, 2, 3};
  EXPECT_EQ(*KvPoolCapacity(o, 3, 1024), 6);
  EXPECT_EQ(KvPoolCapacity(o, 2, 1024).status().code(), absl::StatusCode::kInvalidArgument);
  o.max_kv_bytes = 5 * 1024;
  EXPECT_EQ(KvPoolCapacity(o, 3, 1024).status().code(), absl::StatusCode::kResourceExhausted);
  o.layer_capacity_blocks = {1, -2, 3};
  EXPECT_EQ(KvPoolCapacity(o, 3, 1024).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace xkv
