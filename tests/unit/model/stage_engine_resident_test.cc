// StageEngine's resident path (EmbedResident → RunLayersResident → LogitsResident, what a stage
// holding every layer runs) gives exactly what Embed → RunLayers → Logits give on the CPU engine,
// for a prefill chunk and the decode steps after it; misuse is a clear error.
#include <cmath>
#include <memory>
#include <vector>

#include "gtest/gtest.h"
#include "model/cpu_stage_engine.h"
#include "tests/unit/model/llama_test_util.h"

namespace xkv {
namespace {

class ResidentTest : public ::testing::Test {
 protected:
  void SetUp() override {
    weights_ = testing::RandomWeights(testing::TinyConfig(), 41);
    for (auto* e : {&host_, &resident_}) {
      auto made = CpuStageEngine::Create(weights_, {});
      ASSERT_TRUE(made.ok()) << made.status();
      *e = std::move(*made);
    }
  }

  static EngineStep Step(int64_t n, int64_t position) {
    EngineStep s;
    s.sequences.push_back({7, n, position, false});
    return s;
  }

  std::shared_ptr<const LlamaWeights> weights_;
  std::unique_ptr<CpuStageEngine> host_, resident_;
};

TEST_F(ResidentTest, SameLogitsAsTheHostPath) {
  std::vector<int32_t> tokens = {5, 9, 2, 33, 17, 8, 40};
  int64_t position = 0;
  for (int step = 0; step < 4; ++step) {
    const int64_t n = tokens.size();
    const std::vector<int64_t> rows = {n - 1, 0};
    auto hidden = host_->Embed(tokens);
    ASSERT_TRUE(hidden.ok());
    ASSERT_TRUE(host_->RunLayers(Step(n, position), {}, absl::MakeSpan(*hidden), nullptr).ok());
    auto want = host_->Logits(*hidden, rows);
    ASSERT_TRUE(want.ok());
    ASSERT_TRUE(resident_->EmbedResident(tokens).ok());
    ASSERT_TRUE(resident_->RunLayersResident(Step(n, position), {}, nullptr).ok());
    auto got = resident_->LogitsResident(rows);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(*got, *want) << "step " << step;
    position += n;
    tokens = {static_cast<int32_t>(3 + step)};  // decode steps
  }
}

TEST_F(ResidentTest, MisuseIsAnError) {
  // Layers before any embedding, or over another number of rows than embedded.
  EXPECT_EQ(resident_->RunLayersResident(Step(3, 0), {}, nullptr).code(),
            absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(resident_->EmbedResident({1, 2}).ok());
  EXPECT_EQ(resident_->RunLayersResident(Step(3, 0), {}, nullptr).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_FALSE(resident_->HasSequence(7));  // nothing ran
  ASSERT_TRUE(resident_->RunLayersResident(Step(2, 0), {}, nullptr).ok());
  EXPECT_FALSE(resident_->LogitsResident({2}).ok());  // only rows 0 and 1 exist
  EXPECT_TRUE(resident_->LogitsResident({1}).ok());
  EXPECT_FALSE(resident_->EmbedResident({-1}).ok());
}

// StageEngine::CompactLayer with a different count per KV head (per-(layer, KV head) budgets): the
// CPU engine says it supports it, each head holds its own kept rows (HeadCacheLength), the layer's
// length is its largest head's, and decoding appends one token to every head.
TEST_F(ResidentTest, CompactsEachHeadToItsOwnCount) {
  ASSERT_TRUE(host_->supports_per_head_kv());
  const std::vector<int32_t> prompt = {5, 9, 2, 33, 17, 8, 40, 11};
  auto hidden = host_->Embed(prompt);
  ASSERT_TRUE(hidden.ok());
  ASSERT_TRUE(host_->RunLayers(Step(8, 0), {}, absl::MakeSpan(*hidden), nullptr).ok());
  const int layer = host_->layer_begin();
  ASSERT_EQ(host_->config().n_kv_heads, 2);
  const std::vector<std::vector<int32_t>> kept = {{0, 3, 6, 7}, {1, 7}};
  ASSERT_TRUE(host_->CompactLayer(7, layer, 8, kept).ok());
  EXPECT_EQ(host_->HeadCacheLength(7, layer, 0), 4);
  EXPECT_EQ(host_->HeadCacheLength(7, layer, 1), 2);
  EXPECT_EQ(host_->CacheLength(7, layer), 4);
  EXPECT_EQ(host_->HeadCacheLength(7, layer + 1, 1), 8);  // another layer is untouched
  EXPECT_EQ(host_->HeadCacheLength(7, layer, 2), -1);     // no such head
  EXPECT_EQ(host_->HeadCacheLength(8, layer, 0), -1);     // no such sequence
  auto next = host_->Embed({3});
  ASSERT_TRUE(next.ok());
  ASSERT_TRUE(host_->RunLayers(Step(1, 8), {}, absl::MakeSpan(*next), nullptr).ok());
  EXPECT_EQ(host_->HeadCacheLength(7, layer, 0), 5);
  EXPECT_EQ(host_->HeadCacheLength(7, layer, 1), 3);
  auto logits = host_->Logits(*next, {0});
  ASSERT_TRUE(logits.ok());
  for (float x : *logits) ASSERT_TRUE(std::isfinite(x));
}

}  // namespace
}  // namespace xkv
