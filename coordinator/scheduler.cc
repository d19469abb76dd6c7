#include "coordinator/scheduler.h"

#include <algorithm>
#include <limits>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"

namespace xkv {

absl::StatusOr<std::unique_ptr<Scheduler>> Scheduler::Create(const SchedulerOptions& options,
                                                             const Clock* clock) {
  if (clock == nullptr) return absl::InvalidArgumentError("scheduler: no clock");
  if (options.max_queue < 0 || options.max_running < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("scheduler: max_queue must be >= 0 and max_running >= 1 (got ",
                     options.max_queue, ", ", options.max_running, ")"));
  }
  if (options.min_final_chunk < 1 || options.prefill_chunk < options.min_final_chunk) {
    return absl::InvalidArgumentError(absl::StrCat("scheduler: need 1 <= min_final_chunk (",
                                                   options.min_final_chunk, ") <= prefill_chunk (",
                                                   options.prefill_chunk, ")"));
  }
  // Every running sequence's decode token plus one final prefill chunk always fit in a step, so
  // prompt work never starves behind decodes.
  if (options.step_token_budget < options.max_running + options.min_final_chunk) {
    return absl::InvalidArgumentError(absl::StrCat(
        "scheduler: step_token_budget (", options.step_token_budget, ") must be >= max_running (",
        options.max_running, ") + min_final_chunk (", options.min_final_chunk, ")"));
  }
  if (options.micro_batches < 1 || options.micro_batches > kMaxMicroBatches) {
    return absl::InvalidArgumentError(absl::StrCat("scheduler: micro_batches must be in [1, ",
                                                   kMaxMicroBatches, "] (got ",
                                                   options.micro_batches, ")"));
  }
  absl::StatusOr<KvManager> kv = KvManager::Create(options.kv);
  if (!kv.ok()) return kv.status();
  return std::unique_ptr<Scheduler>(new Scheduler(options, clock, *std::move(kv)));
}

Scheduler::Scheduler(const SchedulerOptions& options, const Clock* clock, KvManager kv)
    : options_(options), clock_(clock), queue_(options.max_queue), kv_(std::move(kv)) {}

absl::Status Scheduler::Submit(SequenceSpec spec) {
  if (spec.prompt_tokens < 1 || spec.max_new_tokens < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "scheduler: request ", spec.id, " has ", spec.prompt_tokens,
        " prompt tokens and max_new_tokens ", spec.max_new_tokens, "; both must be >= 1"));
  }
  if (spec.max_new_tokens > std::numeric_limits<int64_t>::max() - spec.prompt_tokens) {
    return absl::InvalidArgumentError(absl::StrCat(
        "scheduler: request ", spec.id, " has ", spec.prompt_tokens,
        " prompt tokens and max_new_tokens ", spec.max_new_tokens, "; their sum overflows"));
  }
  std::lock_guard<std::mutex> lock(mu_);
  // The worst case in every layer must fit each stage's pool: then a request that runs alone
  // always completes, so preemption always makes progress.
  if (absl::Status fits = kv_.CheckEverFits(spec.id, spec.prompt_tokens + spec.max_new_tokens);
      !fits.ok()) {
    return fits;
  }
  if (FindRunning(spec.id) != running_.end()) {
    return absl::AlreadyExistsError(absl::StrCat("request ", spec.id, " is already running"));
  }
  return queue_.Push(std::move(spec), clock_->Now());
}

std::list<Scheduler::Running>::iterator Scheduler::FindRunning(uint64_t id) {
  return std::find_if(running_.begin(), running_.end(),
                      [id](const Running& r) { return r.spec.id == id; });
}

std::list<Scheduler::Running>::const_iterator Scheduler::FindRunning(uint64_t id) const {
  return std::find_if(running_.begin(), running_.end(),
                      [id](const Running& r) { return r.spec.id == id; });
}

bool Scheduler::Cancel(uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  if (queue_.Cancel(id)) return true;
  auto it = FindRunning(id);
  if (it == running_.end()) return false;
  kv_.Free(id);
  running_.erase(it);
  return true;
}

bool Scheduler::CancelQueued(uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  return queue_.Cancel(id);
}

void Scheduler::Finish(uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = FindRunning(id);
  if (it == running_.end()) return;
  kv_.Free(id);
  running_.erase(it);
}

int64_t Scheduler::AdmissionTokens(const SequenceSpec& spec) const {
  return options_.kv_admission == KvAdmission::kGuaranteedNoEvict
             ? spec.prompt_tokens + spec.max_new_tokens
             : spec.prompt_tokens;
}

