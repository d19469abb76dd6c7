// The in-process pipeline harness shared by tests/integration/ (CPU stages) and tests/gpu/
// (CUDA stages): a Coordinator over S in-process stages whose calls are logged (which steps ran at
// the same time, a step that named a released sequence), a sink that collects one request's
// stream with a bounded wait, and every stage's pool state. Header-only; test code.
#ifndef XKV_TESTS_INTEGRATION_PIPELINE_HARNESS_H_
#define XKV_TESTS_INTEGRATION_PIPELINE_HARNESS_H_

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "base/status_macros.h"
#include "coordinator/clock.h"
#include "coordinator/coordinator.h"
#include "embedded/in_process_stage_client.h"
#include "gtest/gtest.h"

namespace xkv {
namespace testing_pipeline {

inline std::string ModelPath() {
  const char* env = std::getenv("XKV_MODEL");
  return env != nullptr ? env : "models/SmolLM2-135M-Instruct.Q4_1.gguf";
}

// What the stages of one pipeline saw: which steps ran at the same time, and any step that named a
// sequence its stage had already released (a release that overtook a step in flight).
class StepLog {
 public:
  // Optional: called with every step a stage is about to run (from that stage's thread).
  std::function<void(const xkv::v1::StepRequest&)> on_step;
  // Optional: the same with the stage's index, and for every compaction a stage is about to run.
  std::function<void(size_t, const xkv::v1::StepRequest&)> on_stage_step;
  std::function<void(size_t, const xkv::v1::CompactRequest&)> on_compact;

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
    if (log_->on_stage_step) log_->on_stage_step(stage_, request);
    log_->Stepped(stage_, request);
    log_->Begin(request.step_id());
    absl::StatusOr<xkv::v1::StepResponse> r = inner_->Step(request);
    log_->End(request.step_id());
    return r;
  }
  absl::StatusOr<xkv::v1::CompactResponse> Compact(
      const xkv::v1::CompactRequest& request) override {
    if (log_->on_compact) log_->on_compact(stage_, request);
    return inner_->Compact(request);
  }
  absl::StatusOr<xkv::v1::ReleaseResponse> Release(
      const xkv::v1::ReleaseRequest& request) override {
    log_->Released(stage_, request);
    return inner_->Release(request);
  }
  absl::StatusOr<xkv::v1::StatusResponse> Status() override { return inner_->Status(); }
  StageClient* inner() const { return inner_.get(); }

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
  // Called (from the loop thread) after every delta with the tokens received so far.
  std::function<void(size_t)> on_tokens;

