// The coordinator's loop: plan steps (Scheduler), keep up to micro_batches of them in flight
// through the stages (PipelineDriver), apply each one's results as it completes: the XKV decisions
// (profile → solve → compact) and each sampled token (coordinator_output.cc: stream, finish)
// (architecture.md §6).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "coordinator/compaction_sizes.h"
#include "coordinator/coordinator.h"
#include "coordinator/coordinator_sequence.h"
#include "coordinator/request_validation.h"
#include "coordinator/stage_probe.h"

namespace xkv {
namespace {

double Ms(absl::Duration d) { return absl::ToDoubleMilliseconds(d); }
double Ms(StepTimingLog::Clock::duration d) {
  return std::chrono::duration<double, std::milli>(d).count();
}
double MsSince(StepTimingLog::Clock::time_point t0) { return Ms(StepTimingLog::Clock::now() - t0); }

}  // namespace

void Coordinator::Loop() {
  while (true) {
    bool recover = false;
    std::vector<uint64_t> drop;
    absl::Status drop_status;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stop_ && in_flight_.empty() && compactions_.empty()) return;
      // A reload or a release retry waits until no micro-batch or compaction is in flight.
      if (in_flight_.empty() && compactions_.empty()) {
        // Blocks a stage could not free while it was unreachable: retried once per health
        // interval.
        const bool retry_release =
            !unreleased_.empty() && stages_ready_.ok() && clock_->Now() >= release_retry_at_;
        recover = recover_ || retry_release;
        recover_ = false;
        if (retry_release) release_retry_at_ = clock_->Now() + options_.health_interval;
      }
      drop.swap(drop_queued_);
      drop_status = drop_status_;
    }
    for (uint64_t id : drop) {
      if (scheduler_->CancelQueued(id)) FinishSequence(id, drop_status, 0);
    }
    if (recover) {
      std::lock_guard<std::mutex> driver_lock(driver_mu_);
      if (!RecoverStages().ok()) stages_suspect_ = true;
    }
    ProcessCancels();
    ApplyCompactions(/*wait=*/false);
    FillPipeline();
    if (in_flight_.empty() && !compactions_.empty()) {
      ApplyCompactions(/*wait=*/true);  // nothing else to wait for
      continue;
    }
    if (in_flight_.empty()) {
      if (scheduler_->idle()) MaybeAutoReplan();
      std::unique_lock<std::mutex> lock(mu_);
      wake_.wait_for(lock, std::chrono::milliseconds(20), [&] {
        return stop_ || !cancels_.empty() || !drop_queued_.empty() || recover_ || work_;
      });
      work_ = false;
      continue;
    }
    CompleteOldest();
  }
}

void Coordinator::Monitor() {
  // Consecutive status checks per stage that ran past their deadline: one may be a busy moment,
  // the second in a row counts as a hung stage. A refused connection counts at once.
  std::vector<int> late(driver_->num_stages(), 0);
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    lock.unlock();
    // Each call is bounded by the stage client's status deadline, so a hung stage counts as down.
    const uint64_t reloads_before = reloads_.load();
    const std::vector<absl::StatusOr<xkv::v1::StatusResponse>> statuses = driver_->Status();
    // A reload that ran meanwhile makes the answers stale: stages between dropping and loading
    // their layers say NOT_LOADED. They count from the next round.
    const bool stale = reloads_before % 2 == 1 || reloads_.load() != reloads_before;
    absl::Status ready = absl::OkStatus();
    bool reload = false;
    for (size_t s = 0; !stale && s < statuses.size(); ++s) {
      const bool timed_out = statuses[s].status().code() == absl::StatusCode::kDeadlineExceeded;
      late[s] = timed_out ? late[s] + 1 : 0;
      if (!ready.ok() || (timed_out && late[s] < 2)) continue;
      const std::string stage = absl::StrCat("pipeline stage ", s, " (", driver_->address(s), ")");
      if (!statuses[s].ok()) {
        ready = absl::UnavailableError(
            absl::StrCat(stage, " does not answer: ", statuses[s].status().message()));
      } else if (absl::Status fits =
                     CheckStepLimit(*statuses[s], static_cast<int>(s), driver_->address(s),
                                    options_.scheduler.step_token_budget);
                 !fits.ok()) {
        ready = fits;  // no reload: the stage would fail every larger step
      } else if (statuses[s]->health() != xkv::v1::STAGE_HEALTH_SERVING) {
        ready = absl::UnavailableError(absl::StrCat(
            stage, " is not serving (", xkv::v1::StageHealth_Name(statuses[s]->health()),
            statuses[s]->message().empty() ? "" : ": ", statuses[s]->message(),
            "); reloading the stages"));
        reload = true;
      }
    }
    lock.lock();
    if (!stale && ready != stages_ready_) {
      std::fprintf(stderr, "xkv coordinator: stages %s\n",
                   ready.ok() ? "serving" : std::string(ready.message()).c_str());
    }
    if (!stale) stages_ready_ = ready;
    if (reload) {
      recover_ = true;
      wake_.notify_all();
    }
    monitor_wake_.wait_for(lock, absl::ToChronoMilliseconds(options_.health_interval),
                           [&] { return stop_; });
  }
}

