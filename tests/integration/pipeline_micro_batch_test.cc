// The overlapped pipeline in one process (architecture.md §6): a Coordinator over 1, 2 and 3 CPU
// stages of the real model with 1..S micro-batches in flight gives every request the same greedy
// tokens as one stage running one step at a time; more than one micro-batch really runs on
// different stages at once; a request cancelled while its micro-batch is in flight ends CANCELLED
// and every stage's pool is back at its idle count. Time comes from a FakeClock; completion is
// waited for on condition variables (no sleeps).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "base/status_macros.h"
#include "coordinator/clock.h"
#include "coordinator/coordinator.h"
#include "embedded/in_process_stage_client.h"
#include "gtest/gtest.h"

namespace xkv {
namespace {

std::string ModelPath() {
  const char* env = std::getenv("XKV_MODEL");
  return env != nullptr ? env : "models/SmolLM2-135M-Instruct.Q4_1.gguf";
}

// What the stages of one pipeline saw: which steps ran at the same time, and any step that named a
// sequence its stage had already released (a release that overtook a step in flight).
class StepLog {
 public:
  // Optional: called with every step a stage is about to run (from that stage's thread).
  std::function<void(const xkv::v1::StepRequest&)> on_step;

  void Released(size_t stage, const xkv::v1::ReleaseRequest& request) {
    std::lock_guard<std::mutex> lock(mu_);
    for (uint64_t id : request.seq_ids()) released_.insert({stage, id});
  }
  void Stepped(size_t stage, const xkv::v1::StepRequest& request) {
    std::lock_guard<std::mutex> lock(mu_);
    for (const xkv::v1::StepSequence& q : request.sequences()) {
      if (q.new_sequence()) {
        released_.erase({stage, q.seq_id()});  // a restarted request starts over
      } else if (released_.contains({stage, q.seq_id()})) {
        ++stepped_after_release_;
      }
    }
  }
  int stepped_after_release() const {
    std::lock_guard<std::mutex> lock(mu_);
    return stepped_after_release_;
  }
  void Begin(uint64_t step) {
    std::lock_guard<std::mutex> lock(mu_);
    ++running_[step];
    max_distinct_ = std::max(max_distinct_, running_.size());
  }
  void End(uint64_t step) {
    std::lock_guard<std::mutex> lock(mu_);
    if (--running_[step] == 0) running_.erase(step);
  }
  // The most distinct steps that were running on the stages at one moment.
  size_t max_distinct() const {
    std::lock_guard<std::mutex> lock(mu_);
    return max_distinct_;
  }

 private:
  mutable std::mutex mu_;
  std::map<uint64_t, int> running_;
  size_t max_distinct_ = 0;
  std::set<std::pair<size_t, uint64_t>> released_;  // (stage, sequence)
  int stepped_after_release_ = 0;
};

// Forwards every call to an in-process stage and logs its steps.
class LoggingStageClient final : public StageClient {
 public:
  LoggingStageClient(size_t stage, std::unique_ptr<StageClient> inner, std::shared_ptr<StepLog> log)
      : stage_(stage), inner_(std::move(inner)), log_(std::move(log)) {}
  std::string address() const override { return inner_->address(); }
  xkv::v1::LinkKind link_kind() const override { return inner_->link_kind(); }
  absl::StatusOr<xkv::v1::LoadStageResponse> LoadStage(
      const xkv::v1::LoadStageRequest& request) override {
    return inner_->LoadStage(request);
  }
  absl::StatusOr<xkv::v1::StepResponse> Step(const xkv::v1::StepRequest& request) override {
    if (log_->on_step) log_->on_step(request);
    log_->Stepped(stage_, request);
    log_->Begin(request.step_id());
    absl::StatusOr<xkv::v1::StepResponse> r = inner_->Step(request);
    log_->End(request.step_id());
    return r;
  }
  absl::StatusOr<xkv::v1::CompactResponse> Compact(
      const xkv::v1::CompactRequest& request) override {
    return inner_->Compact(request);
  }
  absl::StatusOr<xkv::v1::ReleaseResponse> Release(
      const xkv::v1::ReleaseRequest& request) override {
    log_->Released(stage_, request);
    return inner_->Release(request);
  }
  absl::StatusOr<xkv::v1::StatusResponse> Status() override { return inner_->Status(); }