int64_t Scheduler::HeadroomTokens(const Running& r) const {
  const int64_t prompt_left = r.spec.prompt_tokens - r.prefilled;
  if (options_.kv_admission == KvAdmission::kMaxUtilization) return prompt_left;
  // Every token but the last sampled one is written once: the prompt's rest and the decodes.
  const int64_t written = std::max<int64_t>(r.generated, 1);
  return prompt_left + r.spec.max_new_tokens - written;
}

absl::Status Scheduler::Compacted(uint64_t id, absl::Span<const KvLayerHeld> held) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = FindRunning(id);
  if (it == running_.end() || !kv_.enabled()) return absl::OkStatus();
  return kv_.Shrink(id, held, HeadroomTokens(*it));
}

absl::Status Scheduler::CheckHeld(uint64_t id, absl::Span<const KvLayerHeld> held) const {
  std::lock_guard<std::mutex> lock(mu_);
  if (FindRunning(id) == running_.end() || !kv_.enabled()) return absl::OkStatus();
  return kv_.Verify(id, held);
}

absl::Status Scheduler::SetKvLayout(const KvManagerOptions& kv) {
  std::lock_guard<std::mutex> lock(mu_);
  const auto same = [](const KvStage& a, const KvStage& b) {
    return a.layer_begin == b.layer_begin && a.layer_end == b.layer_end &&
           a.capacity_blocks == b.capacity_blocks && a.head_tables == b.head_tables;
  };
  const KvManagerOptions& now = kv_.options();
  if (now.block_tokens == kv.block_tokens &&
      std::equal(now.stages.begin(), now.stages.end(), kv.stages.begin(), kv.stages.end(), same)) {
    return absl::OkStatus();
  }
  if (!running_.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "scheduler: the stages' KV pools changed while ", running_.size(), " requests run"));
  }
  absl::StatusOr<KvManager> next = KvManager::Create(kv);
  if (!next.ok()) return next.status();
  kv_ = *std::move(next);
  return absl::OkStatus();
}

void Scheduler::DropWaiting(absl::Time now, std::vector<DroppedRequest>* dropped) {
  for (QueuedRequest& q : queue_.TakeExpired(now)) {
    dropped->push_back(
        {q.spec.id, absl::DeadlineExceededError(
                        "the request's deadline passed while it waited in the queue")});
  }
  while (const QueuedRequest* front = queue_.Front()) {
    if (now - front->enqueued <= options_.max_queue_wait) break;
    const uint64_t id = front->spec.id;
    const std::string blocked_by =
        !admitting_ ? "admission is paused (draining or re-planning the stages)"
        : static_cast<int64_t>(running_.size()) >= options_.max_running
            ? absl::StrCat("all ", options_.max_running, " batch slots (--max-batch) stayed busy")
            : "its KV blocks did not fit in the free KV cache";
    queue_.PopFront();
    dropped->push_back(
        {id, absl::ResourceExhaustedError(
                 absl::StrCat("the request waited ", absl::FormatDuration(options_.max_queue_wait),
                              " (--max-queue-wait) in the queue: ", blocked_by, "; retry later"))});
  }
}

std::vector<int64_t> Scheduler::DecodeGrowth() const {
  std::vector<int64_t> need(kv_.num_stages(), 0);
  for (const Running& r : running_) {
    // In-flight sequences grew when their step was planned; they get no work in this one.
    if (r.phase != Phase::kDecode || r.in_flight != 0) continue;
    const std::vector<int64_t> g = kv_.GrowthBlocks(r.spec.id, 1);
    for (size_t s = 0; s < need.size(); ++s) need[s] += g[s];
  }
  return need;
}

void Scheduler::MakeRoomForDecodes(StepPlan& plan) {
  while (true) {
    const std::vector<int64_t> need = DecodeGrowth();
    bool fits = true;
    for (size_t s = 0; s < need.size(); ++s) fits = fits && need[s] <= kv_.free_blocks()[s];
    if (fits) return;
    // The most recently admitted sequence that still needs its blocks (a finished one frees them
    // after this step anyway) and is not part of a step in flight (its stages hold its state).
    auto victim = running_.end();
    for (auto it = running_.begin(); it != running_.end(); ++it) {
      if (it->phase != Phase::kDone && it->in_flight == 0) victim = it;
    }
    if (victim == running_.end()) return;
    Preempt(victim, plan);
  }
}