void Coordinator::ProcessCancels() {
  std::vector<std::pair<uint64_t, absl::Status>> cancels;
  {
    std::lock_guard<std::mutex> lock(mu_);
    cancels.swap(cancels_);
  }
  // A sequence may be in a micro-batch in flight: its release reaches each stage after that
  // step (PipelineDriver's queues), and the batch's results skip it.
  for (const auto& [id, status] : cancels) {
    scheduler_->Cancel(id);
    FinishSequence(id, status, 0);
  }
}

absl::Status Coordinator::RecoverStages() {
  const std::vector<absl::StatusOr<xkv::v1::StatusResponse>> statuses = driver_->Status();
  bool serving = true;
  for (size_t s = 0; s < statuses.size(); ++s) {
    if (!statuses[s].ok()) {
      absl::Status down =
          absl::UnavailableError(absl::StrCat("pipeline stage ", s, " (", driver_->address(s),
                                              ") is down: ", statuses[s].status().message()));
      std::lock_guard<std::mutex> lock(mu_);
      stages_ready_ = down;
      return down;
    }
    if (absl::Status fits = CheckStepLimit(*statuses[s], static_cast<int>(s), driver_->address(s),
                                           options_.scheduler.step_token_budget);
        !fits.ok()) {
      std::lock_guard<std::mutex> lock(mu_);
      stages_ready_ = fits;
      return fits;
    }
    serving = serving && statuses[s]->health() == xkv::v1::STAGE_HEALTH_SERVING;
  }
  if (!serving) {
    std::vector<uint64_t> started;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (const auto& [id, seq] : sequences_) {
        if (seq->started) started.push_back(id);
      }
    }
    for (uint64_t id : started) {
      FinishSequence(id, absl::UnavailableError("a worker restarted; the stages were reloaded"), 0);
    }
    StagePlan plan;
    {
      std::lock_guard<std::mutex> lock(mu_);
      plan = plan_;
    }
    if (absl::Status s = ReloadStages(plan); !s.ok()) {
      return absl::UnavailableError(absl::StrCat("reloading the stages: ", s.message()));
    }
    unreleased_.clear();  // the reload dropped every sequence on every stage
  } else if (!unreleased_.empty()) {
    RETURN_IF_ERROR(driver_->Release(unreleased_));
    unreleased_.clear();
  }
  stages_suspect_ = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stages_ready_ = absl::OkStatus();
  }
  // Printed once requests are admitted again (tests wait for this line).
  if (!serving) std::fprintf(stderr, "xkv coordinator: the stages were reloaded\n");
  return absl::OkStatus();
}