  void OnDelta(const std::string&, absl::Span<const int32_t> ids,
               absl::Span<const SampledLogprobs>) override {
    bool first = false;
    size_t count = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      first = tokens_.empty() && !ids.empty();
      tokens_.insert(tokens_.end(), ids.begin(), ids.end());
      count = tokens_.size();
    }
    if (first && on_first_token) on_first_token();
    if (on_tokens) on_tokens(count);
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

// S in-process stages on `devices` (one thread each; "cpu" or "cuda:N", see MakeInProcessStages)
// and M micro-batches; xkv with a 0.9 retention target by default.
inline absl::StatusOr<Pipeline> StartPipeline(int num_stages, int micro_batches, const Clock* clock,
                                              const std::vector<std::string>& devices = {"cpu"},
                                              const InProcessStageSettings& settings = {}) {
  Pipeline p;
  p.log = std::make_shared<StepLog>();
  ASSIGN_OR_RETURN(std::vector<std::unique_ptr<StageClient>> inner,
                   MakeInProcessStages(num_stages, devices, settings));
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
inline std::vector<GenerateParams> MixedRequests() {
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

// Async decode's scenario (StageOptions::lookahead; pipeline_micro_batch_test.cc, the GPU's
// pipeline_gpu_test.cc): each request's tokens and final status.
struct AsyncDecodeOutcome {
  std::vector<std::vector<int32_t>> tokens;
  std::vector<absl::Status> status;
};

inline std::vector<GenerateParams> AsyncDecodeRequests() {
  std::vector<GenerateParams> r = MixedRequests();  // ignore_eos, 6..8 tokens each
  r[0].max_tokens = 40;
  r[2].max_tokens = 24;
  r[2].temperature = 0.9;
  r[2].seed = 7;
  r[2].presence_penalty = 0.5;
  r[3].max_tokens = 200;  // cancelled long before
  GenerateParams eos;     // ends by EOS: a one-word chat answer
  eos.chat = true;
  eos.messages = {{"user", "What is the capital of France? Answer with one word."}};
  eos.max_tokens = 48;
  r.push_back(std::move(eos));
  return r;
}

// Request 0 alone; at its first token the others (admitted while it decodes), at its 12th request
// 3 is cancelled (while it decodes). Every call after the first comes from the coordinator's loop
// thread, so the steps (and their batches) are the same in every run.
inline AsyncDecodeOutcome RunAsyncDecodeScenario(Coordinator& c) {
  std::vector<GenerateParams> requests = AsyncDecodeRequests();
  const size_t n = requests.size();
  std::vector<std::shared_ptr<CollectingSink>> sinks;
  for (size_t i = 0; i < n; ++i) sinks.push_back(std::make_shared<CollectingSink>());
  std::vector<uint64_t> ids(n, 0);           // written before the loop thread reads them
  bool admitted = false, cancelled = false;  // loop thread only
  auto submit = [&](size_t i) {
    absl::StatusOr<uint64_t> id = c.Submit(requests[i], sinks[i]);
    EXPECT_TRUE(id.ok()) << i << ": " << id.status();
    ids[i] = id.ok() ? *id : 0;
  };
  sinks[0]->on_tokens = [&](size_t count) {  // a delta may hold several tokens
    if (!admitted) {
      admitted = true;
      for (size_t i = 1; i < n; ++i) submit(i);
    } else if (!cancelled && count >= 12) {
      cancelled = true;
      c.Cancel(ids[3]);
    }
  };
  submit(0);
  AsyncDecodeOutcome out;
  for (auto& sink : sinks) {
    auto [tokens, status] = sink->Wait();
    out.tokens.push_back(std::move(tokens));
    out.status.push_back(status);
  }
  return out;
}

// Submits every request at once and returns each one's tokens (each must end OK).
inline std::vector<std::vector<int32_t>> GenerateAll(Coordinator& c,
                                                     std::vector<GenerateParams> requests) {
  std::vector<std::shared_ptr<CollectingSink>> sinks;
  for (GenerateParams& p : requests) {
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
inline std::vector<std::pair<int64_t, int32_t>> PoolState(const Pipeline& p) {
  std::vector<std::pair<int64_t, int32_t>> out;
  for (StageClient* s : p.stages) {
    absl::StatusOr<xkv::v1::StatusResponse> r = s->Status();
    EXPECT_TRUE(r.ok()) << r.status();
    out.emplace_back(r.ok() ? r->usage().blocks_used() : -1, r.ok() ? r->sequences() : -1);
  }
  return out;
}

// The async-decode counts (StageOptions::lookahead) summed over the pipeline's stages.
inline LookaheadCounts Lookaheads(const Pipeline& p) {
  LookaheadCounts sum;
  for (StageClient* s : p.stages) {
    auto* stage = dynamic_cast<InProcessStageClient*>(static_cast<LoggingStageClient*>(s)->inner());
    absl::StatusOr<LookaheadCounts> c =
        stage != nullptr ? stage->lookahead_counts() : absl::NotFoundError("not in-process");
    EXPECT_TRUE(c.ok()) << c.status();
    if (!c.ok()) continue;
    sum.queued += c->queued;
    sum.adopted += c->adopted;
    sum.discarded += c->discarded;
  }
  return sum;
}

// For every S in [min_stages, max_stages] and M in [1, S]: a pipeline of S stages with M
// micro-batches (start(S, M)) gives MixedRequests() the `reference` tokens, leaves every pool at
// its idle count, never steps a released sequence, and overlaps its micro-batches when M > 1.
inline void ExpectEveryStageAndMicroBatchCountGives(
    int min_stages, int max_stages, const std::vector<std::vector<int32_t>>& reference,
    const std::function<absl::StatusOr<Pipeline>(int, int)>& start) {
  for (int stages = min_stages; stages <= max_stages; ++stages) {
    for (int micro = 1; micro <= stages; ++micro) {
      SCOPED_TRACE(::testing::Message() << stages << " stages, " << micro << " micro-batches");
      absl::StatusOr<Pipeline> p = start(stages, micro);
      ASSERT_TRUE(p.ok()) << p.status();
      const std::vector<std::pair<int64_t, int32_t>> idle = PoolState(*p);
      EXPECT_EQ(GenerateAll(*p->coordinator, MixedRequests()), reference);
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

// Async decode (StageOptions::lookahead): for S in [1, max_stages], RunAsyncDecodeScenario on S
// stages started with the option on (start(S, true)) gives every request the tokens of the option
// off (start(S, false)) (the cancelled one too: it ends at the same step), the chat request
// ends by EOS, every pool is back at its idle count, no step names a released sequence, and
// MixedRequests() then give `mixed_reference`. One stage queued steps ahead, adopted most and undid
// some; more stages queue none.
inline void ExpectAsyncDecodeGivesTheTokensOfTheOptionOff(
    int max_stages, const std::vector<std::vector<int32_t>>& mixed_reference,
    const std::function<absl::StatusOr<Pipeline>(int, bool)>& start) {
  for (int stages = 1; stages <= max_stages; ++stages) {
    SCOPED_TRACE(::testing::Message() << stages << " stages");
    absl::StatusOr<Pipeline> plain = start(stages, false);
    ASSERT_TRUE(plain.ok()) << plain.status();
    const AsyncDecodeOutcome want = RunAsyncDecodeScenario(*plain->coordinator);
    EXPECT_EQ(Lookaheads(*plain).queued, 0);
    absl::StatusOr<Pipeline> p = start(stages, true);
    ASSERT_TRUE(p.ok()) << p.status();
    const std::vector<std::pair<int64_t, int32_t>> idle = PoolState(*p);
    const AsyncDecodeOutcome got = RunAsyncDecodeScenario(*p->coordinator);
    const std::vector<GenerateParams> requests = AsyncDecodeRequests();
    for (size_t i = 0; i < requests.size(); ++i) {
      SCOPED_TRACE(::testing::Message() << "request " << i);
      EXPECT_EQ(got.tokens[i], want.tokens[i]);
      if (i == 3) {  // cancelled at the same step in both runs
        EXPECT_EQ(want.status[i].code(), absl::StatusCode::kCancelled) << want.status[i];
        EXPECT_EQ(got.status[i].code(), absl::StatusCode::kCancelled) << got.status[i];
        EXPECT_GT(want.tokens[i].size(), 1u) << "it was decoding when cancelled";
        continue;
      }
      EXPECT_TRUE(want.status[i].ok()) << want.status[i];
      EXPECT_TRUE(got.status[i].ok()) << got.status[i];
      if (requests[i].ignore_eos) {
        EXPECT_EQ(static_cast<int64_t>(want.tokens[i].size()), requests[i].max_tokens);
      }
    }
    EXPECT_LT(static_cast<int64_t>(want.tokens[5].size()), requests[5].max_tokens)
        << "the chat request was to end by EOS";
    EXPECT_EQ(PoolState(*p), idle);
    EXPECT_EQ(p->log->stepped_after_release(), 0);
    EXPECT_EQ(GenerateAll(*p->coordinator, MixedRequests()), mixed_reference);
    EXPECT_EQ(PoolState(*p), idle);
    const LookaheadCounts counts = Lookaheads(*p);
    EXPECT_EQ(counts.queued, counts.adopted + counts.discarded);
    if (stages == 1) {
      EXPECT_GT(counts.adopted, 10) << "decode steps were answered from the queued ones";
      EXPECT_GT(counts.discarded, 2) << "admissions, finishes and the cancel undid queued steps";
    } else {
      EXPECT_EQ(counts.queued, 0) << "a stage that is not both first and last queues nothing";
    }
  }
}

}  // namespace testing_pipeline
}  // namespace xkv

#endif  // XKV_TESTS_INTEGRATION_PIPELINE_HARNESS_H_
