// Scheduler micro-batches (architecture.md §6): a sequence in a step that has not completed gets
// no work in another step; each step takes its share of the running sequences; CompleteStep makes
// them plannable again.
#include <set>
#include <vector>

#include "coordinator/scheduler.h"
#include "gtest/gtest.h"

namespace xkv {
namespace {

SequenceSpec Spec(uint64_t id, int64_t prompt, int64_t max_new) {
  SequenceSpec s;
  s.id = id;
  s.prompt_tokens = prompt;
  s.max_new_tokens = max_new;
  return s;
}

std::set<uint64_t> Ids(const StepPlan& plan) {
  std::set<uint64_t> ids;
  for (const WorkItem& w : plan.items) ids.insert(w.id);
  return ids;
}

TEST(SchedulerMicroBatchTest, RejectsMicroBatchesOutsideRange) {
  FakeClock clock;
  for (int64_t m : {int64_t{0}, int64_t{-1}, kMaxMicroBatches + 1}) {
    SchedulerOptions o;
    o.micro_batches = m;
    absl::StatusOr<std::unique_ptr<Scheduler>> s = Scheduler::Create(o, &clock);
    ASSERT_FALSE(s.ok()) << m;
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(s.status().message().find("micro_batches"), std::string::npos);
  }
}

TEST(SchedulerMicroBatchTest, InFlightSequencesAreExcludedUntilTheirStepCompletes) {
  FakeClock clock;
  SchedulerOptions o;
  o.micro_batches = 2;
  auto s = *Scheduler::Create(o, &clock);
  for (uint64_t id = 1; id <= 4; ++id) ASSERT_TRUE(s->Submit(Spec(id, 16, 8)).ok());
  // Four running, two micro-batches: two sequences per step, disjoint.
  const StepPlan a = s->NextMicroBatch(nullptr);
  const StepPlan b = s->NextMicroBatch(nullptr);
  EXPECT_EQ(Ids(a), (std::set<uint64_t>{1, 2}));
  EXPECT_EQ(Ids(b), (std::set<uint64_t>{3, 4}));
  EXPECT_EQ(s->in_flight(), 4);
  EXPECT_TRUE(s->NextMicroBatch(nullptr).empty()) << "every sequence is in flight";
  s->CompleteStep(a.step);
  EXPECT_EQ(s->in_flight(), 2);
  const StepPlan c = s->NextMicroBatch(nullptr);
  EXPECT_EQ(Ids(c), (std::set<uint64_t>{1, 2}));
  for (const WorkItem& w : c.items) EXPECT_EQ(w.kind, WorkKind::kDecode);
  s->CompleteStep(b.step);
  s->CompleteStep(c.step);
  EXPECT_EQ(s->in_flight(), 0);
  // A finished sequence leaves its step: the others complete as usual.
  const StepPlan d = s->NextMicroBatch(nullptr);
  s->Finish(*Ids(d).begin());
  s->CompleteStep(d.step);
  EXPECT_EQ(s->in_flight(), 0);
}

TEST(SchedulerMicroBatchTest, OneMicroBatchPlansEverySequenceEachStep) {
  FakeClock clock;
  SchedulerOptions o;
  auto s = *Scheduler::Create(o, &clock);
  for (uint64_t id = 1; id <= 3; ++id) ASSERT_TRUE(s->Submit(Spec(id, 16, 8)).ok());
  for (int step = 0; step < 3; ++step) {
    const StepPlan p = s->NextStep(nullptr);  // completes at once
    EXPECT_EQ(Ids(p), (std::set<uint64_t>{1, 2, 3}));
    EXPECT_EQ(s->in_flight(), 0);
  }
}

}  // namespace
}  // namespace xkv
