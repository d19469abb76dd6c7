// The reconstruct profile through the service (architecture.md §3.5): a Coordinator over 1 and 2
// in-process CPU stages of the real model re-reads an xkv request's prompt in scores-only steps
// after its prefill, then solves and compacts. The test recomputes the same request the way
// `xkv eval` does (model/reconstruct_scorer.h on one CPU engine: the observed prefill, the
// re-reading, its scores unpooled and replacing the window's, PlanAllocation, compaction,
// greedy decoding) and checks that the service streams the same tokens with the same
// log-probabilities (the same kept slots give the same logits bit for bit) and holds the same
// tokens per layer. Bad input stays INVALID_ARGUMENT; a cancel ends the re-reading at the next
// step.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "allocator/kv_spec.h"
#include "coordinator/coordinator.h"
#include "embedded/in_process_stage_client.h"
#include "gtest/gtest.h"
#include "model/chat_template.h"
#include "model/gguf.h"
#include "model/kv_allocation.h"
#include "model/reconstruct_scorer.h"
#include "model/sampler.h"
#include "model/tokenizer.h"
#include "tests/integration/eval_reference.h"
#include "tests/integration/pipeline_harness.h"
#include "worker/stage_engine_factory.h"

namespace xkv {
namespace {

constexpr int kMaxTokens = 6;
constexpr int64_t kStepTokens = 256;        // --max-batched-tokens: the prompt re-reads in 2 steps
constexpr int64_t kBudgetTokens = 30 * 24;  // kept prefix tokens over the 30 layers

using testing_eval::LogprobSink;
using testing_pipeline::ModelPath;

CoordinatorOptions Options() { return testing_eval::ServiceOptions(ModelPath(), kStepTokens, 128); }

KvPolicyOverride Override(const std::string& policy, const std::string& profile) {
  return testing_eval::BudgetOverride(policy, profile, kBudgetTokens);
}

struct Expected {
  std::vector<int32_t> tokens;
  std::vector<float> logprobs;
  std::vector<int64_t> layer_tokens;                                 // per layer after decoding
  std::vector<std::vector<std::vector<int32_t>>> kept, window_kept;  // reconstruct, one_pass
};

class ReconstructProfileTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!std::filesystem::exists(ModelPath())) return;
    auto needle = testing_eval::LoadNeedlePrompt(ModelPath());
    ASSERT_TRUE(needle.ok()) << needle.status();
    prompt_ = new std::vector<int32_t>(needle->ids);
    repeat_ = new RepeatPrompt(needle->repeat);
    expected_ = new Expected(Reference(needle->repeat));
  }
  static void TearDownTestSuite() {
    delete prompt_;
    delete repeat_;
    delete expected_;
    prompt_ = nullptr;
    repeat_ = nullptr;
    expected_ = nullptr;
  }
  void SetUp() override {
    if (prompt_ == nullptr) GTEST_SKIP() << "no model at " << ModelPath() << " (set XKV_MODEL)";
  }

  // The eval harness's computation on one CPU engine (kGgml, as the stages run).
  static Expected Reference(const RepeatPrompt& repeat) {
    Expected x;
    StageOptions so;
    so.model_path = ModelPath();
    auto engine_or = LoadStageEngine(so);
    EXPECT_TRUE(engine_or.ok()) << engine_or.status();
    StageEngine& e = **engine_or;
    const CoordinatorOptions co = Options();
    auto spec = ApplyOverride(co.kv, Override("xkv", "reconstruct"));
    EXPECT_TRUE(spec.ok()) << spec.status();
    // The scoring of `xkv eval`'s xkv:profile=reconstruct (ScoringFor).
    const ImportanceOptions scoring = ScoringFor(*spec, {co.window, co.pool_kernel});
    const int64_t T = static_cast<int64_t>(prompt_->size());
    auto prefill = testing_eval::Prefill(e, 1, *prompt_, scoring);
    EXPECT_TRUE(prefill.ok()) << prefill.status();
    auto scores = testing_eval::RereadScores(e, 1, *prompt_, repeat, kStepTokens, scoring);
    EXPECT_TRUE(scores.ok()) << scores.status();
    auto plan = PlanAllocation(*scores, e.config(), *spec);
    EXPECT_TRUE(plan.ok()) << plan.status();
    auto window_plan = PlanAllocation(prefill->scores, e.config(), *spec);
    EXPECT_TRUE(window_plan.ok()) << window_plan.status();
    x.kept = plan->kept;
    x.window_kept = window_plan->kept;
    for (int l = 0; l < e.config().n_layers; ++l) {
      EXPECT_TRUE(e.CompactLayer(1, l, T, plan->kept[l]).ok());
    }
    auto run = testing_eval::DecodeGreedy(e, 1, T, prefill->logits, kMaxTokens);
    EXPECT_TRUE(run.ok()) << run.status();
    x.tokens = run->tokens;
    x.logprobs = run->logprobs;
    for (int l = 0; l < e.config().n_layers; ++l) x.layer_tokens.push_back(e.CacheLength(1, l));
    return x;
  }

  static std::unique_ptr<Coordinator> Start(int stages) {
    auto clients = MakeInProcessStages(stages, {"cpu"}, InProcessStageSettings{});
    EXPECT_TRUE(clients.ok()) << clients.status();
    auto c = Coordinator::Start(Options(), std::move(*clients));
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? std::move(*c) : nullptr;
  }

  static GenerateParams Request(const std::string& policy, const std::string& profile) {
    GenerateParams p;
    p.prompt_ids = *prompt_;
    p.max_tokens = kMaxTokens;
    p.ignore_eos = true;
    p.logprobs = 0;
    p.kv = Override(policy, profile);
    return p;
  }

  static std::vector<int32_t>* prompt_;
  static RepeatPrompt* repeat_;
  static Expected* expected_;
};

