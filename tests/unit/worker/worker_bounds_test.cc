// Every bound of the Worker service's edge (StageOptionsFromRequest, StageExecutor::Step and
// Compact, DeliverPushedHidden, the KV pool):
// out-of-range values are refused with INVALID_ARGUMENT (RESOURCE_EXHAUSTED for memory) naming
// the field, its value and the allowed range, overflow-safely, before any work.
#include <cstdint>
#include <limits>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/unit/worker/worker_test_util.h"
#include "worker/grpc_stage_link.h"
#include "worker/hidden_mailbox.h"
#include "worker/stage_executor.h"
#include "worker/stage_options.h"
#include "worker/worker_limits.h"

namespace xkv {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;
using ::xkv::testing::WorkerModelPath;

constexpr int64_t kHuge = int64_t{1} << 62;

// A new sequence of n_new tokens (none beyond the context length) at `position`.
xkv::v1::StepSequence NewSequence(uint64_t id, int64_t n_new, int64_t position) {
  xkv::v1::StepSequence s;
  s.set_seq_id(id);
  s.set_n_new(n_new);
  s.set_position(position);
  s.set_new_sequence(true);
  for (int64_t i = 0; n_new <= 2048 && i < n_new; ++i) s.add_tokens(1);
  return s;
}

xkv::v1::StepRequest OneSequenceStep(int64_t n_new, int64_t position) {
  xkv::v1::StepRequest r;
  r.set_step_id(1);
  *r.add_sequences() = NewSequence(7, n_new, position);
  return r;
}

void ExpectInvalid(const absl::Status& s, const std::string& field) {
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(s.message(), HasSubstr(field)) << s;
}

// The whole test model (context length 2048) in one stage taking at most 4096 new tokens a step.
// Steps are dry runs: a step whose fields pass only plans its blocks.
class RequestBoundsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    StageOptions o;
    o.max_step_tokens = 4096;
    stages_ = testing::MakePipeline({0, 4}, o);
    ASSERT_EQ(stages_.size(), 1u);
    ASSERT_EQ(stages_[0]->config().context_length, 2048);
  }
  absl::Status Step(xkv::v1::StepRequest r) {
    r.set_dry_run(true);
    return stages_[0]->Step(r).status();
  }
  // Fields that pass reach the (unknown) sequence: NOT_FOUND.
  absl::Status Compact(const xkv::v1::CompactSpec& spec) {
    xkv::v1::CompactRequest r;
    r.set_seq_id(7);
    *r.mutable_compact() = spec;
    return stages_[0]->Compact(r).status();
  }
  std::vector<std::unique_ptr<StageExecutor>> stages_;
};

TEST_F(RequestBoundsTest, LinkTimeoutIsCapped) {
  xkv::v1::StepRequest r = OneSequenceStep(1, 0);
  r.set_link_timeout_ms(kHuge);
  ExpectInvalid(Step(r), "link_timeout_ms 4611686018427387904 is outside [0, 60000]");
  r.set_link_timeout_ms(-1);
  ExpectInvalid(Step(r), "link_timeout_ms -1");
  r.set_link_timeout_ms(60000);
  EXPECT_TRUE(Step(r).ok());
}

TEST_F(RequestBoundsTest, NewTokensAndPositionsStayInTheContext) {
  EXPECT_TRUE(Step(OneSequenceStep(2048, 0)).ok());
  EXPECT_TRUE(Step(OneSequenceStep(1, 2047)).ok());
  ExpectInvalid(Step(OneSequenceStep(2049, 0)), "sequences[0].n_new 2049 is outside [1, 2048]");
  ExpectInvalid(Step(OneSequenceStep(-3, 0)), "n_new -3");
  ExpectInvalid(Step(OneSequenceStep(1, 2048)), "sequences[0].position 2048 is outside [0, 2047]");
  ExpectInvalid(Step(OneSequenceStep(1, -1)), "position -1");
  // Values whose sum would overflow int64 are refused, not wrapped.
  ExpectInvalid(Step(OneSequenceStep(kHuge, kHuge)), "n_new");
  ExpectInvalid(Step(OneSequenceStep(1, std::numeric_limits<int64_t>::max())), "position");
  // n_new from the tokens when unset; more tokens than the context is refused.
  xkv::v1::StepRequest r = OneSequenceStep(0, 0);
  for (int i = 0; i < 2049; ++i) r.mutable_sequences(0)->add_tokens(1);
  ExpectInvalid(Step(r), "sequences[0].tokens size 2049");
  r.mutable_sequences(0)->mutable_tokens()->Truncate(2000);
  EXPECT_TRUE(Step(r).ok());
  r.mutable_sequences(0)->set_mode(static_cast<xkv::v1::SequenceMode>(9));
  ExpectInvalid(Step(r), "sequences.mode 9 unknown");
}