 private:
  const size_t stage_;
  std::unique_ptr<StageClient> inner_;
  std::shared_ptr<StepLog> log_;
};

// Collects one request's stream; Wait blocks until OnDone or OnError.
class CollectingSink final : public GenerateSink {
 public:
  // Called (from the coordinator's loop thread) after the first token arrived.
  std::function<void()> on_first_token;

  void OnDelta(const std::string&, absl::Span<const int32_t> ids,
               absl::Span<const SampledLogprobs>) override {
    bool first = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      first = tokens_.empty() && !ids.empty();
      tokens_.insert(tokens_.end(), ids.begin(), ids.end());
    }
    if (first && on_first_token) on_first_token();
  }
  void OnDone(const xkv::v1::Usage&) override { End(absl::OkStatus()); }
  void OnError(const absl::Status& status) override { End(status); }

  // The tokens and the final status; a bounded wait (a hang fails the test, it does not block it).
  std::pair<std::vector<int32_t>, absl::Status> Wait() {
    std::unique_lock<std::mutex> lock(mu_);
    if (!done_.wait_for(lock, std::chrono::minutes(2), [&] { return finished_; })) {
      return {tokens_, absl::DeadlineExceededError("the request did not finish in 2 minutes")};
    }
    return {tokens_, status_};
  }

 private:
  void End(const absl::Status& status) {
    std::lock_guard<std::mutex> lock(mu_);
    status_ = status;
    finished_ = true;
    done_.notify_all();
  }
  std::mutex mu_;
  std::condition_variable done_;
  std::vector<int32_t> tokens_;
  absl::Status status_;
  bool finished_ = false;
};

struct Pipeline {
  std::unique_ptr<Coordinator> coordinator;
  std::vector<StageClient*> stages;  // owned by the coordinator
  std::shared_ptr<StepLog> log;
};

// S in-process CPU stages (one thread each) and M micro-batches; xkv per_request by default.
absl::StatusOr<Pipeline> StartPipeline(int num_stages, int micro_batches, const Clock* clock) {
  Pipeline p;
  p.log = std::make_shared<StepLog>();
  ASSIGN_OR_RETURN(std::vector<std::unique_ptr<StageClient>> inner,
                   MakeInProcessStages(num_stages, {"cpu"}, InProcessStageSettings{}));
  std::vector<std::unique_ptr<StageClient>> clients;
  for (auto& c : inner) {
    clients.push_back(std::make_unique<LoggingStageClient>(clients.size(), std::move(c), p.log));
    p.stages.push_back(clients.back().get());
  }
  CoordinatorOptions o;
  o.model_path = ModelPath();
  o.kv.policy = PolicyKind::kXkv;
  o.kv.target = {KvTarget::Kind::kRetention, 0.9};
  o.scheduler.max_running = 8;
  o.scheduler.step_token_budget = 256;
  o.scheduler.prefill_chunk = 256;
  o.scheduler.micro_batches = micro_batches;
  o.kv_capacity_blocks = 64;
  o.clock = clock;
  o.health_interval = absl::ZeroDuration();  // no monitor thread: only the test's calls
  ASSIGN_OR_RETURN(p.coordinator, Coordinator::Start(o, std::move(clients)));
  return p;
}

// Requests that cover every pass: a full cache, xkv with a scores-only profile pass
// (per_request), xkv scored inside the prefill then compacted (one_pass), and a longer prompt.
std::vector<GenerateParams> Requests() {
  const char* prompts[] = {
      "The capital of France is",
      "Write one sentence about the sea and the wind:",
      "List three colours of the rainbow, separated by commas:",
      "Once upon a time, in a small village near the mountains, there lived an old baker who",
      "2 + 2 =",
  };
  const char* policies[] = {"full", "", "xkv", "", "full"};
  const char* profiles[] = {"", "per_request", "one_pass", "one_pass", ""};
  std::vector<GenerateParams> out;
  for (int i = 0; i < 5; ++i) {
    GenerateParams p;
    p.prompt = prompts[i];
    p.max_tokens = 6 + i % 3;
    p.ignore_eos = true;  // every request runs its max_tokens steps
    p.kv.policy = policies[i];
    p.kv.profile_mode = profiles[i];
    out.push_back(std::move(p));
  }
  return out;
}

// Submits every request at once and returns each one's tokens.
std::vector<std::vector<int32_t>> Generate(Coordinator& c) {
  std::vector<std::shared_ptr<CollectingSink>> sinks;
  for (GenerateParams& p : Requests()) {
    sinks.push_back(std::make_shared<CollectingSink>());
    absl::StatusOr<uint64_t> id = c.Submit(std::move(p), sinks.back());
    EXPECT_TRUE(id.ok()) << id.status();
  }
  std::vector<std::vector<int32_t>> tokens;
  for (auto& sink : sinks) {
    auto [ids, status] = sink->Wait();
    EXPECT_TRUE(status.ok()) << status;
    tokens.push_back(std::move(ids));
  }
  return tokens;
}

// Every stage's block usage and live sequences.
std::vector<std::pair<int64_t, int32_t>> PoolState(const Pipeline& p) {
  std::vector<std::pair<int64_t, int32_t>> out;
  for (StageClient* s : p.stages) {
    absl::StatusOr<xkv::v1::StatusResponse> r = s->Status();
    EXPECT_TRUE(r.ok()) << r.status();
    out.emplace_back(r.ok() ? r->usage().blocks_used() : -1, r.ok() ? r->sequences() : -1);
  }
  return out;
}

class PipelineMicroBatchTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!std::filesystem::exists(ModelPath())) return;
    FakeClock clock;
    absl::StatusOr<Pipeline> one = StartPipeline(1, 1, &clock);
    ASSERT_TRUE(one.ok()) << one.status();
    reference_ = new std::vector<std::vector<int32_t>>(Generate(*one->coordinator));
  }
  static void TearDownTestSuite() {
    delete reference_;
    reference_ = nullptr;
  }
  void SetUp() override {
    if (!std::filesystem::exists(ModelPath())) GTEST_SKIP() << "no model at " << ModelPath();
    ASSERT_NE(reference_, nullptr);
  }
  static std::vector<std::vector<int32_t>>* reference_;
};
std::vector<std::vector<int32_t>>* PipelineMicroBatchTest::reference_ = nullptr;