std::vector<int32_t>* ReconstructProfileTest::prompt_ = nullptr;
RepeatPrompt* ReconstructProfileTest::repeat_ = nullptr;
Expected* ReconstructProfileTest::expected_ = nullptr;

TEST_F(ReconstructProfileTest, ServiceMatchesTheEvalHarnessOnOneAndTwoStages) {
  // The re-reading changes what is kept, so a service that skipped it could not pass.
  EXPECT_NE(expected_->kept, expected_->window_kept);
  for (int stages : {1, 2}) {
    std::unique_ptr<Coordinator> c = Start(stages);
    ASSERT_NE(c, nullptr);
    auto sink = std::make_shared<LogprobSink>();
    auto id = c->Submit(Request("xkv", "reconstruct"), sink);
    ASSERT_TRUE(id.ok()) << id.status();
    ASSERT_TRUE(sink->Wait().ok()) << sink->Wait();
    EXPECT_EQ(sink->tokens_, expected_->tokens) << stages << " stages";
    ASSERT_EQ(sink->logprobs_.size(), expected_->logprobs.size());
    for (size_t t = 0; t < expected_->logprobs.size(); ++t) {
      EXPECT_NEAR(sink->logprobs_[t], expected_->logprobs[t], 1e-5) << stages << " stages, " << t;
    }
    ASSERT_EQ(sink->usage_.layers_size(), static_cast<int>(expected_->layer_tokens.size()));
    for (int l = 0; l < sink->usage_.layers_size(); ++l) {
      EXPECT_EQ(sink->usage_.layers(l).kept_tokens(), expected_->layer_tokens[l]) << "layer " << l;
    }
    EXPECT_EQ(sink->usage_.profile_mode(), "reconstruct");
    EXPECT_TRUE(sink->usage_.profiled());
    EXPECT_GT(sink->usage_.timings().profile_ms(), 0.0);
  }
}

TEST_F(ReconstructProfileTest, BadInputIsInvalidArgument) {
  std::unique_ptr<Coordinator> c = Start(1);
  ASSERT_NE(c, nullptr);
  for (const char* policy : {"streaming", "full"}) {
    GenerateParams p = Request(policy, "reconstruct");
    if (std::string(policy) == "full") p.kv.budget_tokens.reset();
    auto id = c->Submit(std::move(p), std::make_shared<LogprobSink>());
    EXPECT_EQ(id.status().code(), absl::StatusCode::kInvalidArgument) << policy;
    EXPECT_NE(std::string(id.status().message()).find("profile mode reconstruct"),
              std::string::npos)
        << id.status();
  }
  GenerateParams p = Request("xkv", "rebuild");
  auto id = c->Submit(std::move(p), std::make_shared<LogprobSink>());
  EXPECT_EQ(id.status().code(), absl::StatusCode::kInvalidArgument);
  // snapkv ranks by score: its budgets are known up front, the re-reading picks the tokens.
  auto sink = std::make_shared<LogprobSink>();
  ASSERT_TRUE(c->Submit(Request("snapkv", "reconstruct"), sink).ok());
  EXPECT_TRUE(sink->Wait().ok()) << sink->Wait();
  EXPECT_EQ(sink->tokens_.size(), static_cast<size_t>(kMaxTokens));
}

