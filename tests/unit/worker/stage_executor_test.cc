#include "worker/stage_executor.h"

#include <algorithm>
#include <string>
#include <vector>

#include "allocator/budget_solver.h"
#include "allocator/importance_profile.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/importance_collector.h"
#include "model/kv_allocation.h"
#include "tests/unit/model/xkv_test_util.h"
#include "tests/unit/worker/worker_test_util.h"

namespace xkv {
namespace {

using ::testing::HasSubstr;
using ::xkv::testing::DecodeSequence;
using ::xkv::testing::LayerRows;
using ::xkv::testing::LoadWholeModel;
using ::xkv::testing::LogitsOf;
using ::xkv::testing::MakePipeline;
using ::xkv::testing::MakeRelease;
using ::xkv::testing::MakeStep;
using ::xkv::testing::PrefillSequence;
using ::xkv::testing::RandomTokens;
using ::xkv::testing::RunPipelineStep;

constexpr int kWindow = 8;
constexpr xkv::v1::SequenceMode kObserve = xkv::v1::SEQUENCE_MODE_OBSERVE;
constexpr xkv::v1::SequenceMode kScoresOnly = xkv::v1::SEQUENCE_MODE_SCORES_ONLY;

// The last stage's result of a step that succeeded everywhere.
xkv::v1::StepResponse LastResult(std::vector<absl::StatusOr<xkv::v1::StepResponse>> results) {
  for (const auto& r : results) EXPECT_TRUE(r.ok()) << r.status();
  if (results.empty() || !results.back().ok()) return {};
  return *std::move(results.back());
}

void ExpectStagesHoldCache(const std::vector<std::unique_ptr<StageExecutor>>& stages, uint64_t id,
                           const KvCache& want) {
  for (const auto& stage : stages) {
    std::unique_ptr<KvCache> got = stage->CacheCopy(id);
    ASSERT_NE(got, nullptr);
    for (int l = stage->layer_begin(); l < stage->layer_end(); ++l) {
      ASSERT_EQ(got->length(l), want.length(l)) << "layer " << l;
      EXPECT_EQ(LayerRows(*got, l), LayerRows(want, l)) << "layer " << l;
    }
  }
}

class PipelineTest : public ::testing::TestWithParam<std::vector<int>> {};

// Two prompts in one batch, then greedy decode steps: the pipeline's logits equal one LlamaModel's
// bit for bit (same layers, same batch), and the last stage samples the argmax.
TEST_P(PipelineTest, LogitsMatchWholeModel) {
  auto stages = MakePipeline(GetParam());
  ASSERT_EQ(stages.size(), GetParam().size() - 1);
  std::unique_ptr<LlamaModel> model = LoadWholeModel();
  const std::vector<int32_t> a = RandomTokens(21, 1), b = RandomTokens(13, 2);
  std::unique_ptr<KvCache> ca = model->NewCache(), cb = model->NewCache();

  xkv::v1::StepRequest step = MakeStep(1, {PrefillSequence(10, a), PrefillSequence(11, b)});
  BatchStep ref;
  ref.sequences = {{ca.get(), 21, 0}, {cb.get(), 13, 0}};
  std::vector<int32_t> tokens = a;
  tokens.insert(tokens.end(), b.begin(), b.end());
  int64_t pa = 21, pb = 13;
  const int V = model->config().vocab_size;
  for (int iter = 0; iter < 4; ++iter) {
    xkv::v1::StepResponse got = LastResult(RunPipelineStep(stages, step));
    absl::StatusOr<std::vector<float>> want = model->Forward(tokens, ref);
    ASSERT_TRUE(want.ok()) << want.status();
    ASSERT_EQ(got.sequences_size(), 2);
    for (int s = 0; s < 2; ++s) {
      std::vector<float> row(want->begin() + s * V, want->begin() + (s + 1) * V);
      EXPECT_EQ(LogitsOf(got.sequences(s)), row) << "step " << iter << " sequence " << s;
      EXPECT_EQ(got.sequences(s).token(), Argmax(row));
    }
    const int32_t ta = got.sequences(0).token(), tb = got.sequences(1).token();
    step = MakeStep(iter + 2, {DecodeSequence(10, ta, pa++), DecodeSequence(11, tb, pb++)});
    ref.sequences = {{ca.get(), 1, pa - 1}, {cb.get(), 1, pb - 1}};
    tokens = {ta, tb};
  }
  for (const auto& stage : stages) {
    EXPECT_EQ(stage->CacheLength(10, stage->layer_begin()), 24);
    EXPECT_EQ(stage->status().sequences(), 2);
  }
}

INSTANTIATE_TEST_SUITE_P(Splits, PipelineTest,
                         ::testing::Values(std::vector<int>{0, 4}, std::vector<int>{0, 2, 4},
                                           std::vector<int>{0, 1, 3, 4}));

// The reference of one prompt on one whole LlamaModel, without the worker: a full prefill that
// scores the observation window (ImportanceCollector, the stages' scoring), the budgets and kept
// slots of model/kv_allocation (the paper's objective on those scores), applied to the full cache.
struct Reference {
  std::unique_ptr<LlamaModel> model;
  std::unique_ptr<KvCache> cache;  // compacted
  std::vector<float> logits;       // of the prompt's last token (before compaction)
  AllocationPlan plan;
};

Reference CompactOnOneModel(const std::vector<int32_t>& prompt, PolicyKind policy, int64_t tokens) {
  Reference r;
  r.model = LoadWholeModel();
  r.cache = r.model->NewCache();
  const ModelConfig& config = r.model->config();
  const int64_t T = static_cast<int64_t>(prompt.size());
  ImportanceOptions importance;
  importance.window = kWindow;
  ImportanceCollector collector(config, 0, config.n_layers, importance);
  EXPECT_TRUE(collector.Expect(0, T).ok());
  BatchStep step;
  step.sequences = {{r.cache.get(), T, 0, /*observe=*/true}};
  step.observer = collector.ObserverFor({0});
  absl::StatusOr<std::vector<float>> logits = r.model->Forward(prompt, step);
  EXPECT_TRUE(logits.ok()) << logits.status();
  if (logits.ok()) r.logits = *std::move(logits);
  KvSettings kv;
  kv.policy = policy;
  kv.target = KvTarget::Tokens(tokens);
  kv.allocator.kind = AllocatorKind::kPaper;
  absl::StatusOr<AllocationPlan> plan = PlanAllocation(collector.Take(0), config, kv);
  EXPECT_TRUE(plan.ok()) << plan.status();
  if (!plan.ok()) return r;
  r.plan = *std::move(plan);
  EXPECT_TRUE(r.plan.compress);
  EXPECT_TRUE(ApplyAllocation(*r.cache, r.plan).ok());
  return r;
}

xkv::v1::CompactSpec SpecFor(const std::vector<int64_t>& budgets, PolicyKind policy) {
  xkv::v1::CompactSpec spec;
  spec.mutable_selection()->set_policy(std::string(PolicyName(policy)));
  for (size_t l = 0; l < budgets.size(); ++l) {
    xkv::v1::LayerBudget* b = spec.add_budgets();
    b->set_layer(static_cast<int>(l));
    b->set_kept_prefix(budgets[l]);
  }
  return spec;
}

xkv::v1::CompactRequest CompactOf(uint64_t id, const xkv::v1::CompactSpec& spec) {
  xkv::v1::CompactRequest r;
  r.set_seq_id(id);
  *r.mutable_compact() = spec;
  return r;
}

// Gains of every stage, in layer order.
std::vector<LayerProfile> GainsOf(
    const std::vector<absl::StatusOr<xkv::v1::StepResponse>>& results) {
  std::vector<LayerProfile> out;
  for (const auto& r : results) {
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok() || !r->sequences(0).has_observed()) continue;
    for (const xkv::v1::LayerGains& c : r->sequences(0).observed().layers()) {
      auto p = LayerProfileFromGains({c.gains().begin(), c.gains().end()});
      EXPECT_TRUE(p.ok()) << p.status();
      out.push_back(*std::move(p));
    }
  }
  return out;
}

class CompactionTest : public ::testing::TestWithParam<std::vector<int>> {};

// one_pass: observed prefill → gains to the coordinator → its solve gives the reference's budgets
// → Compact on every stage gives the reference's caches; decoding continues identically.
TEST_P(CompactionTest, OnePassMatchesOneModel) {
  const std::vector<int32_t> prompt = RandomTokens(60, 3);
  const int64_t N = 4 * 20;
  Reference ref = CompactOnOneModel(prompt, PolicyKind::kXkv, N);
  auto stages = MakePipeline(GetParam());
  auto results = RunPipelineStep(stages, MakeStep(1, {PrefillSequence(5, prompt, kObserve)}));
  const std::vector<LayerProfile> profiles = GainsOf(results);
  ASSERT_EQ(profiles.size(), 4u);
  absl::StatusOr<BudgetResult> solved = SolveForTotalTokens(profiles, N);
  ASSERT_TRUE(solved.ok()) << solved.status();
  EXPECT_EQ(solved->budgets, ref.plan.budgets.budgets);
  EXPECT_EQ(LogitsOf(results.back()->sequences(0)), ref.logits);

  const xkv::v1::CompactSpec spec = SpecFor(ref.plan.budgets.budgets, PolicyKind::kXkv);
  for (const auto& stage : stages) {
    absl::StatusOr<xkv::v1::CompactResponse> c = stage->Compact(CompactOf(5, spec));
    ASSERT_TRUE(c.ok()) << c.status();
    ASSERT_EQ(c->layers_size(), stage->layer_end() - stage->layer_begin());
    for (const xkv::v1::LayerSize& l : c->layers()) {
      EXPECT_EQ(l.tokens(), ref.plan.budgets.budgets[l.layer()] + kWindow);
      EXPECT_EQ(l.blocks(), (l.tokens() + 15) / 16);
    }
  }
  ExpectStagesHoldCache(stages, 5, *ref.cache);
  // Decode at position T (never the compacted cache length).
  const int32_t next = Argmax(ref.logits);
  xkv::v1::StepResponse got =
      LastResult(RunPipelineStep(stages, MakeStep(2, {DecodeSequence(5, next, 60)})));
  BatchStep step;
  step.sequences = {{ref.cache.get(), 1, 60}};
  auto want = ref.model->Forward(std::vector<int32_t>{next}, step);
  ASSERT_TRUE(want.ok());
  EXPECT_EQ(LogitsOf(got.sequences(0)), *want);
  ExpectStagesHoldCache(stages, 5, *ref.cache);
}

// per_request: a scores-only mini-prefill (no blocks), then the real prefill compacting in the
// same step with the solved budgets.
TEST_P(CompactionTest, PerRequestMatchesOneModel) {
  const std::vector<int32_t> prompt = RandomTokens(50, 4);
  Reference ref = CompactOnOneModel(prompt, PolicyKind::kXkv, 4 * 12);
  auto stages = MakePipeline(GetParam());
  auto mini = RunPipelineStep(stages, MakeStep(1, {PrefillSequence(9, prompt, kScoresOnly)}));
  ASSERT_EQ(GainsOf(mini).size(), 4u);
  for (const auto& stage : stages) EXPECT_EQ(stage->status().usage().blocks_used(), 0);
  xkv::v1::StepSequence real = PrefillSequence(9, prompt);
  real.set_new_sequence(false);
  *real.mutable_compact() = SpecFor(ref.plan.budgets.budgets, PolicyKind::kXkv);
  xkv::v1::StepResponse got = LastResult(RunPipelineStep(stages, MakeStep(2, {real})));
  EXPECT_EQ(LogitsOf(got.sequences(0)), ref.logits);
  ExpectStagesHoldCache(stages, 9, *ref.cache);
}

// Baselines know their budgets up front: observe + compact in the prefill step itself.
TEST_P(CompactionTest, BaselinesCompactInTheirPrefillStep) {
  const std::vector<int32_t> prompt = RandomTokens(45, 5);
  for (PolicyKind policy : {PolicyKind::kSnapKv, PolicyKind::kStreaming}) {
    Reference ref = CompactOnOneModel(prompt, policy, 4 * 10);
    auto stages = MakePipeline(GetParam());
    xkv::v1::StepSequence s = PrefillSequence(3, prompt, kObserve);
    *s.mutable_compact() = SpecFor(ref.plan.budgets.budgets, policy);
    xkv::v1::StepResponse got = LastResult(RunPipelineStep(stages, MakeStep(1, {s})));
    EXPECT_EQ(LogitsOf(got.sequences(0)), ref.logits);
    ExpectStagesHoldCache(stages, 3, *ref.cache);
  }
}

INSTANTIATE_TEST_SUITE_P(Splits, CompactionTest,
                         ::testing::Values(std::vector<int>{0, 4}, std::vector<int>{0, 2, 4},
                                           std::vector<int>{0, 1, 3, 4}));

TEST(StageExecutorTest, ExhaustionIsResourceExhaustedEverywhereAndChangesNothing) {
  // 2 blocks (32 tokens) per layer on stage 0 (4 in its one pool for 2 layers), plenty on stage 1.
  auto stages = MakePipeline({0, 2, 4}, {}, {2, 100});
  const std::vector<int32_t> prompt = RandomTokens(40, 6);
  xkv::v1::StepRequest step = MakeStep(1, {PrefillSequence(1, prompt)});
  step.set_dry_run(true);
  EXPECT_EQ(stages[0]->Step(step).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(stages[1]->Step(step).ok());
  step.set_dry_run(false);
  auto results = RunPipelineStep(stages, step);
  EXPECT_EQ(results[0].status().code(), absl::StatusCode::kResourceExhausted);
  // Stage 1 was told (it did not wait for its link timeout) and kept nothing.
  EXPECT_EQ(results[1].status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(results[1].status().message(), HasSubstr("layers [0, 2) need 6 more blocks"));
  for (const auto& stage : stages) {
    EXPECT_EQ(stage->status().usage().blocks_used(), 0);
    EXPECT_EQ(stage->status().sequences(), 0);
  }
  // A prompt that fits runs afterwards.
  auto ok = RunPipelineStep(stages, MakeStep(2, {PrefillSequence(2, RandomTokens(30, 7))}));
  for (const auto& r : ok) EXPECT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(stages[0]->status().usage().blocks_used(), 2 * 2);
}

TEST(StageExecutorTest, MissingPreviousStageIsDeadlineExceeded) {
  auto stages = MakePipeline({0, 2, 4});
  xkv::v1::StepRequest step = MakeStep(1, {PrefillSequence(1, RandomTokens(10, 8))});
  step.set_link_timeout_ms(1);
  EXPECT_EQ(stages[1]->Step(step).status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(stages[1]->status().sequences(), 0);
}

TEST(StageExecutorTest, AccountingFollowsTheCacheAndReleaseFreesEverything) {
  auto stages = MakePipeline({0, 4});
  StageExecutor& stage = *stages[0];
  ASSERT_TRUE(stage.Step(MakeStep(1, {PrefillSequence(4, RandomTokens(33, 9), kObserve)})).ok());
  EXPECT_EQ(stage.status().usage().blocks_used(), 4 * 3);  // ceil(33/16) per layer
  const xkv::v1::CompactRequest compact = CompactOf(4, SpecFor({0, 5, 10, 15}, PolicyKind::kXkv));
  absl::StatusOr<xkv::v1::CompactResponse> c = stage.Compact(compact);  // b_l + 8 tokens
  ASSERT_TRUE(c.ok()) << c.status();
  int64_t blocks = 0;
  for (int l = 0; l < 4; ++l) blocks += (l * 5 + kWindow + 15) / 16;
  EXPECT_EQ(stage.status().usage().blocks_used(), blocks);
  EXPECT_EQ(c->usage().blocks_used(), blocks);
  EXPECT_EQ(c->bytes_held(), blocks * stage.block_bytes());
  // Compacting twice is refused: the cache no longer holds the whole prompt.
  EXPECT_EQ(stage.Compact(compact).status().code(), absl::StatusCode::kFailedPrecondition);
  const xkv::v1::ReleaseResponse released = stage.Release(MakeRelease({4, 99}));
  EXPECT_EQ(released.released(), 1);
  EXPECT_EQ(released.usage().blocks_used(), 0);
  EXPECT_EQ(stage.status().usage().blocks_used(), 0);
  EXPECT_EQ(stage.Compact(compact).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(stage.Step(MakeStep(2, {DecodeSequence(4, 5, 33)})).status().code(),
            absl::StatusCode::kNotFound);
}

TEST(StageExecutorTest, RejectsBadSteps) {
  auto stages = MakePipeline({0, 4});
  StageExecutor& stage = *stages[0];
  const std::vector<int32_t> prompt = RandomTokens(20, 10);
  xkv::v1::StepSequence bad = PrefillSequence(1, prompt);
  bad.set_n_new(5);  // tokens disagree
  EXPECT_EQ(stage.Step(MakeStep(1, {bad})).status().code(), absl::StatusCode::kInvalidArgument);
  const xkv::v1::StepSequence mixed = PrefillSequence(2, prompt, kScoresOnly);
  EXPECT_EQ(stage.Step(MakeStep(2, {PrefillSequence(1, prompt), mixed})).status().code(),
            absl::StatusCode::kInvalidArgument);
  xkv::v1::StepSequence needs_scores = PrefillSequence(3, prompt);
  *needs_scores.mutable_compact() = SpecFor({1, 1, 1, 1}, PolicyKind::kXkv);
  EXPECT_EQ(stage.Step(MakeStep(3, {needs_scores})).status().code(),
            absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(
      stage.Step(MakeStep(4, {PrefillSequence(4, {prompt.begin(), prompt.end() - 4})})).ok());
  xkv::v1::StepSequence short_window = DecodeSequence(4, prompt[16], 16);
  short_window.set_mode(kObserve);  // a 1-token final chunk cannot hold the window
  EXPECT_EQ(stage.Step(MakeStep(5, {short_window})).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(stage.status().sequences(), 1);
  EXPECT_EQ(stage.status().usage().blocks_used(), 4 * 1);
}

}  // namespace
}  // namespace xkv