void Scheduler::Preempt(std::list<Running>::iterator it, StepPlan& plan) {
  Running& r = *it;
  // Tokens it produced so far (the first comes with the prefill, before any re-reading).
  const int64_t g = r.phase == Phase::kDecode || r.phase == Phase::kReread ? r.generated : 0;
  SequenceSpec spec = std::move(r.spec);
  // Recomputed with its generated tokens, its cache is no longer the prompt alone: no re-reading.
  if (g > 0) spec.reread_tokens.clear();
  if (spec.original_prompt_tokens == 0) spec.original_prompt_tokens = spec.prompt_tokens;
  spec.prompt_tokens += g;
  spec.max_new_tokens -= g;
  spec.needs_profile = spec.needs_profile && r.phase == Phase::kProfile;
  kv_.Free(spec.id);
  plan.preempted.push_back({spec.id, spec.prompt_tokens});
  ++preemptions_;
  running_.erase(it);
  queue_.PushFront(std::move(spec), clock_->Now()).IgnoreError();  // it was not queued
}

void Scheduler::PlanDecodes(StepPlan& plan, int64_t& budget) {
  if (kv_.enabled()) MakeRoomForDecodes(plan);
  // Create() guarantees budget >= max_running + min_final_chunk: every decode fits.
  for (Running& r : running_) {
    if (r.phase != Phase::kDecode || !Plannable(r, plan)) continue;
    plan.items.push_back({r.spec.id, WorkKind::kDecode, r.spec.prompt_tokens + r.generated - 1, 1});
    --budget;
    if (kv_.enabled()) kv_.Grow(r.spec.id, 1).IgnoreError();  // MakeRoomForDecodes made room
    if (++r.generated >= r.spec.max_new_tokens) r.phase = Phase::kDone;
  }
}

void Scheduler::PlanPromptWork(Running& seq, StepPlan& plan, int64_t& budget, bool& prompt_work) {
  if (!Plannable(seq, plan)) return;
  const int64_t T = seq.spec.prompt_tokens;
  if (seq.phase == Phase::kProfile) {
    // The scores-only pass runs as a pass of its own (before the step's main pass): when it does
    // not fit what the decodes left, it runs as the step's only prompt work, as one longer than the
    // whole budget does. (Waiting for room starved it while any request decoded: issue 13.)
    if (T <= budget || !prompt_work) {
      plan.items.push_back({seq.spec.id, WorkKind::kProfile, 0, T});
      budget -= std::min(budget, T);
      prompt_work = true;
      seq.phase = Phase::kPrefill;
    }
    return;
  }
  if (seq.phase == Phase::kReread) {
    const int64_t R = seq.spec.reread_tokens[seq.rereads];
    if (R <= budget || !prompt_work) {  // a scores-only pass too: as the profile pass above
      plan.items.push_back({seq.spec.id, WorkKind::kReread, static_cast<int64_t>(seq.rereads), R});
      budget -= std::min(budget, R);
      prompt_work = true;
      if (++seq.rereads == seq.spec.reread_tokens.size()) seq.phase = Phase::kDecode;
    }
    return;
  }
  if (seq.phase != Phase::kPrefill || budget <= 0) return;
  // A recomputed request's own prompt ends a chunk (the one that observes and compacts it); the
  // tokens it had generated follow in chunks of any length.
  const int64_t own = seq.spec.original_prompt_tokens > 0 ? seq.spec.original_prompt_tokens : T;
  const int64_t end = seq.prefilled < own ? own : T;
  const int64_t remaining = end - seq.prefilled;
  const int64_t min_final = end == own ? std::min(options_.min_final_chunk, own) : 1;
  int64_t chunk = std::min({options_.prefill_chunk, remaining, budget});
  if (chunk < remaining && remaining - chunk < min_final) chunk = remaining - min_final;
  if (chunk <= 0) return;
  if (kv_.enabled() && !kv_.Grow(seq.spec.id, chunk).ok()) return;  // within its reservation
  const bool completes = seq.prefilled + chunk == T;
  plan.items.push_back({seq.spec.id, WorkKind::kPrefill, seq.prefilled, chunk, completes});
  budget -= chunk;
  prompt_work = true;
  seq.prefilled += chunk;
  if (completes) {
    seq.generated = 1;  // the last stage samples the first token after the final chunk
    seq.phase = seq.spec.max_new_tokens <= 1      ? Phase::kDone
                : !seq.spec.reread_tokens.empty() ? Phase::kReread
                                                  : Phase::kDecode;
  }
}