// A recompute's replayed decode rows: at most the step's new tokens, and only in a NORMAL step.
TEST_F(RequestBoundsTest, ReplayedDecodesStayWithinTheNewTokens) {
  xkv::v1::StepRequest r = OneSequenceStep(40, 0);
  for (int64_t ok : {0, 1, 40}) {
    r.mutable_sequences(0)->set_replayed_decodes(ok);
    EXPECT_TRUE(Step(r).ok()) << ok;
  }
  for (int64_t bad : {int64_t{41}, int64_t{-1}, kHuge}) {
    r.mutable_sequences(0)->set_replayed_decodes(bad);
    ExpectInvalid(Step(r),
                  absl::StrCat("sequences[0].replayed_decodes ", bad, " is outside [0, 40]"));
  }
  r.mutable_sequences(0)->set_replayed_decodes(1);
  r.mutable_sequences(0)->set_mode(xkv::v1::SEQUENCE_MODE_OBSERVE);
  ExpectInvalid(Step(r), "sequences[0].replayed_decodes 1 is outside [0, 0]");
}

// A request's window scoring: known reduction and pooling, an odd kernel in [1, 63]
// (ValidatePoolKernel, the one rule of allocator/kv_spec.h).
TEST_F(RequestBoundsTest, ScoringIsChecked) {
  xkv::v1::StepRequest r = OneSequenceStep(40, 0);
  r.mutable_sequences(0)->set_mode(xkv::v1::SEQUENCE_MODE_OBSERVE);
  xkv::v1::SequenceScoring* scoring = r.mutable_sequences(0)->mutable_scoring();
  scoring->set_reduce(xkv::v1::SCORE_REDUCE_MAX);
  scoring->set_pool(xkv::v1::SCORE_POOL_MAX);
  for (int kernel : {1, 31, 63}) {
    scoring->set_pool_kernel(kernel);
    EXPECT_TRUE(Step(r).ok()) << kernel;
  }
  for (int kernel : {0, 2, 65, -1, std::numeric_limits<int32_t>::max()}) {
    scoring->set_pool_kernel(kernel);
    ExpectInvalid(Step(r), absl::StrCat("sequences[0].scoring.pool_kernel is ", kernel,
                                        "; it must be an odd number in [1, 63]"));
  }
  scoring->set_pool_kernel(7);
  scoring->set_reduce(static_cast<xkv::v1::ScoreReduce>(3));
  ExpectInvalid(Step(r), "sequences[0].scoring.reduce 3 unknown");
  scoring->set_reduce(xkv::v1::SCORE_REDUCE_SUM);
  scoring->set_pool(static_cast<xkv::v1::ScorePool>(5));
  ExpectInvalid(Step(r), "sequences[0].scoring.pool 5 unknown");
}

TEST_F(RequestBoundsTest, AStepCarriesAtMostMaxStepTokens) {
  ExpectInvalid(Step(xkv::v1::StepRequest()), "sequences size 0 is outside [1, 4096]");
  xkv::v1::StepRequest r;
  for (int i = 0; i < 3; ++i) *r.add_sequences() = NewSequence(i, 1500, 0);
  absl::Status s = Step(r);
  ExpectInvalid(s, "more than 4096 new tokens");
  EXPECT_THAT(s.message(), HasSubstr("--max-step-tokens"));
  *r.mutable_sequences(2) = NewSequence(2, 1000, 0);
  EXPECT_TRUE(Step(r).ok());
}

