#include "coordinator/scheduler.h"

#include <algorithm>
#include <limits>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace xkv {
namespace {

SequenceSpec Spec(uint64_t id, int64_t prompt, int64_t max_new, bool profile = false) {
  SequenceSpec s;
  s.id = id;
  s.prompt_tokens = prompt;
  s.max_new_tokens = max_new;
  s.needs_profile = profile;
  return s;
}

// Stages of `layers` layers each with `capacity` blocks of `block_tokens` tokens.
KvManagerOptions Pools(std::vector<std::pair<int, int64_t>> stages, int block_tokens = 4) {
  KvManagerOptions kv;
  kv.block_tokens = block_tokens;
  int begin = 0;
  for (const auto& [layers, capacity] : stages) {
    kv.stages.push_back({begin, begin + layers, capacity});
    begin += layers;
  }
  return kv;
}

// Every layer holding `tokens` tokens (blocks of 4), as a stage reports it.
std::vector<KvLayerHeld> Held(int layers, int64_t tokens, int block_tokens = 4) {
  std::vector<KvLayerHeld> held;
  for (int l = 0; l < layers; ++l) {
    held.push_back({l, tokens, (tokens + block_tokens - 1) / block_tokens});
  }
  return held;
}

std::unique_ptr<Scheduler> Make(const SchedulerOptions& o, const Clock* clock) {
  absl::StatusOr<std::unique_ptr<Scheduler>> s = Scheduler::Create(o, clock);
  EXPECT_TRUE(s.ok()) << s.status();
  return std::move(s).value();
}

int64_t Count(const StepPlan& plan, WorkKind kind) {
  int64_t n = 0;
  for (const WorkItem& w : plan.items) n += w.kind == kind;
  return n;
}

TEST(SchedulerTest, RespectsTokenBudgetAndCompletesEveryRequest) {
  FakeClock clock;
  SchedulerOptions o;
  o.step_token_budget = 64;
  o.prefill_chunk = 32;
  o.min_final_chunk = 8;
  o.max_running = 6;
  auto s = Make(o, &clock);
  std::mt19937 rng(3);
  std::map<uint64_t, int64_t> prompt_of, max_new_of, prefilled, generated;
  for (uint64_t id = 1; id <= 20; ++id) {
    const int64_t T = 1 + rng() % 150, N = 1 + rng() % 12;
    ASSERT_TRUE(s->Submit(Spec(id, T, N)).ok());
    prompt_of[id] = T, max_new_of[id] = N;
  }
  for (int step = 0; step < 1000 && !s->idle(); ++step) {
    std::vector<DroppedRequest> dropped;
    StepPlan plan = s->NextStep(&dropped);
    EXPECT_TRUE(dropped.empty());
    EXPECT_LE(plan.tokens, o.step_token_budget);
    std::set<uint64_t> seen;
    for (const WorkItem& w : plan.items) {
      EXPECT_TRUE(seen.insert(w.id).second) << "a sequence appears twice in one step";
      if (w.kind == WorkKind::kPrefill) {
        EXPECT_EQ(w.begin, prefilled[w.id]);
        EXPECT_LE(w.tokens, o.prefill_chunk);
        prefilled[w.id] += w.tokens;
        EXPECT_EQ(w.completes_prompt, prefilled[w.id] == prompt_of[w.id]);
        if (w.completes_prompt) {
          EXPECT_GE(w.tokens, std::min<int64_t>(o.min_final_chunk, prompt_of[w.id]));
          generated[w.id] = 1;
        }
      } else if (w.kind == WorkKind::kDecode) {
        EXPECT_EQ(prefilled[w.id], prompt_of[w.id]) << "decode before the prompt is done";
        EXPECT_EQ(w.begin, prompt_of[w.id] + generated[w.id] - 1);
        ++generated[w.id];
      }
    }
    for (auto& [id, g] : generated) {
      if (g == max_new_of[id]) {
        s->Finish(id);
        g = -1000;  // finished
      }
    }
  }
  EXPECT_TRUE(s->idle());
  for (const auto& [id, T] : prompt_of) EXPECT_EQ(prefilled[id], T) << id;
}

TEST(SchedulerTest, DecodeIsInterleavedWithChunkedPrefill) {
  FakeClock clock;
  SchedulerOptions o;
  o.step_token_budget = 16;
  o.max_running = 4;
  o.prefill_chunk = 16;
  o.min_final_chunk = 4;
  auto s = Make(o, &clock);
  ASSERT_TRUE(s->Submit(Spec(1, 10, 100)).ok());
  StepPlan first = s->NextStep(nullptr);
  ASSERT_EQ(first.items.size(), 1u);
  EXPECT_TRUE(first.items[0].completes_prompt);
  ASSERT_TRUE(s->Submit(Spec(2, 100, 5)).ok());
  int mixed = 0;
  int64_t done = 0;
  for (int step = 0; step < 10; ++step) {
    StepPlan plan = s->NextStep(nullptr);
    EXPECT_LE(plan.tokens, 16);
    ASSERT_FALSE(plan.items.empty());
    EXPECT_EQ(plan.items[0].kind, WorkKind::kDecode) << "decodes come first";
    EXPECT_EQ(plan.items[0].id, 1u);
    if (Count(plan, WorkKind::kPrefill) > 0) {
      ++mixed;
      // The budget left after one decode, or the prompt's rest.
      EXPECT_EQ(plan.items[1].tokens, std::min<int64_t>(15, 100 - done));
      done += plan.items[1].tokens;
    }
  }
  EXPECT_EQ(mixed, 7);
  EXPECT_EQ(done, 100);
}

TEST(SchedulerTest, FinalChunkKeepsTheObservationWindow) {
  FakeClock clock;
  SchedulerOptions o;
  o.step_token_budget = 100;
  o.prefill_chunk = 10;
  o.min_final_chunk = 8;
  auto s = Make(o, &clock);
  ASSERT_TRUE(s->Submit(Spec(1, 13, 1)).ok());
  StepPlan a = s->NextStep(nullptr);
  StepPlan b = s->NextStep(nullptr);
  ASSERT_EQ(a.items.size(), 1u);
  ASSERT_EQ(b.items.size(), 1u);
  EXPECT_EQ(a.items[0].tokens, 5);  // not 10: that would leave a final chunk of 3 < 8
  EXPECT_EQ(b.items[0].begin, 5);
  EXPECT_EQ(b.items[0].tokens, 8);
  EXPECT_TRUE(b.items[0].completes_prompt);
}

TEST(SchedulerTest, AdmissionWaitsForFreeBlocks) {
  FakeClock clock;
  SchedulerOptions o;
  o.kv = Pools({{1, 10}, {1, 4}});  // two stages of one layer; blocks of 4 tokens
  o.kv_admission = KvAdmission::kGuaranteedNoEvict;
  auto s = Make(o, &clock);
  ASSERT_TRUE(s->Submit(Spec(1, 8, 4)).ok());  // 12 tokens: 3 blocks in each layer
  ASSERT_TRUE(s->Submit(Spec(2, 8, 4)).ok());
  ASSERT_TRUE(s->Submit(Spec(3, 1, 1)).ok());  // fits, but FIFO keeps it behind 2
  StepPlan p1 = s->NextStep(nullptr);
  EXPECT_EQ(p1.admitted, (std::vector<uint64_t>{1}));
  EXPECT_EQ(s->free_blocks(), (std::vector<int64_t>{7, 1}));
  EXPECT_EQ(s->queued(), 2);
  EXPECT_TRUE(s->NextStep(nullptr).admitted.empty());
  s->Finish(1);
  StepPlan p2 = s->NextStep(nullptr);  // admits both and prefills their whole prompts
  EXPECT_EQ(p2.admitted, (std::vector<uint64_t>{2, 3}));
  EXPECT_EQ(s->free_blocks(), (std::vector<int64_t>{6, 0}));
  EXPECT_TRUE(s->CheckHeld(2, Held(2, 8)).ok());
  // Compaction shrinks the reservation to kept + the 3 tokens it may still write (2 blocks).
  EXPECT_TRUE(s->Compacted(2, Held(2, 4)).ok());
  EXPECT_EQ(s->free_blocks(), (std::vector<int64_t>{7, 1}));
  // A "compaction" that grows is the stages disagreeing with the ledger: nothing changes.
  absl::Status grown = s->Compacted(2, Held(2, 9));
  EXPECT_EQ(grown.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(grown.message(), testing::HasSubstr("sequence 2 layer 0"));
  EXPECT_EQ(s->free_blocks(), (std::vector<int64_t>{7, 1}));
  EXPECT_TRUE(s->Cancel(3));
  EXPECT_EQ(s->free_blocks(), (std::vector<int64_t>{8, 2}));
  s->Finish(2);
  EXPECT_EQ(s->free_blocks(), (std::vector<int64_t>{10, 4}));
}

// Workers report what they hold after every step; a disagreement names the request, the layer and
// both counts (the coordinator ends that request alone).
TEST(SchedulerTest, DisagreementWithTheStagesIsAnError) {
  FakeClock clock;
  SchedulerOptions o;
  o.kv = Pools({{2, 20}});
  auto s = Make(o, &clock);
  ASSERT_TRUE(s->Submit(Spec(7, 10, 4)).ok());
  s->NextStep(nullptr);  // prefills 10 tokens
  EXPECT_TRUE(s->CheckHeld(7, Held(2, 10)).ok());
  std::vector<KvLayerHeld> held = Held(2, 10);
  held[1] = {1, 10, 2};  // 10 tokens need 3 blocks of 4
  absl::Status bad = s->CheckHeld(7, held);
  EXPECT_EQ(bad.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(bad.message(), testing::AllOf(testing::HasSubstr("sequence 7 layer 1"),
                                            testing::HasSubstr("10 tokens in 2 blocks"),
                                            testing::HasSubstr("10 tokens in 3 blocks")));
  EXPECT_EQ(s->CheckHeld(7, Held(2, 11)).code(), absl::StatusCode::kInternal);
  EXPECT_EQ(s->CheckHeld(7, Held(1, 10)).code(), absl::StatusCode::kInternal);  // a layer missing
  s->NextStep(nullptr);  // one decode token: the ledger follows
  EXPECT_TRUE(s->CheckHeld(7, Held(2, 11)).ok());
  EXPECT_TRUE(s->CheckHeld(99, Held(2, 3)).ok()) << "a request that is not running";
}

TEST(SchedulerTest, RequestThatCanNeverFitIsRefused) {
  FakeClock clock;
  SchedulerOptions o;
  o.kv = Pools({{2, 10}});  // 5 blocks of 4 tokens a layer when alone
  auto s = Make(o, &clock);
  EXPECT_TRUE(s->Submit(Spec(1, 12, 8)).ok());  // 20 tokens: 5 blocks a layer
  absl::Status st = s->Submit(Spec(2, 12, 9));
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);  // retrying cannot help
  EXPECT_NE(st.message().find("never fit"), absl::string_view::npos) << st;
  EXPECT_EQ(s->Submit(Spec(3, 0, 4)).code(), absl::StatusCode::kInvalidArgument);
  // A sum past int64 is refused too (it wrapped below the pool's size and was admitted).
  EXPECT_EQ(s->Submit(Spec(4, 12, std::numeric_limits<int64_t>::max())).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(SchedulerTest, FullQueueIsResourceExhausted) {
  FakeClock clock;
  SchedulerOptions o;
  o.max_queue = 2;
  auto s = Make(o, &clock);
  ASSERT_TRUE(s->Submit(Spec(1, 8, 4)).ok());
  ASSERT_TRUE(s->Submit(Spec(2, 8, 4)).ok());
  EXPECT_EQ(s->Submit(Spec(3, 8, 4)).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(s->Submit(Spec(1, 8, 4)).code(), absl::StatusCode::kAlreadyExists);
  s->NextStep(nullptr);  // admits both
  EXPECT_TRUE(s->Submit(Spec(3, 8, 4)).ok());
}

TEST(SchedulerTest, WaitingTooLongIsResourceExhaustedAndDeadlinesExpire) {
  FakeClock clock;
  SchedulerOptions o;
  o.kv = Pools({{1, 4}});
  o.kv_admission = KvAdmission::kGuaranteedNoEvict;
  o.max_queue_wait = absl::Seconds(10);
  auto s = Make(o, &clock);
  ASSERT_TRUE(s->Submit(Spec(1, 8, 8)).ok());  // all 4 blocks
  s->NextStep(nullptr);
  ASSERT_TRUE(s->Submit(Spec(2, 8, 8)).ok());
  SequenceSpec with_deadline = Spec(3, 1, 1);
  with_deadline.deadline = clock.Now() + absl::Seconds(5);
  ASSERT_TRUE(s->Submit(with_deadline).ok());
  std::vector<DroppedRequest> dropped;
  clock.Advance(absl::Seconds(6));
  s->NextStep(&dropped);
  ASSERT_EQ(dropped.size(), 1u);
  EXPECT_EQ(dropped[0].id, 3u);
  EXPECT_EQ(dropped[0].status.code(), absl::StatusCode::kDeadlineExceeded);
  dropped.clear();
  clock.Advance(absl::Seconds(5));
  s->NextStep(&dropped);
  ASSERT_EQ(dropped.size(), 1u);
  EXPECT_EQ(dropped[0].id, 2u);
  EXPECT_EQ(dropped[0].status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(dropped[0].status.message(), testing::HasSubstr("KV blocks did not fit"));
  EXPECT_THAT(dropped[0].status.message(), testing::HasSubstr("--max-queue-wait"));
  EXPECT_EQ(s->queued(), 0);
  EXPECT_EQ(s->running(), 1);
}

// Drain and shutdown end only requests that still wait: an admitted one keeps running.
TEST(SchedulerTest, CancelQueuedLeavesRunningRequestsAlone) {
  FakeClock clock;
  SchedulerOptions o;
  o.max_running = 1;
  o.min_final_chunk = 1;
  auto s = Make(o, &clock);
  ASSERT_TRUE(s->Submit(Spec(1, 8, 4)).ok());
  s->NextStep(nullptr);  // admits 1
  ASSERT_TRUE(s->Submit(Spec(2, 8, 4)).ok());
  EXPECT_FALSE(s->CancelQueued(1));
  EXPECT_EQ(s->running(), 1);
  EXPECT_TRUE(s->CancelQueued(2));
  EXPECT_FALSE(s->CancelQueued(2));
  EXPECT_EQ(s->queued(), 0);
}

// The queue-wait error names what actually held the request back.
TEST(SchedulerTest, QueueWaitErrorNamesBatchSlotsOrPausedAdmission) {
  FakeClock clock;
  SchedulerOptions o;
  o.max_running = 1;
  o.min_final_chunk = 1;
  o.kv = Pools({{1, 100}});
  o.max_queue_wait = absl::Seconds(10);
  auto s = Make(o, &clock);
  ASSERT_TRUE(s->Submit(Spec(1, 8, 4)).ok());
  s->NextStep(nullptr);
  ASSERT_TRUE(s->Submit(Spec(2, 8, 4)).ok());
  std::vector<DroppedRequest> dropped;
  clock.Advance(absl::Seconds(11));
  s->NextStep(&dropped);
  ASSERT_EQ(dropped.size(), 1u);
  EXPECT_THAT(dropped[0].status.message(), testing::HasSubstr("all 1 batch slots"));
  s->Finish(1);
  s->SetAdmitting(false);
  ASSERT_TRUE(s->Submit(Spec(3, 8, 4)).ok());
  dropped.clear();
  clock.Advance(absl::Seconds(11));
  s->NextStep(&dropped);
  ASSERT_EQ(dropped.size(), 1u);
  EXPECT_THAT(dropped[0].status.message(), testing::HasSubstr("admission is paused"));
}

TEST(SchedulerTest, ProfilePassIsWholeAndComesBeforePrefill) {
  FakeClock clock;
  SchedulerOptions o;
  o.step_token_budget = 32;
  o.max_running = 4;
  o.prefill_chunk = 32;
  auto s = Make(o, &clock);
  ASSERT_TRUE(s->Submit(Spec(1, 20, 2, /*profile=*/true)).ok());
  ASSERT_TRUE(s->Submit(Spec(2, 20, 2, /*profile=*/true)).ok());
  StepPlan a = s->NextStep(nullptr);
  ASSERT_EQ(a.items.size(), 1u);  // the second pass (20 > 12 left) waits
  EXPECT_EQ(a.items[0].kind, WorkKind::kProfile);
  EXPECT_EQ(a.items[0].tokens, 20);
  StepPlan b = s->NextStep(nullptr);
  ASSERT_EQ(b.items.size(), 1u);  // 20 prefill tokens of 1; still no room for 2's pass
  EXPECT_EQ(b.items[0].kind, WorkKind::kPrefill);
  EXPECT_EQ(b.items[0].id, 1u);
  StepPlan c = s->NextStep(nullptr);
  ASSERT_EQ(c.items.size(), 2u);
  EXPECT_EQ(c.items[0].kind, WorkKind::kDecode);
  EXPECT_EQ(c.items[1].kind, WorkKind::kProfile);
  EXPECT_EQ(c.items[1].id, 2u);
  // A pass longer than the whole budget runs alone.
  ASSERT_TRUE(s->Submit(Spec(3, 100, 2, /*profile=*/true)).ok());
  bool ran = false;
  for (int i = 0; i < 5 && !ran; ++i) {
    StepPlan p = s->NextStep(nullptr);
    for (const WorkItem& w : p.items) {
      if (w.id == 3) {
        ran = true;
        EXPECT_EQ(Count(p, WorkKind::kProfile) + Count(p, WorkKind::kPrefill), 1);
      }
    }
  }
  EXPECT_TRUE(ran);
}

// A profile pass that fits the whole budget but not what the running decodes leave runs in the
// next step without other prompt work: it does not wait for the decodes to end (it used to, so
// per_request requests of about the step's size ran one at a time).
TEST(SchedulerTest, ProfilePassDoesNotWaitForTheDecodesToEnd) {
  FakeClock clock;
  SchedulerOptions o;
  o.step_token_budget = 32;
  o.max_running = 4;
  o.prefill_chunk = 32;
  auto s = Make(o, &clock);
  ASSERT_TRUE(s->Submit(Spec(1, 4, 50)).ok());
  ASSERT_EQ(s->NextStep(nullptr).items.size(), 1u);  // 1's prefill; it decodes from now on
  ASSERT_TRUE(s->Submit(Spec(2, 32, 2, /*profile=*/true)).ok());  // 32 > the 31 left
  StepPlan p = s->NextStep(nullptr);
  ASSERT_EQ(p.items.size(), 2u);
  EXPECT_EQ(p.items[0].kind, WorkKind::kDecode);
  EXPECT_EQ(p.items[1].kind, WorkKind::kProfile);
  EXPECT_EQ(p.items[1].id, 2u);
  EXPECT_EQ(p.items[1].tokens, 32);
  p = s->NextStep(nullptr);  // its prefill: a chunk of what the decode leaves
  ASSERT_EQ(p.items.size(), 2u);
  EXPECT_EQ(p.items[1].kind, WorkKind::kPrefill);
  EXPECT_EQ(p.items[1].tokens, 32 - 8);  // the final chunk keeps >= min_final_chunk tokens
}

// The same for a reconstruct request's re-reading step (a scores-only pass as well).
TEST(SchedulerTest, RereadStepDoesNotWaitForTheDecodesToEnd) {
  FakeClock clock;
  SchedulerOptions o;
  o.step_token_budget = 32;
  o.max_running = 4;
  o.prefill_chunk = 32;
  auto s = Make(o, &clock);
  ASSERT_TRUE(s->Submit(Spec(1, 4, 50)).ok());
  ASSERT_EQ(s->NextStep(nullptr).items.size(), 1u);
  SequenceSpec reread = Spec(2, 8, 4);
  reread.reread_tokens = {32};  // 32 > the 31 the decode leaves
  ASSERT_TRUE(s->Submit(reread).ok());
  ASSERT_EQ(Count(s->NextStep(nullptr), WorkKind::kPrefill), 1);  // 2's whole prompt
  StepPlan p = s->NextStep(nullptr);
  ASSERT_EQ(p.items.size(), 2u);
  EXPECT_EQ(p.items[0].kind, WorkKind::kDecode);
  EXPECT_EQ(p.items[1].kind, WorkKind::kReread);
  EXPECT_EQ(p.items[1].id, 2u);
}

// Drives a scheduler as the coordinator and the stages do: every planned item is "run" (the
// stages' cache of each request grows by its tokens, a completed prompt or a decode samples a
// token), a preempted request is freed on the stages and later recomputed from its prompt and the
// tokens it produced, and after every step each running request's cache, as the stages would
// report it, must equal the scheduler's KV ledger (CheckHeld).
class PipelineSim {
 public:
  PipelineSim(Scheduler& s, int layers) : s_(s), layers_(layers) {}
  void Submit(uint64_t id, int64_t prompt, int64_t max_new) {
    ASSERT_TRUE(s_.Submit(Spec(id, prompt, max_new)).ok());
    reqs_[id] = {prompt, max_new};
  }
  // One step; false when the scheduler had nothing to do.
  bool Step() {
    StepPlan plan = s_.NextStep(nullptr);
    for (const Preemption& p : plan.preempted) {
      Req& r = reqs_.at(p.id);
      EXPECT_EQ(p.tokens, r.prompt + r.produced) << "request " << p.id;
      r.cache = 0;  // released on every stage
      r.input = p.tokens;
      preempted_.push_back(p.id);
    }
    std::set<uint64_t> ran;
    for (const WorkItem& w : plan.items) {
      Req& r = reqs_.at(w.id);
      EXPECT_FALSE(r.finished) << w.id;
      EXPECT_EQ(w.begin, r.cache) << "request " << w.id << ": the stages hold " << r.cache;
      if (w.kind == WorkKind::kProfile) continue;
      r.cache += w.tokens;
      if (w.kind == WorkKind::kDecode || w.completes_prompt) ++r.produced;
      if (w.completes_prompt) {
        EXPECT_EQ(r.cache, r.input);
      }
      ran.insert(w.id);
    }
    for (uint64_t id : ran) {
      Req& r = reqs_.at(id);
      EXPECT_TRUE(s_.CheckHeld(id, Held(layers_, r.cache)).ok())
          << s_.CheckHeld(id, Held(layers_, r.cache));
      if (r.produced == r.max_new) {
        s_.Finish(id);
        r.finished = true;
      }
    }
    return !plan.empty() || !plan.preempted.empty();
  }
  void RunToEnd(int max_steps) {
    for (int i = 0; i < max_steps && !s_.idle(); ++i) Step();
    EXPECT_TRUE(s_.idle());
    for (const auto& [id, r] : reqs_) {
      EXPECT_TRUE(r.finished) << id;
      EXPECT_EQ(r.produced, r.max_new) << id;
    }
  }
  const std::vector<uint64_t>& preempted() const { return preempted_; }

 private:
  struct Req {
    int64_t prompt = 0, max_new = 0;
    int64_t input = 0;     // tokens of the current run's prompt (prompt + produced if preempted)
    int64_t cache = 0;     // tokens the stages hold
    int64_t produced = 0;  // tokens streamed to the client
    bool finished = false;
    Req() = default;
    Req(int64_t p, int64_t m) : prompt(p), max_new(m), input(p) {}
  };
  Scheduler& s_;
  int layers_;
  std::map<uint64_t, Req> reqs_;
  std::vector<uint64_t> preempted_;
};

// max_utilization: both requests are admitted on their prompts' blocks; when their decodes outgrow
// the pool, the most recently admitted one is preempted, waits at the head of the queue, is
// recomputed (its prompt, then the tokens it produced) and completes all its tokens.
TEST(SchedulerTest, DecodeGrowthPreemptsTheMostRecentlyAdmittedAndItCompletesLater) {
  FakeClock clock;
  SchedulerOptions o;
  o.kv = Pools({{2, 12}});  // each request alone needs 4 blocks a layer at most: 8 of 12
  auto s = Make(o, &clock);
  PipelineSim sim(*s, 2);
  sim.Submit(1, 8, 8);
  sim.Submit(2, 8, 8);
  sim.RunToEnd(100);
  ASSERT_FALSE(sim.preempted().empty());
  EXPECT_EQ(sim.preempted()[0], 2u);
  EXPECT_EQ(s->preemptions(), static_cast<int64_t>(sim.preempted().size()));
  EXPECT_EQ(s->free_blocks(), (std::vector<int64_t>{12}));
}

// A step may free a preempted request and run nothing (a finished request still holds the blocks
// until the coordinator ends it): that plan is not empty, so the stages are told to free it.
TEST(SchedulerTest, APlanOfOnlyAPreemptionIsNotEmpty) {
  FakeClock clock;
  SchedulerOptions o;
  o.kv = Pools({{1, 4}});
  auto s = Make(o, &clock);
  ASSERT_TRUE(s->Submit(Spec(1, 4, 2)).ok());
  ASSERT_TRUE(s->Submit(Spec(2, 4, 8)).ok());  // up to 12 tokens: 3 blocks
  s->NextStep(nullptr);                        // both prompts (a block each)
  s->NextStep(nullptr);  // both decode a 5th token (a block each); 1 is done, not yet finished
  StepPlan plan;
  for (int i = 0; i < 4 && plan.preempted.empty(); ++i) plan = s->NextStep(nullptr);
  ASSERT_EQ(plan.preempted.size(), 1u);
  EXPECT_EQ(plan.preempted[0].id, 2u);
  EXPECT_EQ(plan.preempted[0].tokens, 4 + 5);  // its prompt and the 5 tokens it produced
  EXPECT_TRUE(plan.items.empty());
  EXPECT_FALSE(plan.empty());
  s->Finish(1);
  StepPlan next = s->NextStep(nullptr);
  EXPECT_EQ(next.admitted, (std::vector<uint64_t>{2}));
  ASSERT_EQ(next.items.size(), 1u);
  EXPECT_EQ(next.items[0].tokens, 4) << "its own prompt ends a chunk";
  EXPECT_FALSE(next.items[0].completes_prompt);
}

// guaranteed_no_evict reserves the worst case: the second request waits instead, nothing is
// preempted.
TEST(SchedulerTest, GuaranteedNoEvictNeverPreempts) {
  FakeClock clock;
  SchedulerOptions o;
  o.kv = Pools({{2, 12}});
  o.kv_admission = KvAdmission::kGuaranteedNoEvict;
  auto s = Make(o, &clock);
  PipelineSim sim(*s, 2);
  sim.Submit(1, 8, 8);
  sim.Submit(2, 8, 8);
  sim.Step();  // each reserves 4 blocks a layer (16 tokens): only the first fits
  EXPECT_EQ(s->running(), 1);
  EXPECT_EQ(s->queued(), 1);
  sim.RunToEnd(100);
  EXPECT_TRUE(sim.preempted().empty());
  EXPECT_EQ(s->preemptions(), 0);
  EXPECT_EQ(s->free_blocks(), (std::vector<int64_t>{12}));
}

// Random requests on two stages under both policies: every request completes all its tokens, the
// ledger agrees with the simulated stages after every step, and the pools end idle.
TEST(SchedulerTest, RandomLoadCompletesWithTheLedgerInStep) {
  for (KvAdmission policy : {KvAdmission::kMaxUtilization, KvAdmission::kGuaranteedNoEvict}) {
    FakeClock clock;
    SchedulerOptions o;
    o.kv = Pools({{2, 30}, {3, 45}});  // 15 blocks a layer: the largest request (54 tokens) fits
    o.kv_admission = policy;
    o.max_running = 5;
    o.step_token_budget = 40;
    o.prefill_chunk = 16;
    o.min_final_chunk = 4;
    auto s = Make(o, &clock);
    PipelineSim sim(*s, 5);
    std::mt19937 rng(7);
    for (uint64_t id = 1; id <= 30; ++id) sim.Submit(id, 1 + rng() % 30, 1 + rng() % 24);
    sim.RunToEnd(3000);
    EXPECT_EQ(s->free_blocks(), (std::vector<int64_t>{30, 45}));
    if (policy == KvAdmission::kMaxUtilization) {
      EXPECT_GT(s->preemptions(), 0) << "the load was meant to outgrow the pools";
    } else {
      EXPECT_EQ(s->preemptions(), 0);
    }
  }
}

TEST(SchedulerTest, RejectsBadOptions) {
  FakeClock clock;
  SchedulerOptions o;
  o.prefill_chunk = 4;
  o.min_final_chunk = 8;
  EXPECT_EQ(Scheduler::Create(o, &clock).status().code(), absl::StatusCode::kInvalidArgument);
  SchedulerOptions starving;
  starving.max_running = 30;
  starving.min_final_chunk = 8;
  starving.step_token_budget = 37;  // 30 decodes would leave 7 < 8 for prompt work
  EXPECT_EQ(Scheduler::Create(starving, &clock).status().code(),
            absl::StatusCode::kInvalidArgument);
  starving.step_token_budget = 38;
  EXPECT_TRUE(Scheduler::Create(starving, &clock).ok());
  EXPECT_EQ(Scheduler::Create(SchedulerOptions{}, nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace xkv

namespace xkv {
namespace {

TEST(SchedulerTest, RereadStepsFollowThePrefillAndPrecedeTheSecondToken) {
  FakeClock clock;
  SchedulerOptions o;
  o.step_token_budget = 32;
  o.max_running = 4;
  o.prefill_chunk = 32;
  o.kv = Pools({{2, 64}});
  auto s = Make(o, &clock);
  SequenceSpec spec = Spec(1, 20, 3);
  spec.reread_tokens = {30, 12};
  ASSERT_TRUE(s->Submit(spec).ok());
  StepPlan a = s->NextStep(nullptr);
  ASSERT_EQ(a.items.size(), 1u);
  EXPECT_EQ(a.items[0].kind, WorkKind::kPrefill);
  EXPECT_TRUE(a.items[0].completes_prompt);
  const std::vector<int64_t> free_after_prefill = s->free_blocks();
  StepPlan b = s->NextStep(nullptr);  // no decode yet: the re-reading comes first
  ASSERT_EQ(b.items.size(), 1u);
  EXPECT_EQ(b.items[0].kind, WorkKind::kReread);
  EXPECT_EQ(b.items[0].begin, 0);
  EXPECT_EQ(b.items[0].tokens, 30);
  StepPlan c = s->NextStep(nullptr);
  ASSERT_EQ(c.items.size(), 1u);
  EXPECT_EQ(c.items[0].kind, WorkKind::kReread);
  EXPECT_EQ(c.items[0].begin, 1);
  EXPECT_EQ(s->free_blocks(), free_after_prefill) << "re-reading steps take no KV blocks";
  StepPlan d = s->NextStep(nullptr);
  ASSERT_EQ(d.items.size(), 1u);
  EXPECT_EQ(d.items[0].kind, WorkKind::kDecode);
  EXPECT_EQ(d.items[0].begin, 20);  // the second token's input: position T
  // A re-reading step longer than the whole budget runs as the step's only prompt work.
  SequenceSpec big = Spec(2, 20, 2);
  big.reread_tokens = {40};
  ASSERT_TRUE(s->Submit(big).ok());
  bool ran = false;
  for (int i = 0; i < 6 && !ran; ++i) {
    StepPlan p = s->NextStep(nullptr);
    for (const WorkItem& w : p.items) ran = ran || (w.id == 2 && w.kind == WorkKind::kReread);
  }
  EXPECT_TRUE(ran);
}

}  // namespace
}  // namespace xkv
