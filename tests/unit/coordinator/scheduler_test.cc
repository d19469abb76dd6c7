#include "coordinator/scheduler.h"

#include <algorithm>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace xkv {
namespace {

SequenceSpec Spec(uint64_t id, int64_t prompt, int64_t max_new, std::vector<int64_t> blocks = {},
                  bool profile = false) {
  SequenceSpec s;
  s.id = id;
  s.prompt_tokens = prompt;
  s.max_new_tokens = max_new;
  s.blocks = std::move(blocks);
  s.needs_profile = profile;
  return s;
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
  o.pool_blocks = {10, 4};
  auto s = Make(o, &clock);
  ASSERT_TRUE(s->Submit(Spec(1, 8, 4, {6, 2})).ok());
  ASSERT_TRUE(s->Submit(Spec(2, 8, 4, {6, 1})).ok());
  ASSERT_TRUE(s->Submit(Spec(3, 8, 4, {1, 1})).ok());  // fits, but FIFO keeps it behind 2
  StepPlan p1 = s->NextStep(nullptr);
  EXPECT_EQ(p1.admitted, (std::vector<uint64_t>{1}));
  EXPECT_EQ(s->free_blocks(), (std::vector<int64_t>{4, 2}));
  EXPECT_EQ(s->queued(), 2);
  EXPECT_TRUE(s->NextStep(nullptr).admitted.empty());
  s->Finish(1);
  StepPlan p2 = s->NextStep(nullptr);
  EXPECT_EQ(p2.admitted, (std::vector<uint64_t>{2, 3}));
  EXPECT_EQ(s->free_blocks(), (std::vector<int64_t>{3, 2}));
  // Solved budgets shrink the reservation; growing past the pool is refused.
  EXPECT_TRUE(s->Resize(2, {2, 1}).ok());
  EXPECT_EQ(s->free_blocks(), (std::vector<int64_t>{7, 2}));
  EXPECT_EQ(s->Resize(2, {2, 5}).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(s->free_blocks(), (std::vector<int64_t>{7, 2}));
  EXPECT_TRUE(s->Cancel(3));
  EXPECT_EQ(s->free_blocks(), (std::vector<int64_t>{8, 3}));
}

TEST(SchedulerTest, RequestThatCanNeverFitIsRefused) {
  FakeClock clock;
  SchedulerOptions o;
  o.pool_blocks = {10};
  auto s = Make(o, &clock);
  absl::Status st = s->Submit(Spec(1, 8, 4, {11}));
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);  // retrying cannot help
  EXPECT_NE(st.message().find("never fit"), absl::string_view::npos) << st;
  EXPECT_EQ(s->Submit(Spec(2, 8, 4, {1, 1})).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s->Submit(Spec(3, 0, 4, {1})).code(), absl::StatusCode::kInvalidArgument);
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
  o.pool_blocks = {4};
  o.max_queue_wait = absl::Seconds(10);
  auto s = Make(o, &clock);
  ASSERT_TRUE(s->Submit(Spec(1, 8, 4, {4})).ok());
  s->NextStep(nullptr);
  ASSERT_TRUE(s->Submit(Spec(2, 8, 4, {4})).ok());
  SequenceSpec with_deadline = Spec(3, 8, 4, {1});
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
  o.pool_blocks = {100};
  o.max_queue_wait = absl::Seconds(10);
  auto s = Make(o, &clock);
  ASSERT_TRUE(s->Submit(Spec(1, 8, 4, {1})).ok());
  s->NextStep(nullptr);
  ASSERT_TRUE(s->Submit(Spec(2, 8, 4, {1})).ok());
  std::vector<DroppedRequest> dropped;
  clock.Advance(absl::Seconds(11));
  s->NextStep(&dropped);
  ASSERT_EQ(dropped.size(), 1u);
  EXPECT_THAT(dropped[0].status.message(), testing::HasSubstr("all 1 batch slots"));
  s->Finish(1);
  s->SetAdmitting(false);
  ASSERT_TRUE(s->Submit(Spec(3, 8, 4, {1})).ok());
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
  ASSERT_TRUE(s->Submit(Spec(1, 20, 2, {}, /*profile=*/true)).ok());
  ASSERT_TRUE(s->Submit(Spec(2, 20, 2, {}, /*profile=*/true)).ok());
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
  ASSERT_TRUE(s->Submit(Spec(3, 100, 2, {}, /*profile=*/true)).ok());
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
