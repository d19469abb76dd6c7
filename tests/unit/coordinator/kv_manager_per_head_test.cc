// The KV ledger over stages with per-(layer, KV head) block tables (KvStage::head_tables): a layer
// holding t tokens in every head owns head_tables * ceil(t / block_tokens) blocks; after a per-head
// compaction each head owns its own whole blocks, every head grows by one token per decode, and a
// report that disagrees (a head's count, the blocks) is INTERNAL.
#include <algorithm>
#include <vector>

#include "coordinator/kv_manager.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace xkv {
namespace {

using ::testing::HasSubstr;

// One stage, 2 layers, 3 KV heads, blocks of 4 tokens of one head; 30 head-blocks.
KvManager PerHeadLedger() {
  absl::StatusOr<KvManager> m = KvManager::Create({4, {{0, 2, 30, 3}}});
  EXPECT_TRUE(m.ok()) << m.status();
  return *std::move(m);
}

KvLayerHeld Layer(int layer, std::vector<int64_t> heads) {
  KvLayerHeld h{layer, 0, 0, heads};
  for (int64_t t : heads) {
    h.tokens = std::max(h.tokens, t);
    h.blocks += (t + 3) / 4;
  }
  return h;
}

TEST(KvManagerPerHeadTest, CountsEachHeadsOwnBlocks) {
  KvManager m = PerHeadLedger();
  EXPECT_FALSE(KvManager::Create({4, {{0, 2, 30, 0}}}).ok());  // >= 1 table per layer
  EXPECT_TRUE(m.CheckEverFits(1, 20).ok());                    // 3 x 5 blocks per layer: 15
  EXPECT_EQ(m.CheckEverFits(1, 21).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(m.Allocate(1, 16).ok());  // 4 blocks x 3 heads x 2 layers
  EXPECT_EQ(m.free_blocks()[0], 30 - 24);
  ASSERT_TRUE(m.Grow(1, 16).ok());
  // A per-head compaction: layer 0 keeps 8, 2 and 5 tokens, layer 1 16 in every head.
  const std::vector<KvLayerHeld> held = {Layer(0, {8, 2, 5}), Layer(1, {16, 16, 16})};
  ASSERT_TRUE(m.Shrink(1, held, 0).ok());
  EXPECT_EQ(m.free_blocks()[0], 30 - (2 + 1 + 2) - 12);
  EXPECT_TRUE(m.Verify(1, held).ok());
  // Every head grows by one: heads at 8 and 16 cross a block boundary, 2 and 5 do not.
  EXPECT_EQ(m.GrowthBlocks(1, 1)[0], 1 + 3);
  ASSERT_TRUE(m.Grow(1, 1).ok());
  EXPECT_TRUE(m.Verify(1, {Layer(0, {9, 3, 6}), Layer(1, {17, 17, 17})}).ok());
  // A head that disagrees, or head counts that do not match the largest, are INTERNAL.
  absl::Status off = m.Verify(1, {Layer(0, {9, 4, 6}), Layer(1, {17, 17, 17})});
  EXPECT_EQ(off.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(off.message(), HasSubstr("layer 0"));
  KvLayerHeld liar = Layer(0, {9, 3, 6});
  liar.tokens = 10;
  EXPECT_EQ(m.Verify(1, {liar, Layer(1, {17, 17, 17})}).code(), absl::StatusCode::kInternal);
  EXPECT_EQ(m.Verify(1, {Layer(0, {9, 3}), Layer(1, {17, 17, 17})}).code(),
            absl::StatusCode::kInternal);
  EXPECT_TRUE(m.Free(1));
  EXPECT_EQ(m.free_blocks()[0], 30);
}

}  // namespace
}  // namespace xkv