TEST_F(PipelineMicroBatchTest, ReferenceProducedEveryToken) {
  const std::vector<GenerateParams> requests = Requests();
  ASSERT_EQ(reference_->size(), requests.size());
  for (size_t i = 0; i < requests.size(); ++i) {
    EXPECT_EQ(static_cast<int64_t>((*reference_)[i].size()), requests[i].max_tokens) << i;
  }
}

TEST_F(PipelineMicroBatchTest, EveryStageAndMicroBatchCountGivesOneStagesTokens) {
  for (int stages = 1; stages <= 3; ++stages) {
    for (int micro = 1; micro <= stages; ++micro) {
      SCOPED_TRACE(::testing::Message() << stages << " stages, " << micro << " micro-batches");
      FakeClock clock;
      absl::StatusOr<Pipeline> p = StartPipeline(stages, micro, &clock);
      ASSERT_TRUE(p.ok()) << p.status();
      const std::vector<std::pair<int64_t, int32_t>> idle = PoolState(*p);
      EXPECT_EQ(Generate(*p->coordinator), *reference_);
      EXPECT_EQ(PoolState(*p), idle);
      EXPECT_EQ(p->log->stepped_after_release(), 0);
      if (micro == 1) {
        EXPECT_EQ(p->log->max_distinct(), 1u) << "one micro-batch: one step at a time";
      } else {
        EXPECT_GE(p->log->max_distinct(), 2u) << "micro-batches never overlapped on the stages";
      }
    }
  }
}