TEST_F(RequestBoundsTest, BudgetsStayInTheContext) {
  xkv::v1::CompactSpec spec;
  spec.mutable_selection()->set_policy("snapkv");
  xkv::v1::LayerBudget* b = spec.add_budgets();
  b->set_layer(0);
  b->set_kept_prefix(kHuge);
  ExpectInvalid(Compact(spec), "kept_prefix 4611686018427387904");
  b->set_kept_prefix(-1);
  ExpectInvalid(Compact(spec), "kept_prefix -1");
  b->set_kept_prefix(100);
  spec.mutable_selection()->set_sink_tokens(5000);
  ExpectInvalid(Compact(spec), "sink_tokens 5000");
  spec.mutable_selection()->set_sink_tokens(4);
  EXPECT_EQ(Compact(spec).code(), absl::StatusCode::kNotFound);
  // The same checks on a step's compaction, before anything else.
  xkv::v1::StepRequest r = OneSequenceStep(40, 0);
  *r.mutable_sequences(0)->mutable_compact() = spec;
  r.mutable_sequences(0)->mutable_compact()->mutable_budgets(0)->set_kept_prefix(-1);
  ExpectInvalid(Step(r), "compact.budgets (layer 0).kept_prefix -1");
  r.mutable_sequences(0)->mutable_compact()->mutable_selection()->set_policy("nope");
  EXPECT_EQ(Step(r).code(), absl::StatusCode::kInvalidArgument);
}

// Per-(layer, KV head) budgets and head scores only on a stage loaded with per-head tables, one
// budget per KV head, each in the context, kept_prefix their largest.
TEST_F(RequestBoundsTest, PerHeadBudgetsNeedPerHeadTablesAndAreBounded) {
  const int heads = stages_[0]->config().n_kv_heads;
  ASSERT_GE(heads, 2);
  EXPECT_EQ(stages_[0]->head_tables(), 1);
  xkv::v1::CompactSpec spec;
  xkv::v1::LayerBudget* b = spec.add_budgets();
  b->set_layer(0);
  b->set_kept_prefix(9);
  for (int h = 0; h < heads; ++h) b->add_head_kept_prefix(h == 0 ? 9 : 3);
  ExpectInvalid(Compact(spec), "compact.budgets (layer 0).head_kept_prefix: per-(layer, KV head)");
  xkv::v1::StepRequest r = OneSequenceStep(40, 0);
  r.mutable_sequences(0)->set_per_head(true);
  ExpectInvalid(Step(r), "sequences[0].per_head: per-(layer, KV head) budgets need a stage");

  StageOptions o;
  o.per_head_tables = true;
  o.kv_capacity_blocks = 8;
  std::vector<std::unique_ptr<StageExecutor>> per_head = testing::MakePipeline({0, 4}, o);
  ASSERT_EQ(per_head.size(), 1u);
  StageExecutor& stage = *per_head[0];
  EXPECT_EQ(stage.head_tables(), heads);
  EXPECT_EQ(stage.Description().head_tables(), heads);
  EXPECT_EQ(stage.capacity_blocks(), 8 * 4 * heads);  // the same bytes in blocks of one head
  EXPECT_EQ(stage.block_bytes() * heads, stages_[0]->block_bytes());
  r.set_dry_run(true);
  EXPECT_TRUE(stage.Step(r).ok());
  const auto compact = [&](const xkv::v1::CompactSpec& c) {
    xkv::v1::CompactRequest q;
    q.set_seq_id(7);
    *q.mutable_compact() = c;
    return stage.Compact(q).status();
  };
  EXPECT_EQ(compact(spec).code(), absl::StatusCode::kNotFound);  // every field passed
  b->add_head_kept_prefix(1);
  ExpectInvalid(compact(spec), absl::StrCat("head_kept_prefix size ", heads + 1));
  b->mutable_head_kept_prefix()->RemoveLast();
  b->set_head_kept_prefix(1, -1);
  ExpectInvalid(compact(spec), "head_kept_prefix[1] -1");
  b->set_head_kept_prefix(1, kHuge);
  ExpectInvalid(compact(spec), "head_kept_prefix[1] 4611686018427387904");
  b->set_head_kept_prefix(1, 3);
  b->set_kept_prefix(10);
  ExpectInvalid(compact(spec), "kept_prefix 10 is outside [9, 9]");
  // Per-head budgets for some of the stage's layers only, on a step's compaction.
  b->set_kept_prefix(9);
  for (int l = 1; l < 4; ++l) {
    xkv::v1::LayerBudget* other = spec.add_budgets();
    other->set_layer(l);
    other->set_kept_prefix(5);
  }
  xkv::v1::StepRequest compacting = OneSequenceStep(40, 0);
  compacting.set_dry_run(true);
  compacting.mutable_sequences(0)->set_mode(xkv::v1::SEQUENCE_MODE_OBSERVE);
  *compacting.mutable_sequences(0)->mutable_compact() = spec;
  ExpectInvalid(stage.Step(compacting).status(), "per-head budgets to 1 of the stage's 4 layers");
}

