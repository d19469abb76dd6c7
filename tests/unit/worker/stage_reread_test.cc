// SEQUENCE_MODE_REREAD (the reconstruct profile, architecture.md §3.5) on 1 and 2 stages: the
// re-reading spans keep no KV and take no blocks, and the last span reports the scores that the
// eval harness computes on one engine (ScoreByReconstruction, unpooled; they replace the
// window's). Bad re-reading steps are refused and change nothing.
#include <memory>
#include <vector>

#include "gtest/gtest.h"
#include "model/reconstruct_scorer.h"
#include "tests/unit/worker/worker_test_util.h"
#include "worker/stage_engine_factory.h"

namespace xkv {
namespace {

using ::xkv::testing::MakePipeline;
using ::xkv::testing::MakeStep;
using ::xkv::testing::RandomTokens;
using ::xkv::testing::RunPipelineStep;
using ::xkv::testing::WorkerModelPath;

constexpr int64_t kPrompt = 40, kChunk = 24;

const RepeatPrompt& Repeat() {
  static const RepeatPrompt* r = new RepeatPrompt{{5, 6, 7}, {8, 9}, {10, 11}};
  return *r;
}

xkv::v1::StepSequence Reread(uint64_t id, const std::vector<int32_t>& prompt, int64_t b, int64_t e,
                             bool last) {
  xkv::v1::StepSequence s;
  s.set_seq_id(id);
  const std::vector<int32_t> tokens =
      RereadInput(prompt, b, e, Repeat(), ReconstructOptions{}.overlap);
  s.mutable_tokens()->Add(tokens.begin(), tokens.end());
  s.set_n_new(static_cast<int64_t>(tokens.size()));
  s.set_position(static_cast<int64_t>(prompt.size()));
  s.set_mode(xkv::v1::SEQUENCE_MODE_REREAD);
  s.mutable_reread()->set_chunk_begin(b);
  s.mutable_reread()->set_chunk_end(e);
  s.mutable_reread()->set_last(last);
  s.set_return_scores(true);
  return s;
}

xkv::v1::StepSequence ObservedPrefill(uint64_t id, const std::vector<int32_t>& prompt) {
  return testing::PrefillSequence(id, prompt, xkv::v1::SEQUENCE_MODE_OBSERVE);
}

// The eval harness's scores of `prompt` on one engine holding every layer.
CollectedScores Reference(const std::vector<int32_t>& prompt, const ImportanceOptions& scoring) {
  StageOptions o;
  o.model_path = WorkerModelPath();
  o.numerics = Numerics::kExact;
  auto engine = LoadStageEngine(o);
  EXPECT_TRUE(engine.ok()) << engine.status();
  EngineStep step;
  step.sequences.push_back({1, kPrompt, 0, false});
  EXPECT_TRUE((*engine)->EmbedResident(prompt).ok());
  EXPECT_TRUE((*engine)->RunLayersResident(step, scoring, nullptr).ok());
  ReconstructOptions ro;
  ro.chunk_tokens = kChunk;
  auto raw = ScoreByReconstruction(engine->get(), 1, prompt, Repeat(), ro);
  EXPECT_TRUE(raw.ok()) << raw.status();
  ImportanceOptions unpooled = scoring;
  unpooled.pool_kernel = kRereadPoolKernel;
  auto s = ReconstructCollectedScores(*raw, kPrompt, (*engine)->config(), unpooled);
  EXPECT_TRUE(s.ok()) << s.status();
  return *std::move(s);
}

class RereadTest : public ::testing::TestWithParam<std::vector<int>> {};

TEST_P(RereadTest, LastSpanReportsTheEvalHarnessScores) {
  auto stages = MakePipeline(GetParam());
  ASSERT_EQ(stages.size(), GetParam().size() - 1);
  const std::vector<int32_t> prompt = RandomTokens(kPrompt, 3);
  for (const auto& r : RunPipelineStep(stages, MakeStep(1, {ObservedPrefill(7, prompt)}))) {
    ASSERT_TRUE(r.ok()) << r.status();
  }
  std::vector<int64_t> used;
  for (const auto& s : stages) used.push_back(s->status().usage().blocks_used());

  auto first = RunPipelineStep(stages, MakeStep(2, {Reread(7, prompt, 0, kChunk, false)}));
  for (const auto& r : first) {
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_FALSE(r->sequences(0).has_observed()) << "more spans to come";
  }
  auto last = RunPipelineStep(stages, MakeStep(3, {Reread(7, prompt, kChunk, kPrompt, true)}));
  const CollectedScores want = Reference(prompt, stages[0]->options().importance);
  for (size_t i = 0; i < stages.size(); ++i) {
    ASSERT_TRUE(last[i].ok()) << last[i].status();
    ASSERT_TRUE(last[i]->sequences(0).has_observed());
    const xkv::v1::ObservedSequence& observed = last[i]->sequences(0).observed();
    ASSERT_EQ(observed.layers_size(), stages[i]->layer_end() - stages[i]->layer_begin());
    for (const xkv::v1::LayerGains& c : observed.layers()) {
      const auto w = want.layer(c.layer());
      ASSERT_EQ(static_cast<size_t>(c.scores_size()), w.size()) << "layer " << c.layer();
      for (size_t j = 0; j < w.size(); ++j) {
        EXPECT_NEAR(c.scores(static_cast<int>(j)), w[j], 1e-6) << c.layer();
      }
    }
    EXPECT_EQ(stages[i]->status().usage().blocks_used(), used[i]) << "re-reading keeps no KV";
    for (int l = stages[i]->layer_begin(); l < stages[i]->layer_end(); ++l) {
      EXPECT_EQ(stages[i]->CacheLength(7, l), kPrompt);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Splits, RereadTest,
                         ::testing::Values(std::vector<int>{0, 4}, std::vector<int>{0, 2, 4}));

TEST(RereadStepTest, BadStepsAreRefusedAndChangeNothing) {
  auto stages = MakePipeline({0, 4});
  ASSERT_EQ(stages.size(), 1u);
  StageExecutor& stage = *stages[0];
  const std::vector<int32_t> prompt = RandomTokens(kPrompt, 4);
  const xkv::v1::StepSequence unknown = Reread(9, prompt, 0, kChunk, true);
  EXPECT_EQ(stage.Step(MakeStep(1, {unknown})).status().code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(stage.Step(MakeStep(2, {ObservedPrefill(9, prompt)})).ok());
  const int64_t used = stage.status().usage().blocks_used();
  xkv::v1::StepSequence past = Reread(9, prompt, 30, kPrompt, true);
  past.mutable_reread()->set_chunk_end(kPrompt + 1);  // past the prompt
  auto r = stage.Step(MakeStep(3, {past}));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("chunk_begin"), std::string::npos) << r.status();
  xkv::v1::StepSequence moved = Reread(9, prompt, 0, kChunk, true);
  moved.set_position(kPrompt - 1);  // the cache holds the whole prompt
  EXPECT_EQ(stage.Step(MakeStep(4, {moved})).status().code(), absl::StatusCode::kInvalidArgument);
  xkv::v1::StepSequence other = testing::DecodeSequence(10, 3, 0);
  other.set_new_sequence(true);
  EXPECT_EQ(stage.Step(MakeStep(5, {Reread(9, prompt, 0, kChunk, true), other})).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(stage.status().usage().blocks_used(), used);
  EXPECT_EQ(stage.CacheLength(9, 0), kPrompt);
}

}  // namespace
}  // namespace xkv