// CoordinatorOptions::reread_chunk (`--reconstruct-chunk`) sets the re-reading steps: a T-token
// prompt re-reads in ceil(T / chunk) consecutive spans of `chunk` tokens, a chunk that does not fit
// one step after the repeat instruction shrinks to what does (RereadChunkTokens), and a chunk
// outside [kMinRereadChunk, kMaxRereadChunk] stops the start.
TEST_F(ReconstructProfileTest, RereadStepsFollowTheConfiguredChunk) {
  const int64_t T = static_cast<int64_t>(prompt_->size());
  ReconstructOptions fitted;
  fitted.chunk_tokens = kMaxRereadChunk;
  const int64_t step_fit = RereadChunkTokens(*repeat_, fitted, kStepTokens);
  ASSERT_GT(step_fit, 96);
  ASSERT_LT(step_fit, T);
  for (const auto& [asked, want] :
       std::vector<std::pair<int64_t, int64_t>>{{64, 64}, {96, 96}, {kMaxRereadChunk, step_fit}}) {
    auto inner = MakeInProcessStages(1, {"cpu"}, InProcessStageSettings{});
    ASSERT_TRUE(inner.ok()) << inner.status();
    std::mutex mu;
    std::vector<std::pair<int64_t, int64_t>> spans;  // [chunk_begin, chunk_end) of each step
    std::vector<int> inputs;                         // each step's tokens
    auto log = std::make_shared<testing_pipeline::StepLog>();
    log->on_step = [&](const xkv::v1::StepRequest& step) {
      std::lock_guard<std::mutex> lock(mu);
      for (const xkv::v1::StepSequence& q : step.sequences()) {
        if (q.mode() != xkv::v1::SEQUENCE_MODE_REREAD) continue;
        spans.emplace_back(q.reread().chunk_begin(), q.reread().chunk_end());
        inputs.push_back(q.tokens_size());
      }
    };
    std::vector<std::unique_ptr<StageClient>> clients;
    clients.push_back(
        std::make_unique<testing_pipeline::LoggingStageClient>(0, std::move((*inner)[0]), log));
    CoordinatorOptions o = Options();
    o.reread_chunk = asked;
    auto c = Coordinator::Start(o, std::move(clients));
    ASSERT_TRUE(c.ok()) << c.status();
    auto sink = std::make_shared<LogprobSink>();
    ASSERT_TRUE((*c)->Submit(Request("xkv", "reconstruct"), sink).ok());
    ASSERT_TRUE(sink->Wait().ok()) << sink->Wait();
    std::lock_guard<std::mutex> lock(mu);
    ASSERT_EQ(static_cast<int64_t>(spans.size()), (T + want - 1) / want) << "chunk " << asked;
    for (size_t i = 0; i < spans.size(); ++i) {
      EXPECT_EQ(spans[i].first, static_cast<int64_t>(i) * want) << "chunk " << asked << ", " << i;
      EXPECT_EQ(spans[i].second, std::min(T, spans[i].first + want)) << "chunk " << asked;
      EXPECT_LE(inputs[i], kStepTokens) << "chunk " << asked << ", " << i;
    }
  }
  for (int64_t bad : {kMinRereadChunk - 1, kMaxRereadChunk + 1}) {
    auto clients = MakeInProcessStages(1, {"cpu"}, InProcessStageSettings{});
    ASSERT_TRUE(clients.ok()) << clients.status();
    CoordinatorOptions o = Options();
    o.reread_chunk = bad;
    auto c = Coordinator::Start(o, std::move(*clients));
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(
        std::string(c.status().message()).find(absl::StrCat(bad, " is out of range [64, 8192]")),
        std::string::npos)
        << c.status();
  }
}

// A cancel sent while the first re-reading step runs ends the request there: no later step
// re-reads it, and the stage's pool is idle again.
TEST_F(ReconstructProfileTest, CancelDuringTheReReadingEndsAtTheNextStep) {
  auto inner = MakeInProcessStages(1, {"cpu"}, InProcessStageSettings{});
  ASSERT_TRUE(inner.ok()) << inner.status();
  std::atomic<uint64_t> id{0};
  std::atomic<int> rereads{0};
  Coordinator* coordinator = nullptr;
  std::vector<std::unique_ptr<StageClient>> clients;
  auto log = std::make_shared<testing_pipeline::StepLog>();
  log->on_step = [&](const xkv::v1::StepRequest& step) {
    for (const xkv::v1::StepSequence& q : step.sequences()) {
      if (q.mode() == xkv::v1::SEQUENCE_MODE_REREAD && rereads++ == 0) {
        coordinator->Cancel(id.load());
      }
    }
  };
  clients.push_back(
      std::make_unique<testing_pipeline::LoggingStageClient>(0, std::move((*inner)[0]), log));
  StageClient* stage = clients[0].get();
  auto c = Coordinator::Start(Options(), std::move(clients));
  ASSERT_TRUE(c.ok()) << c.status();
  coordinator = c->get();
  auto idle = stage->Status();
  ASSERT_TRUE(idle.ok()) << idle.status();
  GenerateParams p = Request("xkv", "reconstruct");
  p.prompt_ids.insert(p.prompt_ids.end(), prompt_->begin(), prompt_->end());  // 3 or more chunks
  auto sink = std::make_shared<LogprobSink>();
  auto submitted = (*c)->Submit(std::move(p), sink);
  ASSERT_TRUE(submitted.ok()) << submitted.status();
  id = *submitted;  // the first re-reading step comes after the prefill: id is set by then
  EXPECT_EQ(sink->Wait().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(rereads.load(), 1) << "re-reading steps ran after the cancel";
  EXPECT_EQ(sink->tokens_.size(), 1u) << "the prefill's token streams before the re-reading";
  auto after = stage->Status();
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->usage().blocks_used(), idle->usage().blocks_used());
  EXPECT_EQ(after->sequences(), idle->sequences());
}

}  // namespace
}  // namespace xkv