void Coordinator::FillPipeline() {
  const size_t micro_batches = static_cast<size_t>(options_.scheduler.micro_batches);
  while (in_flight_.size() < micro_batches) {
    if (stages_suspect_ && !in_flight_.empty()) return;  // recover once the pipeline drained
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stop_) return;
    }
    std::vector<DroppedRequest> dropped;
    const StepTimingLog::Clock::time_point t0 = StepTimingLog::Clock::now();
    StepPlan plan = scheduler_->NextMicroBatch(&dropped);
    for (const DroppedRequest& d : dropped) FinishSequence(d.id, d.status, 0);
    if (plan.empty()) return;
    LaunchStep(std::move(plan), MsSince(t0));
  }
}

void Coordinator::LaunchStep(StepPlan plan, double plan_ms) {
  std::lock_guard<std::mutex> driver_lock(driver_mu_);
  for (const Preemption& p : plan.preempted) Preempt(p);  // whatever the stages' state
  if (stages_suspect_) {
    if (absl::Status r = RecoverStages(); !r.ok()) {
      for (const WorkItem& item : plan.items) FinishSequence(item.id, r, 0);
      scheduler_->CompleteStep(plan.step);
      return;
    }
  }
  const absl::Time now = clock_->Now();
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (uint64_t id : plan.admitted) {
      auto it = sequences_.find(id);
      if (it == sequences_.end() || it->second->admitted_set) continue;  // re-admitted: kept
      it->second->admitted = now;
      it->second->admitted_set = true;
    }
  }
  MicroBatch batch;
  batch.plan = std::move(plan);
  batch.phases.plan_ms = plan_ms;
  batch.phases.preempted = static_cast<int64_t>(batch.plan.preempted.size());
  batch.main = false;
  if (!StartPass(batch)) {
    batch.main = true;
    if (!StartPass(batch)) {  // every sequence of the plan is gone
      scheduler_->CompleteStep(batch.plan.step);
      return;
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  in_flight_.push_back(std::move(batch));
}

bool Coordinator::StartPass(MicroBatch& batch) {
  const StepTimingLog::Clock::time_point t0 = StepTimingLog::Clock::now();
  xkv::v1::StepRequest request;
  batch.items.clear();
  batch.compacts.clear();
  for (size_t i = 0; i < batch.plan.items.size(); ++i) {
    const WorkItem& item = batch.plan.items[i];
    const bool scores_only = item.kind == WorkKind::kProfile || item.kind == WorkKind::kReread;
    if (scores_only == batch.main) continue;
    Sequence* seq = Find(item.id);
    if (seq == nullptr) continue;
    xkv::v1::StepSequence* out = request.add_sequences();
    if (batch.main) {
      FillStepSequence(item, *seq, out);
    } else if (item.kind == WorkKind::kReread) {  // on top of the prompt's cache (§3.5)
      const std::vector<int32_t>& input = seq->reread_inputs[item.begin];
      const RereadSpan& span = seq->reread_spans[item.begin];
      out->set_seq_id(seq->id);
      out->mutable_tokens()->Add(input.begin(), input.end());
      out->set_n_new(static_cast<int64_t>(input.size()));
      out->set_position(static_cast<int64_t>(seq->prompt.size()));
      SetObserved(*seq, xkv::v1::SEQUENCE_MODE_REREAD, out);
      out->set_skip_sampling(true);
      xkv::v1::RereadChunk* chunk = out->mutable_reread();
      chunk->set_chunk_begin(span.chunk_begin);
      chunk->set_chunk_end(span.chunk_end);
      chunk->set_last(item.begin + 1 == static_cast<int64_t>(seq->reread_spans.size()));
    } else {
      out->set_seq_id(seq->id);
      out->mutable_tokens()->Add(seq->prompt.begin(), seq->prompt.end());
      out->set_n_new(static_cast<int64_t>(seq->prompt.size()));
      out->set_position(0);
      out->set_new_sequence(true);
      SetObserved(*seq, xkv::v1::SEQUENCE_MODE_SCORES_ONLY, out);
      out->set_skip_sampling(true);
      seq->started = true;
    }
    batch.items.push_back(i);
    batch.compacts.push_back(out->has_compact());
  }
  if (batch.items.empty()) return false;
  request.set_step_id(++step_id_);
  batch.started = clock_->Now();
  batch.pass = driver_->StartStep(std::move(request));
  batch.phases.launch_ms += MsSince(t0);
  return true;
}

void Coordinator::CompleteOldest() {
  MicroBatch batch;
  {
    std::lock_guard<std::mutex> lock(mu_);
    batch = std::move(in_flight_.front());
    in_flight_.pop_front();
  }
  std::lock_guard<std::mutex> driver_lock(driver_mu_);
  const StepTimingLog::Clock::time_point t0 = StepTimingLog::Clock::now();
  absl::StatusOr<StepOutcome> outcome = driver_->Wait(batch.pass);
  const StepTimingLog::Clock::time_point t1 = StepTimingLog::Clock::now();
  absl::Status s = outcome.status();
  if (s.ok()) s = batch.main ? ApplyMain(batch, *outcome) : ApplyProfiles(batch, *outcome);
  if (step_timing_.enabled()) LogStepTiming(batch, outcome, t0, t1);
  if (s.ok() && !batch.main) {
    batch.main = true;
    if (StartPass(batch)) {  // the main pass goes behind the passes started before it
      std::lock_guard<std::mutex> lock(mu_);
      in_flight_.push_back(std::move(batch));
      return;
    }
  }
  if (!s.ok()) FailStep(batch.plan, s);
  scheduler_->CompleteStep(batch.plan.step);
}

void Coordinator::LogStepTiming(MicroBatch& batch, const absl::StatusOr<StepOutcome>& outcome,
                                StepTimingLog::Clock::time_point wait_start,
                                StepTimingLog::Clock::time_point wait_end) {
  const StepTimingLog::Clock::time_point now = StepTimingLog::Clock::now();
  StepPhases& p = batch.phases;
  p.wait_ms = Ms(wait_end - wait_start);
  p.apply_ms = Ms(now - wait_end);
  if (outcome.ok()) {
    p.stage_ms = outcome->max_stage_ms;
    p.compute_ms = outcome->max_compute_ms;
    p.from_lookahead = outcome->from_lookahead ? 1 : 0;
    p.lookahead_undone = outcome->lookahead_undone ? 1 : 0;
  }
  p.sequences = static_cast<int64_t>(batch.items.size());
  bool decode_only = true;
  for (size_t k = 0; k < batch.items.size(); ++k) {
    const WorkItem& item = batch.plan.items[batch.items[k]];
    p.rows += item.tokens;
    if (item.kind != WorkKind::kDecode) p.prompt_tokens += item.tokens;
    decode_only = decode_only && item.kind == WorkKind::kDecode;
    if (batch.compacts[k]) ++p.compactions;
  }
  p.decode_only = decode_only ? 1 : 0;
  p.compactions += loop_compactions_;
  p.compact_ms += loop_compact_ms_;
  loop_compactions_ = 0;
  loop_compact_ms_ = 0;
  if (std::optional<std::string> line = step_timing_.Add(p, now)) {
    std::fprintf(stderr, "%s\n", line->c_str());
  }
  p = StepPhases();  // a main pass after a profile pass counts from here
}

void Coordinator::FailStep(const StepPlan& plan, const absl::Status& status) {
  stages_suspect_ = true;  // the next step checks the stages first
  // A transport failure (a stage died, hung past its deadline or lost its link) is the stages'
  // fault: the client may retry. Any other code is what a stage said about the step's content.
  const absl::StatusCode c = status.code();
  const bool stage_fault = c == absl::StatusCode::kUnavailable ||
                           c == absl::StatusCode::kDeadlineExceeded ||
                           c == absl::StatusCode::kCancelled || c == absl::StatusCode::kAborted ||
                           c == absl::StatusCode::kUnknown;
  const absl::Status end =
      stage_fault ? absl::UnavailableError(absl::StrCat("a pipeline step failed (",
                                                        status.message(), "); retry the request"))
                  : status;
  // After a stage fault the releases wait for the stages to answer again (one retry for all),
  // instead of each waiting for a hung stage's deadline in turn.
  defer_release_ = stage_fault;
  absl::flat_hash_set<uint64_t> handled;  // a request may have two items (profile, prefill)
  for (const WorkItem& item : plan.items) {
    Sequence* seq = Find(item.id);
    if (seq == nullptr || !handled.insert(item.id).second) continue;
    if (seq->generated == 0 && seq->restarts == 0 && Restart(*seq)) continue;
    FinishSequence(item.id, end, 0);
  }
  defer_release_ = false;
}

bool Coordinator::Restart(Sequence& seq) {
  if (seq.started) ReleaseOnStages(seq.id);
  scheduler_->Cancel(seq.id);
  // Back to the state Submit left it in (nothing was streamed, so the client sees no seam).
  seq.started = seq.compacted = seq.profiled = seq.budgets_known = seq.needs_profile_pass = false;
  seq.reread_inputs.clear();
  seq.reread_spans.clear();
  seq.reread_pending = false;
  seq.budgets = PolicyBudgets();
  seq.retention.reset();
  seq.reachable = true;
  seq.gains.clear();
  seq.layers.clear();
  seq.profile_ms = seq.solve_ms = 0;
  seq.admitted_set = false;
  ++seq.restarts;
  if (seq.compress && !PlanBudgetsAtSubmit(seq).ok()) return false;
  return scheduler_->Submit(SpecFor(seq)).ok();
}

Coordinator::Sequence* Coordinator::Find(uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = sequences_.find(id);
  return it == sequences_.end() ? nullptr : it->second.get();
}

absl::Status Coordinator::ApplyProfiles(const MicroBatch& batch, const StepOutcome& outcome) {
  // The scores-only mini-prefill pass is the profile's cost (its wall time from start to results,
  // shared by the batch).
  const double step_ms = Ms(clock_->Now() - batch.started);
  for (size_t i = 0; i < batch.items.size(); ++i) {
    const WorkItem& item = batch.plan.items[batch.items[i]];
    Sequence* seq = Find(item.id);
    if (seq == nullptr) continue;
    seq->profile_ms += step_ms;
    // A failure here is this request's own (its KV spec): it ends alone, the batch goes on.
    absl::Status s = item.kind == WorkKind::kReread ? AfterReread(*seq, item, outcome.sequences[i])
                                                    : SolveProfiled(*seq, outcome.sequences[i]);
    if (!s.ok()) FinishSequence(seq->id, s, 0);
  }
  return absl::OkStatus();
}

absl::Status Coordinator::SolveProfiled(Sequence& seq, const SequenceStepResult& r) {
  if (!r.gains.has_value() || static_cast<int>(r.gains->size()) != config_.n_layers) {
    return absl::InternalError(absl::StrCat("request ", seq.id, ": the stages returned ",
                                            r.gains ? r.gains->size() : 0, " gain curves for ",
                                            config_.n_layers, " layers"));
  }
  const absl::Time t0 = clock_->Now();
  seq.gains = *r.gains;
  ASSIGN_OR_RETURN(PolicyBudgets b,
                   SolveFromGains(seq.gains, r.prefix_len, bytes_per_token_, seq.kv));
  RETURN_IF_ERROR(ApplyBudgets(seq, std::move(b), /*profiled=*/true, r.prefix_len));
  seq.solve_ms += Ms(clock_->Now() - t0);
  return absl::OkStatus();
}

absl::Status Coordinator::ApplyBudgets(Sequence& seq, PolicyBudgets budgets, bool profiled,
                                       int64_t prefix_len) {
  RETURN_IF_ERROR(ClampBudgets(seq, budgets.budgets));
  seq.budgets = std::move(budgets);
  seq.budgets_known = true;
  seq.profiled = profiled;
  seq.reachable = seq.budgets.reachable;
  if (seq.budgets.average_retention.has_value()) seq.retention = seq.budgets.average_retention;
  if (profiled && prefix_len > 0) {
    // Per-head budgets: a layer's bytes are its heads' mean budget in every head.
    std::vector<int64_t> layer_tokens = seq.budgets.budgets;
    for (size_t l = 0; l < seq.budgets.head_budgets.size() && l < layer_tokens.size(); ++l) {
      const std::vector<int64_t>& heads = seq.budgets.head_budgets[l];
      int64_t sum = 0;
      for (int64_t b : heads) sum += b;
      const int64_t n = std::max<int64_t>(static_cast<int64_t>(heads.size()), 1);
      layer_tokens[l] = (sum + n / 2) / n;
    }
    RETURN_IF_ERROR(store_->AddSample(layer_tokens, prefix_len));
    std::lock_guard<std::mutex> lock(mu_);
    if (mean_kept_tokens_.size() != layer_tokens.size()) {
      mean_kept_tokens_.assign(layer_tokens.size(), 0.0);
    }
    const double n = static_cast<double>(store_->num_samples());
    for (size_t l = 0; l < mean_kept_tokens_.size(); ++l) {
      mean_kept_tokens_[l] += (layer_tokens[l] - mean_kept_tokens_[l]) / n;
    }
  }
  return absl::OkStatus();
}

ImportanceOptions Coordinator::ScoringBase() const {
  ImportanceOptions base;
  base.window = options_.window;
  base.pool_kernel = options_.pool_kernel;
  base.granularity =
      options_.query_head_scores ? ScoreGranularity::kQueryHead : ScoreGranularity::kKvHead;
  return base;
}

void Coordinator::SetObserved(const Sequence& seq, xkv::v1::SequenceMode mode,
                              xkv::v1::StepSequence* out) const {
  out->set_mode(mode);
  out->set_per_head(seq.kv.allocator.per_head);
  *out->mutable_scoring() = MakeSequenceScoring(seq.kv, ScoringBase());
}

void Coordinator::FillStepSequence(const WorkItem& item, Sequence& seq,
                                   xkv::v1::StepSequence* out) {
  out->set_seq_id(seq.id);
  out->set_position(item.begin);
  out->set_n_new(item.tokens);
  if (item.kind == WorkKind::kDecode) {
    out->add_tokens(seq.last_token);
  } else {
    const std::vector<int32_t>& input = seq.recompute.empty() ? seq.prompt : seq.recompute;
    out->mutable_tokens()->Add(input.begin() + item.begin,
                               input.begin() + item.begin + item.tokens);
    out->set_new_sequence(item.begin == 0);
    out->set_skip_sampling(!item.completes_prompt);
    // A recompute's tokens after its prompt were each first a decode step's input: the stages
    // replay them as such (the same cache and tokens, StepSequence.replayed_decodes). The
    // scheduler ends a chunk at the prompt's end, so such a chunk holds nothing else.
    if (!seq.recompute.empty() && item.begin >= static_cast<int64_t>(seq.prompt.size())) {
      out->set_replayed_decodes(item.tokens);
    }
    // The chunk that ends the request's own prompt observes and compacts it (the last one, unless
    // a preempted request recomputes the tokens it had generated after it).
    const bool ends_prompt = item.begin + item.tokens == static_cast<int64_t>(seq.prompt.size());
    if (ends_prompt && seq.compress) {
      SetObserved(seq, xkv::v1::SEQUENCE_MODE_OBSERVE, out);
      if (seq.budgets_known && !seq.reread_pending) {
        *out->mutable_compact() = MakeCompactSpec(seq.budgets, seq.kv);
        seq.compacted = true;
      }
    }
  }
  xkv::v1::WorkerSampling* s = out->mutable_sampling();
  s->set_temperature(static_cast<float>(seq.params.temperature));
  s->set_top_k(static_cast<int32_t>(seq.params.top_k));
  s->set_top_p(static_cast<float>(seq.params.top_p));
  s->set_seed(seq.params.seed);
  s->set_min_p(static_cast<float>(seq.params.min_p));
  s->set_presence_penalty(static_cast<float>(seq.params.presence_penalty));
  s->set_frequency_penalty(static_cast<float>(seq.params.frequency_penalty));
  if (seq.params.logprobs >= 0) s->set_logprobs(static_cast<int32_t>(seq.params.logprobs));
  if (seq.params.repetition_penalty != 1) {
    s->set_repetition_penalty(static_cast<float>(seq.params.repetition_penalty));
  }
  seq.started = true;
}

absl::Status Coordinator::ApplyMain(const MicroBatch& batch, StepOutcome& outcome) {
  for (size_t i = 0; i < batch.items.size(); ++i) {
    const WorkItem& item = batch.plan.items[batch.items[i]];
    Sequence* found = Find(item.id);
    if (found == nullptr) continue;
    Sequence& seq = *found;
    SequenceStepResult& r = outcome.sequences[i];
    const bool reported = !r.layers.empty();  // a stage client may report no sizes
    if (reported) seq.layers = std::move(r.layers);
    // What the stages hold against the KV ledger: a disagreement ends this request alone.
    if (absl::Status k = reported ? ReconcileKv(seq, batch.compacts[i]) : absl::OkStatus();
        !k.ok()) {
      FinishSequence(seq.id, k, 0);
      continue;
    }
    if (item.kind == WorkKind::kPrefill && item.completes_prompt) {
      // This request's own failure (solving or compacting its budgets): it ends alone.
      if (absl::Status s = AfterPrefill(seq, r); !s.ok()) {
        FinishSequence(seq.id, s, 0);
        continue;
      }
    }
    if (r.token >= 0) AcceptToken(seq, r.token, r.logprobs);  // may finish (and free) the sequence
  }
  return absl::OkStatus();
}

absl::Status Coordinator::AfterPrefill(Sequence& seq, const SequenceStepResult& r) {
  seq.prefill_done = clock_->Now();
  // one_pass / sampled: scoring ran inside this prefill; its compute time is the profile's cost.
  if (r.gains.has_value()) {
    seq.gains = *r.gains;
    seq.profile_ms += r.profile_ms;
  }
  if (!seq.compress) return absl::OkStatus();
  // reconstruct: the re-reading steps come first (AfterReread). A request that finishes with this
  // token never re-reads (the scheduler plans none for it).
  if (seq.reread_pending && seq.params.max_tokens > 1) return absl::OkStatus();
  seq.reread_pending = false;
  // one_pass / sampled-and-profiled: solve now, then compact
  if (!seq.compacted) RETURN_IF_ERROR(SolveAndCompact(seq));
  if (!seq.retention.has_value() && static_cast<int>(seq.gains.size()) == config_.n_layers) {
    seq.retention =
        RetentionOf(seq.gains, seq.budgets.budgets, RetentionDefinition(ToPolicyOptions(seq.kv)));
  }
  return absl::OkStatus();
}

absl::Status Coordinator::AfterReread(Sequence& seq, const WorkItem& item,
                                      const SequenceStepResult& r) {
  if (item.begin + 1 < static_cast<int64_t>(seq.reread_spans.size())) return absl::OkStatus();
  if (!r.gains.has_value()) {
    return absl::InternalError(
        absl::StrCat("request ", seq.id, ": the last re-reading step returned no gain curves"));
  }
  seq.gains = *r.gains;
  seq.reread_pending = false;
  RETURN_IF_ERROR(SolveAndCompact(seq));
  if (seq.budgets.head_budgets.empty()) {  // per-head budgets: the solver's own retention
    seq.retention =
        RetentionOf(seq.gains, seq.budgets.budgets, RetentionDefinition(ToPolicyOptions(seq.kv)));
  }
  return absl::OkStatus();
}

absl::Status Coordinator::SolveAndCompact(Sequence& seq) {
  const int64_t T = static_cast<int64_t>(seq.prompt.size());
  const int64_t P = T - std::min<int64_t>(options_.window, T);
  const absl::Time t0 = clock_->Now();
  const StepTimingLog::Clock::time_point t1 = StepTimingLog::Clock::now();
  if (!seq.budgets_known) {
    if (static_cast<int>(seq.gains.size()) != config_.n_layers) {
      return absl::InternalError(absl::StrCat("request ", seq.id, ": no gain curves to solve"));
    }
    ASSIGN_OR_RETURN(PolicyBudgets b, SolveFromGains(seq.gains, P, bytes_per_token_, seq.kv));
    RETURN_IF_ERROR(ApplyBudgets(seq, std::move(b), /*profiled=*/true, P));
  }
  const xkv::v1::CompactSpec spec = MakeCompactSpec(seq.budgets, seq.kv);
  seq.compacted = true;
  ++loop_compactions_;
  // The sizes it leaves are known (compaction_sizes.h): the ledger shrinks now and the stages
  // compact it ahead of the next step, which the loop plans and starts without waiting for them
  // (issue 13: other requests' decodes never wait for this one's compaction), per layer or per
  // (layer, KV head). Unreported sizes: the loop waits for the stages' answer.
  absl::StatusOr<std::vector<xkv::v1::LayerSize>> after =
      CompactedLayerSizes(seq.layers, seq.budgets.budgets, seq.budgets.head_budgets, T,
                          options_.window, options_.block_tokens);
  if (after.ok()) {
    RETURN_IF_ERROR(scheduler_->Compacted(seq.id, LayersHeld(*after)));
    compactions_.push_back({seq.id, driver_->StartCompact(seq.id, spec), *after});
    seq.layers = *std::move(after);
  } else {
    ASSIGN_OR_RETURN(seq.layers, driver_->Compact(seq.id, spec));
    RETURN_IF_ERROR(scheduler_->Compacted(seq.id, LayersHeld(seq.layers)));
  }
  seq.solve_ms += Ms(clock_->Now() - t0);
  loop_compact_ms_ += MsSince(t1);
  return absl::OkStatus();
}

void Coordinator::ApplyCompactions(bool wait) {
  std::lock_guard<std::mutex> driver_lock(driver_mu_);
  while (!compactions_.empty()) {
    if (!wait && !PipelineDriver::CompactDone(compactions_.front().handle)) return;
    const PendingCompaction c = std::move(compactions_.front());
    compactions_.pop_front();
    absl::StatusOr<std::vector<xkv::v1::LayerSize>> got = driver_->WaitCompact(c.handle);
    const absl::Status s = got.ok() ? CheckCompactedSizes(c.id, c.predicted, *got) : got.status();
    // A failure ends that request alone (FinishSequence ignores one that ended meanwhile).
    if (!s.ok()) FinishSequence(c.id, s, 0);
  }
}

// ---- KV ledger: what the stages hold, preemption ---------------------------------------------

absl::Status Coordinator::ReconcileKv(const Sequence& seq, bool compacted) {
  const std::vector<KvLayerHeld> held = LayersHeld(seq.layers);
  return compacted ? scheduler_->Compacted(seq.id, held) : scheduler_->CheckHeld(seq.id, held);
}

void Coordinator::Preempt(const Preemption& p) {
  Sequence* seq = Find(p.id);
  if (seq == nullptr) return;
  if (seq->started) ReleaseOnStages(seq->id);
  // The stages start it over from its prompt and the tokens it streamed (recompute): its budgets
  // stay, the chunk that ends its prompt compacts it again, and the token sampled after the
  // recomputed ones continues its stream where it stopped.
  seq->recompute = seq->prompt;
  seq->recompute.insert(seq->recompute.end(), seq->output_ids.begin(), seq->output_ids.end());
  seq->started = seq->compacted = false;
  // Its cache will hold the tokens it generated too: no re-reading (Scheduler::Preempt), the
  // prompt's chunk is compacted by its window's scores.
  if (seq->generated > 0) seq->reread_pending = false;
  std::fprintf(stderr,
               "xkv coordinator: preempted request %llu (a stage's KV pool is full); it "
               "recomputes %lld tokens when re-admitted\n",
               static_cast<unsigned long long>(seq->id), static_cast<long long>(p.tokens));
  if (static_cast<int64_t>(seq->recompute.size()) != p.tokens) {
    scheduler_->Cancel(seq->id);
    FinishSequence(seq->id,
                   absl::InternalError(absl::StrCat(
                       "request ", seq->id, " was preempted with ", seq->recompute.size(),
                       " tokens to recompute; the scheduler counts ", p.tokens)),
                   0);
  }
}

}  // namespace xkv
