#include "coordinator/scheduler.h"

#include <algorithm>
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
  for (int64_t b : options.pool_blocks) {
    if (b < 0) return absl::InvalidArgumentError("scheduler: negative pool capacity");
  }
  return std::unique_ptr<Scheduler>(new Scheduler(options, clock));
}

Scheduler::Scheduler(const SchedulerOptions& options, const Clock* clock)
    : options_(options), clock_(clock), queue_(options.max_queue), free_(options.pool_blocks) {}

absl::Status Scheduler::Submit(SequenceSpec spec) {
  if (spec.prompt_tokens < 1 || spec.max_new_tokens < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "scheduler: request ", spec.id, " has ", spec.prompt_tokens,
        " prompt tokens and max_new_tokens ", spec.max_new_tokens, "; both must be >= 1"));
  }
  if (spec.blocks.empty()) spec.blocks.assign(options_.pool_blocks.size(), 0);
  if (spec.blocks.size() != options_.pool_blocks.size()) {
    return absl::InvalidArgumentError(absl::StrCat("scheduler: request ", spec.id, " names ",
                                                   spec.blocks.size(), " block pools, there are ",
                                                   options_.pool_blocks.size()));
  }
  for (size_t p = 0; p < spec.blocks.size(); ++p) {
    if (spec.blocks[p] > options_.pool_blocks[p]) {
      // INVALID_ARGUMENT, not RESOURCE_EXHAUSTED: retrying cannot help (HTTP 400, not 429).
      return absl::InvalidArgumentError(absl::StrCat(
          "the request needs ", spec.blocks[p], " KV blocks in pool ", p, " but the pool holds ",
          options_.pool_blocks[p], "; it can never fit (shorten the prompt or max_tokens)"));
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (FindRunning(spec.id) != running_.end()) {
    return absl::AlreadyExistsError(absl::StrCat("request ", spec.id, " is already running"));
  }
  return queue_.Push(std::move(spec), clock_->Now());
}

std::list<Scheduler::Running>::iterator Scheduler::FindRunning(uint64_t id) {
  return std::find_if(running_.begin(), running_.end(),
                      [id](const Running& r) { return r.spec.id == id; });
}

bool Scheduler::Cancel(uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  if (queue_.Cancel(id)) return true;
  auto it = FindRunning(id);
  if (it == running_.end()) return false;
  Reserve(it->spec.blocks, -1);
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
  Reserve(it->spec.blocks, -1);
  running_.erase(it);
}

absl::Status Scheduler::Resize(uint64_t id, std::vector<int64_t> blocks) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = FindRunning(id);
  if (it == running_.end()) {
    return absl::NotFoundError(absl::StrCat("request ", id, " is not running"));
  }
  if (blocks.size() != free_.size()) {
    return absl::InvalidArgumentError(absl::StrCat("scheduler: resize names ", blocks.size(),
                                                   " pools, there are ", free_.size()));
  }
  Reserve(it->spec.blocks, -1);
  if (!Fits(blocks)) {
    Reserve(it->spec.blocks, +1);
    return absl::ResourceExhaustedError(
        absl::StrCat("request ", id, ": not enough free KV blocks for its solved budgets"));
  }
  it->spec.blocks = std::move(blocks);
  Reserve(it->spec.blocks, +1);
  return absl::OkStatus();
}

bool Scheduler::Fits(absl::Span<const int64_t> blocks) const {
  for (size_t p = 0; p < free_.size(); ++p) {
    if (blocks[p] > free_[p]) return false;
  }
  return true;
}

void Scheduler::Reserve(absl::Span<const int64_t> blocks, int sign) {
  for (size_t p = 0; p < free_.size(); ++p) free_[p] -= sign * blocks[p];
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

void Scheduler::PlanDecodes(StepPlan& plan, int64_t& budget) {
  // Create() guarantees budget >= max_running + min_final_chunk: every decode fits.
  for (Running& r : running_) {
    if (r.phase != Phase::kDecode || !Plannable(r, plan)) continue;
    plan.items.push_back({r.spec.id, WorkKind::kDecode, r.spec.prompt_tokens + r.generated - 1, 1});
    --budget;
    if (++r.generated >= r.spec.max_new_tokens) r.phase = Phase::kDone;
  }
}

void Scheduler::PlanPromptWork(Running& seq, StepPlan& plan, int64_t& budget, bool& prompt_work) {
  if (!Plannable(seq, plan)) return;
  const int64_t T = seq.spec.prompt_tokens;
  if (seq.phase == Phase::kProfile) {
    // A pass longer than the whole budget can never fit: it runs as the step's only prompt work.
    const bool oversized = T > options_.step_token_budget;
    if (T <= budget || (oversized && !prompt_work)) {
      plan.items.push_back({seq.spec.id, WorkKind::kProfile, 0, T});
      budget -= std::min(budget, T);
      prompt_work = true;
      seq.phase = Phase::kPrefill;
    }
    return;
  }
  if (seq.phase != Phase::kPrefill || budget <= 0) return;
  const int64_t remaining = T - seq.prefilled;
  const int64_t min_final = std::min(options_.min_final_chunk, T);
  int64_t chunk = std::min({options_.prefill_chunk, remaining, budget});
  if (chunk < remaining && remaining - chunk < min_final) chunk = remaining - min_final;
  if (chunk <= 0) return;
  const bool completes = chunk == remaining;
  plan.items.push_back({seq.spec.id, WorkKind::kPrefill, seq.prefilled, chunk, completes});
  budget -= chunk;
  prompt_work = true;
  seq.prefilled += chunk;
  if (completes) {
    seq.generated = 1;  // the last stage samples the first token after the final chunk
    seq.phase = seq.spec.max_new_tokens > 1 ? Phase::kDecode : Phase::kDone;
  }
}

void Scheduler::Admit(StepPlan& plan) {
  for (const QueuedRequest* front = queue_.Front(); admitting_ && front != nullptr;
       front = queue_.Front()) {
    if (static_cast<int64_t>(running_.size()) >= options_.max_running) break;
    if (!Fits(front->spec.blocks)) break;
    std::optional<QueuedRequest> q = queue_.PopFront();
    Running r;
    r.spec = std::move(q->spec);
    r.phase = r.spec.needs_profile ? Phase::kProfile : Phase::kPrefill;
    Reserve(r.spec.blocks, +1);
    plan.admitted.push_back(r.spec.id);
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
  return free_;
}

}  // namespace xkv
