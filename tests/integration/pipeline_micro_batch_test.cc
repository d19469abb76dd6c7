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
#include "tests/integration/pipeline_harness.h"

namespace xkv {
namespace {

using testing_pipeline::CollectingSink;
using testing_pipeline::ModelPath;
using testing_pipeline::Pipeline;
using testing_pipeline::PoolState;
using testing_pipeline::StartPipeline;

std::vector<GenerateParams> Requests() { return testing_pipeline::MixedRequests(); }

// Submits every request at once and returns each one's tokens.
std::vector<std::vector<int32_t>> Generate(Coordinator& c) {
  return testing_pipeline::GenerateAll(c, Requests());
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
  FakeClock clock;
  testing_pipeline::ExpectEveryStageAndMicroBatchCountGives(
      1, 3, *reference_,
      [&](int stages, int micro) { return StartPipeline(stages, micro, &clock); });
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

// Issue 13: another request's compaction does not stall the pipeline. An xkv one_pass request is
// scored by its final prefill chunk, then solved and compacted; its compaction is held on the
// last stage until the first stage, which compacted already, has run a step of a request that is
// decoding meanwhile (a step started after the compaction: the loop did not wait for it; else the
// hold ends after 20 s and the test fails). Both requests end with the tokens they get alone, and
// every pool is idle; with per-layer and with per-(layer, KV head) budgets.
TEST_F(PipelineMicroBatchTest, DecodesRunWhileAnotherRequestCompacts) {
  FakeClock clock;
  absl::StatusOr<Pipeline> p = StartPipeline(2, 2, &clock);
  ASSERT_TRUE(p.ok()) << p.status();
  Coordinator& c = *p->coordinator;
  const std::vector<std::pair<int64_t, int32_t>> idle = PoolState(*p);
  GenerateParams decoding;
  decoding.prompt = "Count slowly from one to twenty:";
  decoding.max_tokens = 40;
  decoding.ignore_eos = true;
  decoding.kv.policy = "full";
  // Per-layer budgets, then per-(layer, KV head) ones: both sizes are known when they are solved.
  for (const bool per_head : {false, true}) {
    SCOPED_TRACE(per_head ? "per head" : "per layer");
    GenerateParams compacted;
    for (int i = 0; i < 6; ++i) compacted.prompt += "The tide came in over the sand and went out. ";
    compacted.max_tokens = 6;
    compacted.ignore_eos = true;
    compacted.kv.policy = "xkv";
    compacted.kv.profile_mode = "one_pass";
    compacted.kv.budget_fraction = 0.25;
    compacted.kv.per_head = per_head;
    std::vector<std::vector<int32_t>> alone;
    for (const GenerateParams& r : {decoding, compacted}) {
      alone.push_back(testing_pipeline::GenerateAll(c, {r})[0]);
    }
    std::mutex mu;
    std::condition_variable cv;
    uint64_t decoding_id = 0;   // guarded by mu
    bool compacting = false;    // guarded by mu: the compaction was queued on the stages
    int decodes_meanwhile = 0;  // guarded by mu: first-stage steps of the decoding request since
    int compactions = 0;        // guarded by mu
    bool overlapped = false;    // guarded by mu: a decode ran while the last stage held it
    p->log->on_stage_step = [&](size_t stage, const xkv::v1::StepRequest& step) {
      std::lock_guard<std::mutex> lock(mu);
      if (stage != 0 || !compacting) return;
      for (const xkv::v1::StepSequence& q : step.sequences()) {
        if (q.seq_id() == decoding_id) ++decodes_meanwhile;
      }
      cv.notify_all();
    };
    p->log->on_compact = [&](size_t stage, const xkv::v1::CompactRequest&) {
      std::unique_lock<std::mutex> lock(mu);
      ++compactions;
      compacting = true;
      if (stage == 1) {
        overlapped =
            cv.wait_for(lock, std::chrono::seconds(20), [&] { return decodes_meanwhile > 0; });
      }
    };
    auto decoding_sink = std::make_shared<CollectingSink>();
    auto compacted_sink = std::make_shared<CollectingSink>();
    {
      std::lock_guard<std::mutex> lock(mu);  // its first step waits for the id
      absl::StatusOr<uint64_t> id = c.Submit(decoding, decoding_sink);
      ASSERT_TRUE(id.ok()) << id.status();
      decoding_id = *id;
    }
    ASSERT_TRUE(c.Submit(compacted, compacted_sink).ok());
    auto [decoded, decoding_status] = decoding_sink->Wait();
    auto [kept, compacted_status] = compacted_sink->Wait();
    p->log->on_stage_step = nullptr;
    p->log->on_compact = nullptr;
    EXPECT_TRUE(decoding_status.ok()) << decoding_status;
    EXPECT_TRUE(compacted_status.ok()) << compacted_status;
    EXPECT_EQ(decoded, alone[0]);
    EXPECT_EQ(kept, alone[1]);
    std::lock_guard<std::mutex> lock(mu);
    EXPECT_EQ(compactions, 2) << "one compaction call per stage";
    EXPECT_TRUE(overlapped) << "no decode step ran while the other request compacted";
    EXPECT_EQ(PoolState(*p), idle);
  }
}

// Async decode (`xkv serve --async-decode`, StageOptions::lookahead): a stage that is both first
// and last queues each pure-decode batch's next step before it answers, and adopts it when the
// coordinator's next step is that one, else undoes it. Every request gets the tokens of the option
// off, on 1 stage (where it runs) and 2 (where it stays off), with admissions arriving while
// others decode, max_tokens hits at different steps, an EOS, seeded random sampling with a
// presence penalty (the host Sampler's state across undone steps), xkv compactions and a cancel;
// every pool is back at its idle count and no step names a released sequence.
TEST_F(PipelineMicroBatchTest, AsyncDecodeGivesTheTokensOfTheOptionOff) {
  FakeClock clock;
  testing_pipeline::ExpectAsyncDecodeGivesTheTokensOfTheOptionOff(
      2, *reference_, [&](int stages, bool lookahead) {
        InProcessStageSettings settings;
        settings.lookahead = lookahead;
        return StartPipeline(stages, 1, &clock, {"cpu"}, settings);
      });
}

}  // namespace
}  // namespace xkv
