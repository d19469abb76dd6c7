// BlockPool with one table per (sequence, layer, KV head): a block holds block_tokens tokens of
// one head's K and V, a layer costs sum_h ceil(t_h / block_tokens) blocks.
#include <numeric>
#include <random>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "worker/block_pool.h"

namespace xkv {
namespace {

using ::testing::HasSubstr;

constexpr int kHeads = 3, kBlockTokens = 4;

BlockPool MakeHeadPool(int64_t capacity) {
  absl::StatusOr<BlockPool> pool = BlockPool::Create(
      {/*layer_begin=*/2, /*num_layers=*/2, capacity, kBlockTokens, /*block_bytes=*/64, kHeads});
  EXPECT_TRUE(pool.ok()) << pool.status();
  return *std::move(pool);
}

TEST(BlockPoolPerHeadTest, HeadsHoldTheirOwnBlocks) {
  BlockPool pool = MakeHeadPool(100);
  // A prompt of 10 tokens in every head of both layers: 3 blocks per head.
  ASSERT_TRUE(pool.Apply({{7, 2, 10}, {7, 3, 10}}).ok());
  EXPECT_EQ(pool.used(), 2 * kHeads * 3);
  EXPECT_EQ(pool.layer_used(2), kHeads * 3);
  // Per-head compaction of layer 2: heads keep 1, 9 and 4 tokens.
  ASSERT_TRUE(pool.Apply({{7, 2, 1, 0}, {7, 2, 9, 1}, {7, 2, 4, 2}}).ok());
  EXPECT_EQ(pool.layer_used(2), 1 + 3 + 1);
  EXPECT_EQ(pool.blocks(7, 2), 5);
  EXPECT_EQ(pool.used(), 5 + kHeads * 3);
  EXPECT_EQ(pool.tokens(7, 2), 9);  // the largest head
  EXPECT_EQ(pool.head_tokens(7, 2, 0), 1);
  EXPECT_EQ(pool.head_tokens(7, 2, 2), 4);
  EXPECT_EQ(pool.table(7, 2, 1).size(), 3u);
  // A decode token in every head: only head 2 (4 -> 5) and head 0 (1 -> 2, same block) move.
  std::vector<BlockChange> step;
  for (int h = 0; h < kHeads; ++h) step.push_back({7, 2, pool.head_tokens(7, 2, h) + 1, h});
  ASSERT_TRUE(pool.Apply(step).ok());
  EXPECT_EQ(pool.layer_used(2), 1 + 3 + 2);
  // Released on finish: everything back.
  EXPECT_TRUE(pool.Release(7));
  EXPECT_EQ(pool.used(), 0);
  EXPECT_EQ(pool.free(), 100);
}

TEST(BlockPoolPerHeadTest, RejectsBadHeadsAndDuplicates) {
  BlockPool pool = MakeHeadPool(10);
  EXPECT_THAT(pool.Apply({{1, 2, 4, 3}}).message(), HasSubstr("head 3"));
  EXPECT_THAT(pool.Apply({{1, 2, 4, -2}}).message(), HasSubstr("heads -1 or [0, 3)"));
  EXPECT_THAT(pool.Apply({{1, 2, 4, 1}, {1, 2, 8, -1}}).message(), HasSubstr("twice"));
  EXPECT_EQ(pool.Apply({{1, 2, 4 * 11, 0}}).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(pool.used(), 0);  // nothing changed
  EXPECT_EQ(BlockPool::Create({0, 1, 4, 16, 0, 0}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// Random per-head plans: the used count always equals the sum of the tables' ceil(t / bt), every
// block id is held at most once, and releasing every sequence gives all blocks back.
TEST(BlockPoolPerHeadTest, RandomPlansConserveBlocks) {
  const int64_t capacity = 400;
  BlockPool pool = MakeHeadPool(capacity);
  std::mt19937 rng(5);
  for (int step = 0; step < 500; ++step) {
    const uint64_t seq = 1 + rng() % 4;
    std::vector<BlockChange> changes;
    for (int layer = 2; layer < 4; ++layer) {
      if (rng() % 2) {
        changes.push_back({seq, layer, static_cast<int64_t>(rng() % 40), -1});
      } else {
        for (int h = 0; h < kHeads; ++h) {
          changes.push_back({seq, layer, static_cast<int64_t>(rng() % 40), h});
        }
      }
    }
    (void)pool.Apply(changes);  // RESOURCE_EXHAUSTED sometimes: then nothing changes
    int64_t want = 0;
    std::vector<int> held(capacity, 0);
    for (uint64_t s = 1; s <= 4; ++s) {
      for (int layer = 2; layer < 4; ++layer) {
        for (int h = 0; h < kHeads; ++h) {
          const int64_t t = pool.head_tokens(s, layer, h);
          ASSERT_EQ(pool.table(s, layer, h).size(), pool.BlocksFor(t));
          want += pool.BlocksFor(t);
          for (int32_t b : pool.table(s, layer, h)) ASSERT_EQ(++held[b], 1) << "block " << b;
        }
      }
    }
    ASSERT_EQ(pool.used(), want);
    ASSERT_EQ(pool.layer_used(2) + pool.layer_used(3), want);
  }
  pool.ReleaseAll();
  EXPECT_EQ(pool.free(), capacity);
}

}  // namespace
}  // namespace xkv