TEST_F(PipelineMicroBatchTest, CancelInFlightLeavesEveryPoolIdle) {
  for (int stages = 2; stages <= 3; ++stages) {
    SCOPED_TRACE(::testing::Message() << stages << " stages");
    FakeClock clock;
    absl::StatusOr<Pipeline> p = StartPipeline(stages, stages, &clock);
    ASSERT_TRUE(p.ok()) << p.status();
    Coordinator& c = *p->coordinator;
    const std::vector<std::pair<int64_t, int32_t>> idle = PoolState(*p);
    std::vector<GenerateParams> requests = Requests();
    const size_t n = requests.size();
    std::mutex ids_mu;
    std::vector<uint64_t> ids(n, 0);  // guarded by ids_mu; 0 until submitted
    auto cancel = [&](std::vector<size_t> which) {
      std::lock_guard<std::mutex> lock(ids_mu);
      for (size_t i : which) {
        if (ids[i] != 0) c.Cancel(ids[i]);
      }
    };
    std::vector<std::shared_ptr<CollectingSink>> sinks;
    for (size_t i = 0; i < n; ++i) sinks.push_back(std::make_shared<CollectingSink>());
    // At request 0's first token the other micro-batches are on the stages, request 3 in one of
    // them: its release must not overtake its step on any stage. Requests 1 and 4 run to the end.
    sinks[0]->on_first_token = [&] { cancel({0, 3}); };
    for (size_t i = 0; i < n; ++i) {
      requests[i].max_tokens = 64;  // far from done when cancelled
      absl::StatusOr<uint64_t> id = c.Submit(requests[i], sinks[i]);
      ASSERT_TRUE(id.ok()) << id.status();
      std::lock_guard<std::mutex> lock(ids_mu);
      ids[i] = *id;
    }
    cancel({2});  // queued or in its first micro-batch
    for (size_t i = 0; i < sinks.size(); ++i) {
      auto [tokens, status] = sinks[i]->Wait();
      if (i == 1 || i == 4) {
        EXPECT_TRUE(status.ok()) << i << ": " << status;
        ASSERT_EQ(tokens.size(), 64u) << i;
        const std::vector<int32_t>& ref = (*reference_)[i];
        EXPECT_EQ(std::vector<int32_t>(tokens.begin(), tokens.begin() + ref.size()), ref) << i;
      } else {
        EXPECT_EQ(status.code(), absl::StatusCode::kCancelled) << i << ": " << status;
        EXPECT_LT(tokens.size(), 64u) << i;
      }
    }
    EXPECT_EQ(PoolState(*p), idle);
    EXPECT_EQ(p->log->stepped_after_release(), 0);
    // The pipeline still serves after the cancellations.
    EXPECT_EQ(Generate(c), *reference_);
    EXPECT_EQ(PoolState(*p), idle);
  }
}

// Cancelling a request while its profile runs takes effect at the next step: an xkv per_request
// prompt longer than one step (the step budget, --max-batched-tokens) is profiled in chunks, and a
// cancel sent while its first chunk runs ends it there; no later step carries it, and every pool
// is idle again.
TEST_F(PipelineMicroBatchTest, CancelDuringProfilingEndsAtTheNextStep) {
  FakeClock clock;
  absl::StatusOr<Pipeline> p = StartPipeline(1, 1, &clock);  // 256 tokens per step
  ASSERT_TRUE(p.ok()) << p.status();
  Coordinator& c = *p->coordinator;
  const std::vector<std::pair<int64_t, int32_t>> idle = PoolState(*p);
  GenerateParams request;
  for (int i = 0; i < 60; ++i)
    request.prompt += "The tide came in over the sand and went out again. ";
  request.max_tokens = 8;
  request.kv.policy = "xkv";
  request.kv.profile_mode = "per_request";
  std::atomic<uint64_t> id{0};
  std::atomic<int> steps{0};
  p->log->on_step = [&](const xkv::v1::StepRequest& step) {
    if (step.sequences_size() == 0 || steps++ != 0) return;
    while (id.load() == 0) std::this_thread::yield();  // Submit is about to return its id
    c.Cancel(id.load());
  };
  auto sink = std::make_shared<CollectingSink>();
  absl::StatusOr<uint64_t> submitted = c.Submit(request, sink);
  ASSERT_TRUE(submitted.ok()) << submitted.status();
  id = *submitted;
  auto [tokens, status] = sink->Wait();
  EXPECT_EQ(status.code(), absl::StatusCode::kCancelled) << status;
  EXPECT_TRUE(tokens.empty());
  EXPECT_EQ(steps.load(), 1) << "steps ran after the cancel";
  p->log->on_step = nullptr;
  EXPECT_EQ(PoolState(*p), idle);
  // The prompt really spans several steps (the cancel saved the rest of its profile).
  GenerateParams again = request;
  again.kv.profile_mode = "per_request";
  auto done = std::make_shared<CollectingSink>();
  const int before = steps.load();
  p->log->on_step = [&](const xkv::v1::StepRequest& step) {
    if (step.sequences_size() > 0) ++steps;
  };
  ASSERT_TRUE(c.Submit(again, done).ok());
  EXPECT_TRUE(done->Wait().second.ok());
  p->log->on_step = nullptr;
  EXPECT_GE(steps.load() - before, 3 + 8 - 1) << "3 or more prompt chunks, then the decodes";
}

}  // namespace
}  // namespace xkv