xkv::v1::LoadStageRequest GoodLoad() {
  xkv::v1::LoadStageRequest r;
  r.set_model_path(WorkerModelPath());
  r.set_layer_begin(0);
  r.set_layer_end(2);
  r.set_is_first(true);
  r.set_stage_index(0);
  r.set_num_stages(2);
  return r;
}

TEST(LoadBoundsTest, FieldsAreBounded) {
  ASSERT_TRUE(StageOptionsFromRequest(GoodLoad(), "cpu", 1).ok());
  xkv::v1::LoadStageRequest r = GoodLoad();
  r.set_link_timeout_ms(kHuge);
  ExpectInvalid(StageOptionsFromRequest(r, "cpu", 1).status(), "link_timeout_ms");
  r = GoodLoad();
  r.set_block_tokens(1 << 20);
  ExpectInvalid(StageOptionsFromRequest(r, "cpu", 1).status(), "block_tokens 1048576");
  r = GoodLoad();
  r.set_kv_capacity_blocks(-5);
  ExpectInvalid(StageOptionsFromRequest(r, "cpu", 1).status(), "kv_capacity_blocks -5");
  r = GoodLoad();
  r.add_layer_capacity_blocks(10);
  ExpectInvalid(StageOptionsFromRequest(r, "cpu", 1).status(), "1 entries for 2 layers");
  r.add_layer_capacity_blocks(-1);
  ExpectInvalid(StageOptionsFromRequest(r, "cpu", 1).status(), "layer_capacity_blocks[1] -1");
  r = GoodLoad();
  r.mutable_importance()->set_window(1 << 30);
  ExpectInvalid(StageOptionsFromRequest(r, "cpu", 1).status(), "importance.window 1073741824");
  r = GoodLoad();
  r.mutable_importance()->set_pool_kernel(8);
  ExpectInvalid(StageOptionsFromRequest(r, "cpu", 1).status(),
                "importance.pool_kernel is 8; it must be an odd number in [1, 63]");
  r.mutable_importance()->set_pool_kernel(65);
  ExpectInvalid(StageOptionsFromRequest(r, "cpu", 1).status(), "importance.pool_kernel is 65");
  r = GoodLoad();
  r.set_stage_index(2);
  ExpectInvalid(StageOptionsFromRequest(r, "cpu", 1).status(), "stage_index 2 is outside [0, 0]");
  // A later stage of many: stage_index up to its layer_begin and below num_stages.
  r.set_layer_begin(8);
  r.set_layer_end(12);
  r.set_is_first(false);
  r.set_num_stages(8);
  r.set_stage_index(7);
  EXPECT_TRUE(StageOptionsFromRequest(r, "cpu", 1).ok());
  r.set_num_stages(1 << 20);
  ExpectInvalid(StageOptionsFromRequest(r, "cpu", 1).status(), "num_stages 1048576");
}

TEST(LoadBoundsTest, ModelPathOnlyFromTheModelDirectory) {
  WorkerLimits limits;
  limits.model_dir = ::testing::TempDir();
  StageOptions o;
  o.model_path = WorkerModelPath();
  ASSERT_TRUE(ApplyWorkerLimits(limits, &o).ok());
  EXPECT_GT(o.max_kv_bytes, 0);  // the host's memory when not configured
  EXPECT_EQ(o.max_step_tokens, limits.max_step_tokens);
  o.model_path = "/etc/passwd";
  absl::Status s = ApplyWorkerLimits(limits, &o);
  ExpectInvalid(s, "inside the worker's --model-dir");
  EXPECT_THAT(s.message(), Not(HasSubstr("magic")));
  limits.model_dir.clear();
  o.model_path = WorkerModelPath();
  EXPECT_EQ(ApplyWorkerLimits(limits, &o).code(), absl::StatusCode::kFailedPrecondition);
}

