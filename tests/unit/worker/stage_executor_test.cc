#include "worker/stage_executor.h"

#include <algorithm>
#include <vector>

#include "allocator/budget_solver.h"
#include "allocator/importance_profile.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/importance_collector.h"
#include "model/kv_allocation.h"
#include "tests/unit/worker/worker_test_util.h"

namespace xkv {
namespace {

using ::testing::HasSubstr;
using ::xkv::testing::LoadWholeModel;
using ::xkv::testing::MakePipeline;
using ::xkv::testing::RandomTokens;
using ::xkv::testing::RunPipelineStep;

constexpr int kWindow = 8;

StageSequence Prefill(uint64_t id, const std::vector<int32_t>& prompt, SequenceMode mode) {
  StageSequence s;
  s.seq_id = id;
  s.tokens = prompt;
  s.n_new = static_cast<int64_t>(prompt.size());
  s.position = 0;
  s.new_sequence = true;
  s.mode = mode;
  s.return_logits = true;
  return s;
}

// The last stage's result of a step that succeeded everywhere.
StageStepResult LastResult(std::vector<absl::StatusOr<StageStepResult>> results) {
  for (const auto& r : results) EXPECT_TRUE(r.ok()) << r.status();
  if (results.empty() || !results.back().ok()) return {};
  return *std::move(results.back());
}

// Rows [0, length) of every head of one layer (K then V), for bitwise comparisons.
std::vector<float> LayerRows(const KvCache& c, int layer) {
  std::vector<float> out;
  const int64_t d = c.head_dim(), len = c.length(layer), stride = c.head_stride(layer);
  for (const float* base : {c.k(layer), c.v(layer)}) {
    for (int h = 0; h < c.n_kv_heads(); ++h) {
      out.insert(out.end(), base + h * stride, base + h * stride + len * d);
    }
  }
  return out;
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

  StageStep step{1, {Prefill(10, a, SequenceMode::kNormal), Prefill(11, b, SequenceMode::kNormal)}};
  BatchStep ref;
  ref.sequences = {{ca.get(), 21, 0}, {cb.get(), 13, 0}};
  std::vector<int32_t> tokens = a;
  tokens.insert(tokens.end(), b.begin(), b.end());
  int64_t pa = 21, pb = 13;
  const int V = model->config().vocab_size;
  for (int iter = 0; iter < 4; ++iter) {
    StageStepResult got = LastResult(RunPipelineStep(stages, step));
    absl::StatusOr<std::vector<float>> want = model->Forward(tokens, ref);
    ASSERT_TRUE(want.ok()) << want.status();
    ASSERT_EQ(got.sequences.size(), 2u);
    for (int s = 0; s < 2; ++s) {
      std::vector<float> row(want->begin() + s * V, want->begin() + (s + 1) * V);
      EXPECT_EQ(got.sequences[s].logits, row) << "step " << iter << " sequence " << s;
      EXPECT_EQ(got.sequences[s].token, Argmax(row));
    }
    const int32_t ta = got.sequences[0].token, tb = got.sequences[1].token;
    step = {static_cast<uint64_t>(iter + 2),
            {testing::DecodeSequence(10, ta, pa++), testing::DecodeSequence(11, tb, pb++)}};
    ref.sequences = {{ca.get(), 1, pa - 1}, {cb.get(), 1, pb - 1}};
    tokens = {ta, tb};
  }
  for (const auto& stage : stages) {
    EXPECT_EQ(stage->CacheLength(10, stage->layer_begin()), 24);
    EXPECT_EQ(stage->status().sequences, 2);
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

StageCompactSpec SpecFor(const PolicyBudgets& budgets, PolicyKind policy) {
  StageCompactSpec spec;
  spec.policy.kind = policy;
  for (size_t l = 0; l < budgets.budgets.size(); ++l) {
    spec.budgets.push_back({static_cast<int>(l), budgets.budgets[l]});
  }
  return spec;
}

// Gains of every stage, in layer order.
std::vector<LayerProfile> GainsOf(const std::vector<absl::StatusOr<StageStepResult>>& results) {
  std::vector<LayerProfile> out;
  for (const auto& r : results) {
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok() || !r->sequences[0].observed.has_value()) continue;
    for (const LayerGainCurve& c : r->sequences[0].observed->layers) {
      auto p = LayerProfileFromGains(c.gains);
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
  auto results = RunPipelineStep(stages, {1, {Prefill(5, prompt, SequenceMode::kObserve)}});
  const std::vector<LayerProfile> profiles = GainsOf(results);
  ASSERT_EQ(profiles.size(), 4u);
  absl::StatusOr<BudgetResult> solved = SolveForTotalTokens(profiles, N);
  ASSERT_TRUE(solved.ok()) << solved.status();
  EXPECT_EQ(solved->budgets, ref.plan.budgets.budgets);
  EXPECT_EQ(results.back()->sequences[0].logits, ref.logits);

  const StageCompactSpec spec = SpecFor(ref.plan.budgets, PolicyKind::kXkv);
  for (const auto& stage : stages) {
    absl::StatusOr<StageCompactResult> c = stage->Compact(5, spec);
    ASSERT_TRUE(c.ok()) << c.status();
    for (const StageLayerSize& l : c->layers) {
      EXPECT_EQ(l.tokens, ref.plan.budgets.budgets[l.layer] + kWindow);
      EXPECT_EQ(l.blocks, (l.tokens + 15) / 16);
    }
  }
  ExpectStagesHoldCache(stages, 5, *ref.cache);
  // Decode at position T (never the compacted cache length).
  const int32_t next = Argmax(ref.logits);
  StageStepResult got =
      LastResult(RunPipelineStep(stages, {2, {testing::DecodeSequence(5, next, 60)}}));
  BatchStep step;
  step.sequences = {{ref.cache.get(), 1, 60}};
  auto want = ref.model->Forward(std::vector<int32_t>{next}, step);
  ASSERT_TRUE(want.ok());
  EXPECT_EQ(got.sequences[0].logits, *want);
  ExpectStagesHoldCache(stages, 5, *ref.cache);
}

// per_request: a scores-only mini-prefill (no blocks), then the real prefill compacting in the
// same step with the solved budgets.
TEST_P(CompactionTest, PerRequestMatchesOneModel) {
  const std::vector<int32_t> prompt = RandomTokens(50, 4);
  Reference ref = CompactOnOneModel(prompt, PolicyKind::kXkv, 4 * 12);
  auto stages = MakePipeline(GetParam());
  auto mini = RunPipelineStep(stages, {1, {Prefill(9, prompt, SequenceMode::kScoresOnly)}});
  ASSERT_EQ(GainsOf(mini).size(), 4u);
  for (const auto& stage : stages) EXPECT_EQ(stage->status().usage.blocks_used, 0);
  StageSequence real = Prefill(9, prompt, SequenceMode::kNormal);
  real.new_sequence = false;
  real.compact = SpecFor(ref.plan.budgets, PolicyKind::kXkv);
  StageStepResult got = LastResult(RunPipelineStep(stages, {2, {real}}));
  EXPECT_EQ(got.sequences[0].logits, ref.logits);
  ExpectStagesHoldCache(stages, 9, *ref.cache);
}

// Baselines know their budgets up front: observe + compact in the prefill step itself.
TEST_P(CompactionTest, BaselinesCompactInTheirPrefillStep) {
  const std::vector<int32_t> prompt = RandomTokens(45, 5);
  for (PolicyKind policy : {PolicyKind::kSnapKv, PolicyKind::kStreaming}) {
    Reference ref = CompactOnOneModel(prompt, policy, 4 * 10);
    auto stages = MakePipeline(GetParam());
    StageSequence s = Prefill(3, prompt, SequenceMode::kObserve);
    s.compact = SpecFor(ref.plan.budgets, policy);
    StageStepResult got = LastResult(RunPipelineStep(stages, {1, {s}}));
    EXPECT_EQ(got.sequences[0].logits, ref.logits);
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
  StageStep step{1, {Prefill(1, prompt, SequenceMode::kNormal)}};
  step.dry_run = true;
  EXPECT_EQ(stages[0]->Step(step).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(stages[1]->Step(step).ok());
  step.dry_run = false;
  auto results = RunPipelineStep(stages, step);
  EXPECT_EQ(results[0].status().code(), absl::StatusCode::kResourceExhausted);
  // Stage 1 was told (it did not wait for its link timeout) and kept nothing.
  EXPECT_EQ(results[1].status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(results[1].status().message(), HasSubstr("layers [0, 2) need 6 more blocks"));
  for (const auto& stage : stages) {
    EXPECT_EQ(stage->status().usage.blocks_used, 0);
    EXPECT_EQ(stage->status().sequences, 0);
  }
  // A prompt that fits runs afterwards.
  auto ok = RunPipelineStep(stages, {2, {Prefill(2, RandomTokens(30, 7), SequenceMode::kNormal)}});
  for (const auto& r : ok) EXPECT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(stages[0]->status().usage.blocks_used, 2 * 2);
}

TEST(StageExecutorTest, MissingPreviousStageIsDeadlineExceeded) {
  auto stages = MakePipeline({0, 2, 4});
  StageStep step{1, {Prefill(1, RandomTokens(10, 8), SequenceMode::kNormal)}};
  step.link_timeout = absl::Milliseconds(1);
  EXPECT_EQ(stages[1]->Step(step).status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(stages[1]->status().sequences, 0);
}

TEST(StageExecutorTest, AccountingFollowsTheCacheAndReleaseFreesEverything) {
  auto stages = MakePipeline({0, 4});
  StageExecutor& stage = *stages[0];
  StageStep step{1, {Prefill(4, RandomTokens(33, 9), SequenceMode::kObserve)}};
  ASSERT_TRUE(stage.Step(step).ok());
  EXPECT_EQ(stage.status().usage.blocks_used, 4 * 3);  // ceil(33/16) per layer
  StageCompactSpec spec;
  spec.policy.kind = PolicyKind::kXkv;
  for (int l = 0; l < 4; ++l) spec.budgets.push_back({l, l * 5});  // b_l + 8 tokens
  absl::StatusOr<StageCompactResult> c = stage.Compact(4, spec);
  ASSERT_TRUE(c.ok()) << c.status();
  int64_t blocks = 0;
  for (int l = 0; l < 4; ++l) blocks += (l * 5 + kWindow + 15) / 16;
  EXPECT_EQ(stage.status().usage.blocks_used, blocks);
  EXPECT_EQ(c->bytes_held, blocks * stage.block_bytes());
  // Compacting twice is refused: the cache no longer holds the whole prompt.
  EXPECT_EQ(stage.Compact(4, spec).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(stage.Release(std::vector<uint64_t>{4, 99}), 1);
  EXPECT_EQ(stage.status().usage.blocks_used, 0);
  EXPECT_EQ(stage.Compact(4, spec).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(stage.Step({2, {testing::DecodeSequence(4, 5, 33)}}).status().code(),
            absl::StatusCode::kNotFound);
}

TEST(StageExecutorTest, RejectsBadSteps) {
  auto stages = MakePipeline({0, 4});
  StageExecutor& stage = *stages[0];
  const std::vector<int32_t> prompt = RandomTokens(20, 10);
  StageSequence bad = Prefill(1, prompt, SequenceMode::kNormal);
  bad.n_new = 5;  // tokens disagree
  EXPECT_EQ(stage.Step({1, {bad}}).status().code(), absl::StatusCode::kInvalidArgument);
  StageSequence mixed = Prefill(2, prompt, SequenceMode::kScoresOnly);
  EXPECT_EQ(stage.Step({2, {Prefill(1, prompt, SequenceMode::kNormal), mixed}}).status().code(),
            absl::StatusCode::kInvalidArgument);
  StageSequence needs_scores = Prefill(3, prompt, SequenceMode::kNormal);
  needs_scores.compact = StageCompactSpec{{{0, 1}, {1, 1}, {2, 1}, {3, 1}}, {}};
  EXPECT_EQ(stage.Step({3, {needs_scores}}).status().code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(
      stage.Step({4, {Prefill(4, {prompt.begin(), prompt.end() - 4}, SequenceMode::kNormal)}})
          .ok());
  StageSequence short_window = testing::DecodeSequence(4, prompt[16], 16);
  short_window.mode = SequenceMode::kObserve;  // a 1-token final chunk cannot hold the window
  EXPECT_EQ(stage.Step({5, {short_window}}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(stage.status().sequences, 1);
  EXPECT_EQ(stage.status().usage.blocks_used, 4 * 1);
}

}  // namespace
}  // namespace xkv
