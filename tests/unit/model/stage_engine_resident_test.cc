// StageEngine's resident path (EmbedResident → RunLayersResident → LogitsResident, what a stage
// holding every layer runs) gives exactly what Embed → RunLayers → Logits give on the CPU engine,
// for a prefill chunk and the decode steps after it; misuse is a clear error.
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

}  // namespace
}  // namespace xkv