void Scheduler::Admit(StepPlan& plan) {
  // max_utilization: what the running sequences' next decodes take stays free, so a new request
  // does not force a preemption at once.
  const std::vector<int64_t> headroom = kv_.enabled() ? DecodeGrowth() : std::vector<int64_t>();
  for (const QueuedRequest* front = queue_.Front(); admitting_ && front != nullptr;
       front = queue_.Front()) {
    if (static_cast<int64_t>(running_.size()) >= options_.max_running) break;
    const uint64_t id = front->spec.id;
    if (std::any_of(plan.preempted.begin(), plan.preempted.end(),
                    [id](const Preemption& p) { return p.id == id; })) {
      break;  // preempted for room in this very step
    }
    const int64_t tokens = AdmissionTokens(front->spec);
    if (kv_.enabled() && !kv_.CanAllocate(tokens, headroom)) break;
    std::optional<QueuedRequest> q = queue_.PopFront();
    Running r;
    r.spec = std::move(q->spec);
    r.phase = r.spec.needs_profile ? Phase::kProfile : Phase::kPrefill;
    if (kv_.enabled()) kv_.Allocate(id, tokens).IgnoreError();  // CanAllocate said it fits
    plan.admitted.push_back(id);
    running_.push_back(std::move(r));
  }
}

StepPlan Scheduler::NextStep(std::vector<DroppedRequest>* dropped) {
  StepPlan plan = NextMicroBatch(dropped);
  CompleteStep(plan.step);
  return plan;
}

StepPlan Scheduler::NextMicroBatch(std::vector<DroppedRequest>* dropped) {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<DroppedRequest> local;
  DropWaiting(clock_->Now(), dropped != nullptr ? dropped : &local);
  StepPlan plan;
  int64_t budget = options_.step_token_budget;
  Admit(plan);  // before planning: the admitted count towards the step's share of sequences
  const size_t running = running_.size(), m = static_cast<size_t>(options_.micro_batches);
  step_slots_ = (running + m - 1) / m;
  PlanDecodes(plan, budget);
  bool prompt_work = false;
  for (Running& r : running_) PlanPromptWork(r, plan, budget, prompt_work);
  for (const WorkItem& item : plan.items) plan.tokens += item.tokens;
  if (!plan.items.empty()) plan.step = ++step_;
  MarkInFlight(plan);
  return plan;
}

bool Scheduler::Plannable(const Running& seq, const StepPlan& plan) const {
  // A sequence has at most one item per step, so items count the step's sequences.
  return seq.in_flight == 0 && plan.items.size() < step_slots_;
}

void Scheduler::MarkInFlight(const StepPlan& plan) {
  if (plan.items.empty()) return;
  absl::flat_hash_set<uint64_t> ids;
  for (const WorkItem& item : plan.items) ids.insert(item.id);
  for (Running& r : running_) {
    if (ids.contains(r.spec.id)) r.in_flight = plan.step;
  }
}

void Scheduler::CompleteStep(uint64_t step) {
  if (step == 0) return;  // an empty plan
  std::lock_guard<std::mutex> lock(mu_);
  for (Running& r : running_) {
    if (r.in_flight == step) r.in_flight = 0;
  }
}

int64_t Scheduler::in_flight() const {
  std::lock_guard<std::mutex> lock(mu_);
  return std::count_if(running_.begin(), running_.end(),
                       [](const Running& r) { return r.in_flight != 0; });
}

void Scheduler::SetAdmitting(bool admitting) {
  std::lock_guard<std::mutex> lock(mu_);
  admitting_ = admitting;
}

bool Scheduler::admitting() const {
  std::lock_guard<std::mutex> lock(mu_);
  return admitting_;
}

int64_t Scheduler::queued() const {
  std::lock_guard<std::mutex> lock(mu_);
  return queue_.size();
}

int64_t Scheduler::running() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int64_t>(running_.size());
}

bool Scheduler::idle() const {
  std::lock_guard<std::mutex> lock(mu_);
  return queue_.empty() && running_.empty();
}

std::vector<int64_t> Scheduler::free_blocks() const {
  std::lock_guard<std::mutex> lock(mu_);
  return kv_.free_blocks();
}

int64_t Scheduler::preemptions() const {
  std::lock_guard<std::mutex> lock(mu_);
  return preemptions_;
}

}  // namespace xkv
