// Continuous batching (architecture.md §1): every step carries one decode token for each running
// sequence that is generating, plus prompt work (XKV profile passes and prefill chunks) of admitted
// sequences, within a per-step token budget. Requests wait in a bounded FIFO (RequestQueue) until
// their KV blocks fit; a request is refused with RESOURCE_EXHAUSTED when the queue is full, when it
// can never fit (more blocks than a stage's pool holds), or when it waited longer than
// max_queue_wait; a queued request whose deadline passes is dropped with DEADLINE_EXCEEDED.
//
// KV blocks are counted by one KvManager (coordinator/kv_manager.h, architecture.md §5) over the
// stages' shared pools, under the admission policy: guaranteed_no_evict reserves every request's
// worst case, max_utilization its prompt and grows it by whole blocks as it decodes. When the
// decodes of a step need more blocks than a stage has free, the most recently admitted running
// sequence is preempted (StepPlan::preempted): its blocks are freed and it goes back to the head
// of the queue with the tokens it generated appended to its prompt, to be recomputed.
//
// Step composition, in order:
//   1. decode: one token per generating sequence (the budget is at least max_running +
//      min_final_chunk, so decodes always fit and leave room for prompt work);
//   2. prompt work of admitted sequences in admission order (a reconstruct request's re-reading
//      steps come after its prefill, each like a profile pass): a profile pass is never split (the
//      scores-only mini-prefill needs the whole prompt); it runs as a pass of its own, so when it
//      does not fit what the step's decodes and earlier prompt work left, it waits only for a step
//      without other prompt work (never for the decodes to end). Prefill is chunked (≤
//      prefill_chunk tokens of one sequence per step) and the final chunk of a prompt always has
//      ≥ min_final_chunk tokens (the XKV observation window);
//   3. admission: the queue's head is admitted while max_running and every stage's free blocks
//      allow it (strict FIFO), and gets prompt work in the same step if budget remains.
// NextStep() advances the scheduler's state (and the KV ledger) as if the step completes; the
// driver reports what the stages hold (CheckHeld, Compacted) and each sequence's end with Finish()
// (or Cancel()), which releases its blocks. Thread-safe.
//
// Micro-batches (architecture.md §6): up to `micro_batches` planned steps may be in flight at once,
// each over a disjoint set of sequences. A sequence of a step that has not completed is in flight:
// no other step gets work for it (nor may it be preempted) until CompleteStep(step) says its
// results were applied. NextMicroBatch() plans such a step; NextStep() is a step that completes at
// once (NextMicroBatch + CompleteStep). Each step takes at most ceil(running / micro_batches)
// sequences, so the running sequences spread over the micro-batches; micro_batches = 1 plans every
// sequence each step.
#ifndef XKV_COORDINATOR_SCHEDULER_H_
#define XKV_COORDINATOR_SCHEDULER_H_

#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "coordinator/clock.h"
#include "coordinator/kv_manager.h"
#include "coordinator/request_queue.h"

namespace xkv {

struct SchedulerOptions {
  int64_t max_queue = 256;          // waiting requests
  int64_t max_running = 32;         // admitted sequences (the batch)
  int64_t step_token_budget = 512;  // tokens per step: decodes + profile + prefill
  int64_t prefill_chunk = 512;      // max prompt tokens of one sequence per step
  int64_t min_final_chunk = 8;      // the last prefill chunk of a prompt has >= this many tokens
  // The stages' KV pools (no stages: no block accounting) and the admission policy.
  KvManagerOptions kv;
  KvAdmission kv_admission = KvAdmission::kMaxUtilization;
  absl::Duration max_queue_wait = absl::Seconds(60);
  int64_t micro_batches = 1;  // steps in flight at once, in [1, kMaxMicroBatches]
};

inline constexpr int64_t kMaxMicroBatches = 64;

// kReread: one re-reading step of the reconstruct profile (after the prefill, scores-only).
enum class WorkKind { kProfile, kPrefill, kDecode, kReread };

struct WorkItem {
  uint64_t id = 0;
  WorkKind kind = WorkKind::kDecode;
  // First position: prompt offset (profile/prefill), the decode position, or (reread) the index
  // of the re-reading step.
  int64_t begin = 0;
  int64_t tokens = 0;  // profile: T; prefill: chunk length; decode: 1; reread: its input
  // Prefill: this chunk ends the prompt, so the last stage samples the first generated token.
  bool completes_prompt = false;
};

// A running sequence sent back to the queue to make room (max_utilization): the stages must free
// it before the step runs; on re-admission its first `tokens` tokens (its prompt, then the tokens
// it generated) are prefilled again and its next token is sampled after them.
struct Preemption {
  uint64_t id = 0;
  int64_t tokens = 0;
};

struct StepPlan {
  uint64_t step = 0;
  std::vector<WorkItem> items;        // decodes first, then prompt work in admission order
  std::vector<uint64_t> admitted;     // requests that left the queue in this step
  std::vector<Preemption> preempted;  // before this step's items
  int64_t tokens = 0;                 // sum of items' tokens
  bool empty() const { return items.empty() && preempted.empty(); }  // nothing to run or free
};

// A request the scheduler gave up on (never admitted).
struct DroppedRequest {
  uint64_t id = 0;
  absl::Status status;  // RESOURCE_EXHAUSTED or DEADLINE_EXCEEDED
};

class Scheduler {
 public:
  // INVALID_ARGUMENT for non-positive sizes, prefill_chunk below min_final_chunk, or a budget
  // below max_running + min_final_chunk.
  static absl::StatusOr<std::unique_ptr<Scheduler>> Create(const SchedulerOptions& options,
                                                           const Clock* clock);

