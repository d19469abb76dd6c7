// The per-KV-head pool bookkeeping of the CUDA engine (model/head_block_pool.h), on the host: a
// head holding n tokens owns ceil(n / 16) head-blocks; growth, trimming after a failed step,
// per-head compaction (bad lists and a short pool change nothing), copies and release.
#include "model/head_block_pool.h"

#include <algorithm>
#include <set>
#include <vector>

#include "gtest/gtest.h"

namespace xkv {
namespace {

std::vector<int32_t> Iota(int32_t n, int32_t step = 1) {
  std::vector<int32_t> v(n);
  for (int32_t i = 0; i < n; ++i) v[i] = i * step;
  return v;
}

// Every head-block owned at most once, and owned + free == capacity.
void ExpectConsistent(const HeadBlockPool& pool, const std::vector<const HeadTables*>& seqs) {
  std::set<int32_t> owned;
  int64_t count = 0;
  for (const HeadTables* t : seqs) {
    for (size_t j = 0; j < t->blocks.size(); ++j) {
      EXPECT_EQ(static_cast<int64_t>(t->blocks[j].size()), HeadBlockPool::BlocksFor(t->lengths[j]))
          << "table " << j;
      for (int32_t b : t->blocks[j]) {
        EXPECT_TRUE(b >= 0 && b < pool.capacity()) << b;
        owned.insert(b);
        ++count;
      }
    }
  }
  EXPECT_EQ(static_cast<int64_t>(owned.size()), count) << "a head-block owned twice";
  EXPECT_EQ(count + pool.free_blocks(), pool.capacity());
}

TEST(HeadBlockPoolTest, GrowthTakesCeilOfEachHeadsLength) {
  HeadBlockPool pool(100, 2, 3);
  HeadTables t = pool.NewTables();
  EXPECT_EQ(pool.GrowthNeed(nullptr, 40), 2 * 3 * 3);
  EXPECT_EQ(pool.GrowthNeed(&t, 40), 2 * 3 * 3);
  pool.Grow(t, 40);
  for (int64_t& len : t.lengths) len += 40;  // the step succeeded
  EXPECT_EQ(pool.free_blocks(), 100 - 18);
  EXPECT_EQ(HeadBlockPool::Held(t), 18);
  EXPECT_EQ(pool.MaxLength(t, 1), 40);
  // Slots 40..47 fit the third head-block; the 49th slot needs a fourth per head.
  EXPECT_EQ(pool.GrowthNeed(&t, 8), 0);
  EXPECT_EQ(pool.GrowthNeed(&t, 9), 6);
  // Head-slots address the head's own blocks.
  const int64_t j = pool.Index(1, 2);
  EXPECT_EQ(HeadBlockPool::HeadSlot(t, j, 17), int64_t{t.blocks[j][1]} * 16 + 1);
  ExpectConsistent(pool, {&t});
}

TEST(HeadBlockPoolTest, TrimGivesBackWhatAFailedStepTook) {
  HeadBlockPool pool(50, 1, 2);
  HeadTables t = pool.NewTables();
  pool.Grow(t, 20);
  for (int64_t& len : t.lengths) len += 20;
  const int64_t free_before = pool.free_blocks();
  pool.Grow(t, 30);  // lengths not committed: the step failed
  EXPECT_EQ(pool.free_blocks(), free_before - 2 * 2);
  pool.Trim(t);
  EXPECT_EQ(pool.free_blocks(), free_before);
  ExpectConsistent(pool, {&t});
}

TEST(HeadBlockPoolTest, PerHeadCompactionFreesWholeHeadBlocks) {
  HeadBlockPool pool(64, 2, 4);
  HeadTables t = pool.NewTables();
  pool.Grow(t, 100);
  for (int64_t& len : t.lengths) len += 100;
  const int64_t idle = pool.capacity();
  EXPECT_EQ(pool.free_blocks(), idle - 2 * 4 * 7);
  // Layer 1 keeps 33, 0, 16 and 1 slots: 3 + 0 + 1 + 1 head-blocks instead of 4 x 7.
  const std::vector<std::vector<int32_t>> kept = {Iota(33, 3), {}, Iota(16, 6), {99}};
  absl::StatusOr<std::vector<std::vector<int32_t>>> fresh = pool.TakeForKept(t, 1, kept);
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  EXPECT_EQ((*fresh)[0].size(), 3u);
  EXPECT_TRUE((*fresh)[1].empty());
  pool.FinishCompact(t, 1, *std::move(fresh), kept);
  EXPECT_EQ(t.lengths[pool.Index(1, 0)], 33);
  EXPECT_EQ(t.lengths[pool.Index(1, 1)], 0);
  EXPECT_EQ(pool.MaxLength(t, 1), 33);
  EXPECT_EQ(pool.MaxLength(t, 0), 100);
  EXPECT_EQ(pool.free_blocks(), idle - 4 * 7 - (3 + 0 + 1 + 1));
  ExpectConsistent(pool, {&t});
  // Decoding grows every head by one slot: the empty head takes its first head-block, the head
  // at 16 its second; the others fit.
  EXPECT_EQ(pool.GrowthNeed(&t, 1), 2);
  EXPECT_EQ(pool.Grow(t, 1), 2);
  for (int64_t& len : t.lengths) len += 1;
  ExpectConsistent(pool, {&t});
  pool.Release(t);
  EXPECT_EQ(pool.free_blocks(), idle);
}

TEST(HeadBlockPoolTest, BadKeptListsAndAShortPoolChangeNothing) {
  HeadBlockPool pool(12, 1, 2);
  HeadTables t = pool.NewTables();
  pool.Grow(t, 80);  // 5 head-blocks per head: 2 left
  for (int64_t& len : t.lengths) len += 80;
  const HeadTables before = t;
  const int64_t free_before = pool.free_blocks();
  const std::vector<std::vector<int32_t>> outside = {{0, 80}, {1}};
  const std::vector<std::vector<int32_t>> decreasing = {{5, 5}, {1}};
  const std::vector<std::vector<int32_t>> one_list = {{1}};
  const std::vector<std::vector<int32_t>> too_big = {Iota(40), {1}};  // 3 + 1 > 2 free
  for (const auto* kept : {&outside, &decreasing, &one_list}) {
    EXPECT_EQ(pool.TakeForKept(t, 0, *kept).status().code(), absl::StatusCode::kInvalidArgument);
  }
  EXPECT_EQ(pool.TakeForKept(t, 0, too_big).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(pool.free_blocks(), free_before);
  EXPECT_EQ(t.blocks, before.blocks);
  EXPECT_EQ(t.lengths, before.lengths);
}

TEST(HeadBlockPoolTest, CopiesTakeTheSameCountAndReleaseReturnsAll) {
  HeadBlockPool pool(40, 2, 2);
  HeadTables t = pool.NewTables();
  pool.Grow(t, 20);
  for (int64_t& len : t.lengths) len += 20;
  absl::StatusOr<std::vector<std::vector<int32_t>>> fresh =
      pool.TakeForKept(t, 0, {Iota(17), Iota(3)});
  ASSERT_TRUE(fresh.ok());
  pool.FinishCompact(t, 0, *std::move(fresh), {Iota(17), Iota(3)});
  const int64_t held = HeadBlockPool::Held(t);
  EXPECT_EQ(held, 2 + 1 + 2 + 2);
  absl::StatusOr<HeadTables> copy = pool.TakeCopyOf(t);
  ASSERT_TRUE(copy.ok());
  EXPECT_EQ(copy->lengths, t.lengths);
  EXPECT_EQ(HeadBlockPool::Held(*copy), held);
  ExpectConsistent(pool, {&t, &*copy});
  // 40 - 14 = 26 free head-blocks hold three more copies of 7; the fourth takes nothing.
  std::vector<HeadTables> more;
  while (true) {
    absl::StatusOr<HeadTables> c = pool.TakeCopyOf(t);
    if (!c.ok()) {
      EXPECT_EQ(c.status().code(), absl::StatusCode::kResourceExhausted);
      break;
    }
    more.push_back(*std::move(c));
  }
  EXPECT_EQ(more.size(), 3u);
  EXPECT_EQ(pool.free_blocks(), 26 - 3 * 7);
  pool.Release(t);
  pool.Release(*copy);
  for (HeadTables& m : more) pool.Release(m);
  EXPECT_EQ(pool.free_blocks(), pool.capacity());
}

}  // namespace
}  // namespace xkv