// The pool is checked from the model file's header, before the worker drops its current stage.
TEST(LoadBoundsTest, TheKvPoolIsCheckedBeforeLoading) {
  WorkerLimits limits;
  limits.model_dir = ::testing::TempDir();
  limits.max_kv_bytes = int64_t{1} << 30;
  StageOptions o;
  o.model_path = WorkerModelPath();
  o.layer_begin = 0;
  o.layer_end = 2;
  o.kv_capacity_blocks = 30'000'000;
  EXPECT_EQ(ApplyWorkerLimits(limits, &o).code(), absl::StatusCode::kResourceExhausted);
  o.kv_capacity_blocks = 64;
  EXPECT_TRUE(ApplyWorkerLimits(limits, &o).ok());
  EXPECT_EQ(o.max_kv_bytes, int64_t{1} << 30);
}

TEST(KvPoolBoundsTest, APoolBeyondTheMemoryBoundIsRefusedBeforeAllocation) {
  StageOptions o;
  o.model_path = WorkerModelPath();
  o.layer_begin = 0;
  o.layer_end = 2;
  o.kv_capacity_blocks = 30'000'000;  // the probe's attack: GBs of free lists
  o.max_kv_bytes = int64_t{1} << 30;
  absl::StatusOr<std::unique_ptr<StageExecutor>> stage = StageExecutor::Load(o, nullptr);
  EXPECT_EQ(stage.status().code(), absl::StatusCode::kResourceExhausted) << stage.status();
  EXPECT_THAT(stage.status().message(),
              AllOf(HasSubstr("1073741824 bytes"), HasSubstr("--max-kv-bytes")));
  // Explicit per-layer capacities whose sum overflows are refused too.
  o.kv_capacity_blocks = 0;
  o.layer_capacity_blocks = {std::numeric_limits<int64_t>::max(),
                             std::numeric_limits<int64_t>::max()};
  EXPECT_EQ(StageExecutor::Load(o, nullptr).status().code(), absl::StatusCode::kResourceExhausted);
  o.layer_capacity_blocks = {64, 64};
  EXPECT_TRUE(StageExecutor::Load(o, nullptr).ok());
}

PushBounds Bounds() {
  PushBounds b;
  b.hidden_size = 4;
  b.max_rows = 3;
  b.expected_from_stage = 0;
  return b;
}

xkv::v1::PushHiddenRequest Rows(int rows) {
  xkv::v1::PushHiddenRequest r;
  r.set_step_id(9);
  r.set_from_stage(0);
  r.set_hidden(std::string(rows * 4 * sizeof(float), '\0'));
  return r;
}

TEST(PushHiddenBoundsTest, RowsAreWholeBoundedAndFromThePreviousStage) {
  HiddenMailbox box;
  EXPECT_TRUE(DeliverPushedHidden(Rows(3), Bounds(), box).ok());
  EXPECT_EQ(box.pending(), 1u);
  ExpectInvalid(DeliverPushedHidden(Rows(4), Bounds(), box), "4 rows is outside [1, 3]");
  ExpectInvalid(DeliverPushedHidden(Rows(0), Bounds(), box), "not whole rows");
  xkv::v1::PushHiddenRequest r = Rows(1);
  r.mutable_hidden()->push_back('x');
  ExpectInvalid(DeliverPushedHidden(r, Bounds(), box), "not whole rows");
  r = Rows(2);
  r.set_hidden_size(2);  // 2 x 4 floats read as 4 rows of 2: not this model's rows
  ExpectInvalid(DeliverPushedHidden(r, Bounds(), box), "hidden_size 2");
  r = Rows(1);
  r.set_from_stage(3);
  ExpectInvalid(DeliverPushedHidden(r, Bounds(), box), "from_stage 3");
  EXPECT_EQ(box.pending(), 1u);  // nothing refused was delivered
}

TEST(PushHiddenBoundsTest, ForwardedErrorsAreValidCodesWithBoundedText) {
  HiddenMailbox box;
  xkv::v1::PushHiddenRequest r;
  r.set_step_id(5);
  r.set_error_code(12345);
  ExpectInvalid(DeliverPushedHidden(r, Bounds(), box), "error_code 12345");
  r.set_error_code(static_cast<int>(absl::StatusCode::kUnavailable));
  r.set_error_message(std::string(100000, 'e'));
  ASSERT_TRUE(DeliverPushedHidden(r, Bounds(), box).ok());
  absl::Status s = box.Take(5, absl::InfinitePast()).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_LE(s.message().size(), kMaxForwardedErrorBytes + 16);
}

}  // namespace
}  // namespace xkv