  // Queues a request. INVALID_ARGUMENT for a malformed spec; RESOURCE_EXHAUSTED when the queue is
  // full or the request's prompt + max_new_tokens in every layer exceed a stage's pool (it could
  // never run, even alone).
  absl::Status Submit(SequenceSpec spec);
  // Removes a queued or running request and releases its blocks; false when unknown.
  bool Cancel(uint64_t id);
  // Removes a request only while it is still queued; false otherwise.
  bool CancelQueued(uint64_t id);
  // A running request ended (EOS, length, stop, error): releases its blocks. No-op when unknown.
  void Finish(uint64_t id);
  // The stages compacted a running request: its layers hold `held` now (every layer, ordered);
  // the ledger shrinks to it (keeping, under guaranteed_no_evict, the blocks of the tokens it may
  // still write). INTERNAL when that is no shrink; OK for a request that is not running.
  absl::Status Compacted(uint64_t id, absl::Span<const KvLayerHeld> held);
  // What the stages report a running request holds after a step, against the ledger: INTERNAL
  // naming the request, the layer and both counts when they differ (the caller ends it).
  absl::Status CheckHeld(uint64_t id, absl::Span<const KvLayerHeld> held) const;
  // New stage pools (after the stages were re-planned or reloaded). FAILED_PRECONDITION while a
  // request runs and the layout changes.
  absl::Status SetKvLayout(const KvManagerOptions& kv);

  // Drops expired and over-waited queued requests (into *dropped), admits, and plans one step.
  StepPlan NextStep(std::vector<DroppedRequest>* dropped);
  // NextStep over the sequences that are not in flight; the step's sequences are in flight until
  // CompleteStep(plan.step).
  StepPlan NextMicroBatch(std::vector<DroppedRequest>* dropped);
  // The results of step `step` were applied (or the step failed and its sequences were finished
  // or restarted): its sequences may be planned again. No-op for an unknown step.
  void CompleteStep(uint64_t step);
  // Sequences in a step that has not completed.
  int64_t in_flight() const;

  // false: nothing leaves the queue (Admin.Drain, re-planning); running sequences continue.
  void SetAdmitting(bool admitting);
  bool admitting() const;

  int64_t queued() const;
  int64_t running() const;
  bool idle() const;                         // nothing queued or running
  std::vector<int64_t> free_blocks() const;  // [stage]
  int64_t preemptions() const;               // since Create
  const SchedulerOptions& options() const { return options_; }

 private:
  enum class Phase { kProfile, kPrefill, kReread, kDecode, kDone };
  struct Running {
    SequenceSpec spec;
    Phase phase = Phase::kPrefill;
    int64_t prefilled = 0;   // prompt tokens prefilled so far
    int64_t generated = 0;   // tokens sampled so far
    size_t rereads = 0;      // re-reading steps planned so far
    uint64_t in_flight = 0;  // the step it is part of until CompleteStep; 0: none
  };

  Scheduler(const SchedulerOptions& options, const Clock* clock, KvManager kv);
  void DropWaiting(absl::Time now, std::vector<DroppedRequest>* dropped);
  // KV blocks (every layer) a request reserves at admission under the policy.
  int64_t AdmissionTokens(const SequenceSpec& spec) const;
  // Tokens a running request may still write beyond what it holds (its reservation's headroom).
  int64_t HeadroomTokens(const Running& r) const;
  // Blocks per stage that one decode token of every generating sequence takes.
  std::vector<int64_t> DecodeGrowth() const;
  // Preempts the most recently admitted sequences until the decodes of this step fit.
  void MakeRoomForDecodes(StepPlan& plan);
  void Preempt(std::list<Running>::iterator it, StepPlan& plan);
  void PlanDecodes(StepPlan& plan, int64_t& budget);
  void PlanPromptWork(Running& seq, StepPlan& plan, int64_t& budget, bool& prompt_work);
  void Admit(StepPlan& plan);
  // Not in flight, and the step still has room for another sequence (step_slots_).
  bool Plannable(const Running& seq, const StepPlan& plan) const;
  void MarkInFlight(const StepPlan& plan);
  std::list<Running>::iterator FindRunning(uint64_t id);
  std::list<Running>::const_iterator FindRunning(uint64_t id) const;

  const SchedulerOptions options_;
  const Clock* clock_;
  mutable std::mutex mu_;
  RequestQueue queue_;          // guarded by mu_
  std::list<Running> running_;  // guarded by mu_; admission order
  KvManager kv_;                // guarded by mu_; the KV ledger
  uint64_t step_ = 0;           // guarded by mu_
  size_t step_slots_ = 0;       // guarded by mu_; sequences the step being planned may take
  int64_t preemptions_ = 0;     // guarded by mu_
  bool admitting_ = true;       // guarded by mu_
};

}  // namespace xkv

#endif  // XKV_COORDINATOR_SCHEDULER_H_
