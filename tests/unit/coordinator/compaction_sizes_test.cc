#include "coordinator/compaction_sizes.h"

#include <vector>

#include "gtest/gtest.h"

namespace xkv {
namespace {

xkv::v1::LayerSize Size(int layer, int64_t tokens, int64_t blocks, int64_t bytes) {
  xkv::v1::LayerSize s;
  s.set_layer(layer);
  s.set_tokens(tokens);
  s.set_blocks(blocks);
  s.set_bytes(bytes);
  return s;
}

// A 100-token prompt, window 8 (P = 92), 16-token blocks of 1 KiB: each layer keeps its budget
// (clamped to [0, P]) plus the window.
TEST(CompactionSizesTest, EachLayerKeepsItsBudgetPlusTheWindow) {
  const std::vector<xkv::v1::LayerSize> before = {Size(0, 100, 7, 7168), Size(1, 100, 7, 7168),
                                                  Size(2, 100, 7, 7168), Size(3, 100, 7, 7168)};
  absl::StatusOr<std::vector<xkv::v1::LayerSize>> after =
      CompactedLayerSizes(before, {23, 0, 92, 500}, {}, 100, 8, 16);
  ASSERT_TRUE(after.ok()) << after.status();
  const int64_t tokens[] = {31, 8, 100, 100}, blocks[] = {2, 1, 7, 7};
  ASSERT_EQ(after->size(), 4u);
  for (int l = 0; l < 4; ++l) {
    EXPECT_EQ((*after)[l].layer(), l);
    EXPECT_EQ((*after)[l].tokens(), tokens[l]) << l;
    EXPECT_EQ((*after)[l].blocks(), blocks[l]) << l;
    EXPECT_EQ((*after)[l].bytes(), blocks[l] * 1024) << l;
  }
  EXPECT_TRUE(CheckCompactedSizes(7, *after, *after).ok());
}

// A stage with per-head tables (3 KV heads) holds 3 blocks of one head per 16 tokens of a layer.
TEST(CompactionSizesTest, PerHeadTablesCountEveryHeadsBlocks) {
  absl::StatusOr<std::vector<xkv::v1::LayerSize>> after =
      CompactedLayerSizes({Size(0, 100, 21, 7168), Size(1, 11, 3, 1024)}, {23, 0}, {}, 100, 8, 16);
  EXPECT_EQ(after.status().code(), absl::StatusCode::kFailedPrecondition);  // layer 1: 11 tokens
  after = CompactedLayerSizes({Size(0, 100, 21, 10752), Size(1, 100, 21, 10752)}, {23, 0}, {}, 100,
                              8, 16);
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ((*after)[0].tokens(), 31);
  EXPECT_EQ((*after)[0].blocks(), 6);  // 3 heads x ceil(31 / 16)
  EXPECT_EQ((*after)[1].blocks(), 3);  // 3 heads x ceil(8 / 16)
  EXPECT_EQ((*after)[1].bytes(), 3 * 512);
  // Blocks that are not whole tables of the prompt: not predictable.
  EXPECT_EQ(CompactedLayerSizes({Size(0, 100, 8, 7168)}, {10}, {}, 100, 8, 16).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

// Per-(layer, KV head) budgets on per-head tables: each head keeps its own budget plus the
// window, in its own blocks; the layer's tokens are its largest head's. A head count that is not
// the stage's tables, or per-head budgets on one table per layer, cannot be predicted.
TEST(CompactionSizesTest, PerHeadBudgetsKeepEachHeadsOwnCount) {
  const std::vector<xkv::v1::LayerSize> before = {Size(0, 100, 21, 10752), Size(1, 100, 21, 10752)};
  const std::vector<std::vector<int64_t>> heads = {{0, 40, 92}, {7, 7, 500}};
  absl::StatusOr<std::vector<xkv::v1::LayerSize>> after =
      CompactedLayerSizes(before, {92, 500}, heads, 100, 8, 16);
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ((*after)[0].tokens(), 100);
  EXPECT_EQ((*after)[0].blocks(), 1 + 3 + 7);  // 8, 48 and 100 tokens
  EXPECT_EQ((*after)[0].bytes(), 11 * 512);
  EXPECT_EQ(
      std::vector<int64_t>((*after)[0].head_tokens().begin(), (*after)[0].head_tokens().end()),
      (std::vector<int64_t>{8, 48, 100}));
  EXPECT_EQ((*after)[1].blocks(), 1 + 1 + 7);  // 15, 15 and 100 tokens
  EXPECT_TRUE(CheckCompactedSizes(3, *after, *after).ok());
  // Same layer tokens and blocks, another split over the heads: the ledger's per-head counts
  // would drift, so the answer is refused with both splits.
  std::vector<xkv::v1::LayerSize> moved = *after;
  moved[1].set_head_tokens(0, 14);
  moved[1].set_head_tokens(1, 16);
  const absl::Status s = CheckCompactedSizes(3, *after, moved);
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal);
  EXPECT_NE(s.message().find("per head 14,16,100 vs 15,15,100"), std::string::npos) << s;

  EXPECT_EQ(CompactedLayerSizes(before, {92, 500}, {{0, 40}, {7, 7}}, 100, 8, 16).status().code(),
            absl::StatusCode::kFailedPrecondition);  // 2 budgets for 3 head tables
  EXPECT_EQ(CompactedLayerSizes({Size(0, 100, 7, 7168)}, {10}, {{10}}, 100, 8, 16).status().code(),
            absl::StatusCode::kFailedPrecondition);  // one table per layer
  EXPECT_EQ(CompactedLayerSizes(before, {92, 500}, {{0, 40, 92}}, 100, 8, 16).status().code(),
            absl::StatusCode::kFailedPrecondition);  // rows for one of two layers
}

TEST(CompactionSizesTest, APromptWithinTheWindowIsKeptWhole) {
  absl::StatusOr<std::vector<xkv::v1::LayerSize>> after =
      CompactedLayerSizes({Size(0, 6, 1, 1024)}, {0}, {}, 6, 8, 16);
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ((*after)[0].tokens(), 6);
}

TEST(CompactionSizesTest, UnpredictableSizesAreRefused) {
  // A layer that holds more than the prompt (it decoded already), or fewer budgets than layers.
  EXPECT_EQ(CompactedLayerSizes({Size(0, 101, 7, 7168)}, {10}, {}, 100, 8, 16).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(CompactedLayerSizes({Size(0, 100, 7, 7168)}, {}, {}, 100, 8, 16).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(CompactionSizesTest, AnAnswerThatDiffersNamesTheLayer) {
  const std::vector<xkv::v1::LayerSize> predicted = {Size(0, 31, 2, 2048), Size(1, 8, 1, 1024)};
  const std::vector<xkv::v1::LayerSize> reported = {Size(0, 31, 2, 2048), Size(1, 9, 1, 1024)};
  const absl::Status s = CheckCompactedSizes(42, predicted, reported);
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal);
  EXPECT_NE(s.message().find("sequence 42 layer 1"), std::string::npos) << s;
  EXPECT_EQ(CheckCompactedSizes(42, predicted, {predicted[0]}).code(), absl::StatusCode::kInternal);
}

}  // namespace
}  // namespace xkv
