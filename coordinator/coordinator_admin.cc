// Admin operations of the coordinator: configuration, live allocation profile, cluster status,
// re-planning the stages and draining.
#include <algorithm>
#include <chrono>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "coordinator/coordinator.h"
#include "coordinator/coordinator_sequence.h"

namespace xkv {
namespace {

void TargetToProto(const KvSettings& kv, xkv::v1::KvPolicySpec* out) {
  out->set_policy(std::string(PolicyName(kv.policy)));
  out->set_profile_mode(ProfileModeName(kv.profile));
  out->set_allocator(std::string(AllocatorName(kv.allocator.kind)));
  out->set_floor(kv.allocator.floor);
  out->set_cap(kv.allocator.cap);
  out->set_per_head(kv.allocator.per_head);
  switch (kv.target.kind) {
    case KvTarget::Kind::kRetention:
      out->set_retention(kv.target.value);
      break;
    case KvTarget::Kind::kTokens:
      out->set_budget_tokens(kv.target.amount);
      break;
    case KvTarget::Kind::kBytes:
      out->set_budget_bytes(kv.target.amount);
      break;
    case KvTarget::Kind::kFraction:
      out->set_budget_fraction(kv.target.value);
      break;
  }
}

void PlanToProto(const StagePlan& plan,
                 google::protobuf::RepeatedPtrField<xkv::v1::StageRange>* out) {
  for (const StageRange& r : plan.stages) {
    xkv::v1::StageRange* p = out->Add();
    p->set_layer_begin(r.layer_begin);
    p->set_layer_end(r.layer_end);
    p->set_cost_bytes(static_cast<double>(r.cost));
  }
}

}  // namespace

xkv::v1::ServiceConfig Coordinator::GetConfig() const {
  xkv::v1::ServiceConfig c;
  c.set_model_path(options_.model_path);
  c.set_model_name(config_.name);
  c.set_n_layers(config_.n_layers);
  {
    std::lock_guard<std::mutex> lock(mu_);
    TargetToProto(kv_, c.mutable_default_policy());
    c.set_num_stages(static_cast<int>(plan_.stages.size()));
    c.set_pool_kernel(MakeSequenceScoring(kv_, ScoringBase()).pool_kernel());  // its policy's
  }
  c.set_window(options_.window);
  c.set_block_tokens(options_.block_tokens);
  c.set_max_batch(static_cast<int>(scheduler_->options().max_running));
  c.set_max_queue(static_cast<int>(scheduler_->options().max_queue));
  c.set_default_max_tokens(static_cast<int>(options_.default_max_tokens));
  {
    std::lock_guard<std::mutex> lock(mu_);
    c.set_draining(draining_ || stopping_);
  }
  return c;
}

xkv::v1::GetAllocationResponse Coordinator::GetAllocation() const {
  xkv::v1::GetAllocationResponse r;
  std::lock_guard<std::mutex> lock(mu_);
  r.set_policy(std::string(PolicyName(kv_.policy)));
  TargetToProto(kv_, r.mutable_target());
  r.set_profile_mode(ProfileModeName(kv_.profile));
  r.set_samples(store_->num_samples());
  const std::vector<double> fractions = store_->MeanFractions();
  for (size_t l = 0; l < fractions.size(); ++l) {
    xkv::v1::LayerAllocationStat* s = r.add_layers();
    s->set_layer(static_cast<int>(l));
    s->set_mean_kept_fraction(fractions[l]);
    if (l < mean_kept_tokens_.size()) s->set_mean_kept_tokens(mean_kept_tokens_[l]);
  }
  return r;
}

absl::StatusOr<std::vector<int64_t>> Coordinator::PredictedStageKvBytes() const {
  struct Load {
    int64_t requests = 0, prompt_tokens = 0, new_tokens = 0;
  };
  Load loads[2];  // [0] a full cache, [1] compressed
  StagePlan plan;
  {
    std::lock_guard<std::mutex> lock(mu_);
    plan = plan_;
    for (const auto& [id, seq] : sequences_) {
      if (!seq->admitted_set) continue;
      Load& l = loads[seq->compress ? 1 : 0];
      ++l.requests;
      l.prompt_tokens += static_cast<int64_t>(seq->prompt.size());
      // The newest token enters the cache with the next step.
      l.new_tokens += std::max<int64_t>(seq->generated - 1, 0);
    }
  }
  const ModelCostInputs model = CostInputs();
  const std::vector<double> kept = KeptFractions();
  std::vector<int64_t> layer_bytes(model.weight_bytes.size(), 0);
  for (int compressed = 0; compressed < 2; ++compressed) {
    const Load& l = loads[compressed];
    if (l.requests == 0) continue;
    StagePlannerOptions o = options_.planner;
    o.concurrency = l.requests;
    o.expected_prompt_tokens = (l.prompt_tokens + l.requests / 2) / l.requests;
    o.expected_new_tokens = (l.new_tokens + l.requests / 2) / l.requests;
    ASSIGN_OR_RETURN(
        std::vector<int64_t> bytes,
        ExpectedKvBytes(model, compressed ? absl::MakeConstSpan(kept) : absl::Span<const double>(),
                        o));
    for (size_t i = 0; i < bytes.size(); ++i) layer_bytes[i] += bytes[i];
  }
  std::vector<int64_t> stages;
  for (const StageRange& s : plan.stages) {
    int64_t sum = 0;
    for (int i = s.layer_begin; i < s.layer_end; ++i) sum += layer_bytes[i];
    stages.push_back(sum);
  }
  return stages;
}

int64_t Coordinator::PrefillingRequests() const {
  std::lock_guard<std::mutex> lock(mu_);
  int64_t n = 0;
  for (const auto& [id, seq] : sequences_) n += seq->admitted_set && seq->generated == 0;
  return n;
}

xkv::v1::GetClusterStatusResponse Coordinator::GetClusterStatus() {
  xkv::v1::GetClusterStatusResponse r;
  const absl::StatusOr<std::vector<int64_t>> predicted = PredictedStageKvBytes();
  std::vector<absl::StatusOr<xkv::v1::StatusResponse>> statuses = driver_->Status();
  const std::vector<StageState> states = driver_->stage_states();
  for (size_t s = 0; s < statuses.size(); ++s) {
    xkv::v1::StageStatus* out = r.add_stages();
    out->set_index(static_cast<int>(s));
    if (s < states.size()) {
      out->set_address(states[s].address);
      out->set_layer_begin(states[s].layer_begin);
      out->set_layer_end(states[s].layer_end);
      out->set_weight_bytes(states[s].weight_bytes);
    }
    if (!statuses[s].ok()) {
      out->set_health(xkv::v1::HEALTH_STATE_UNREACHABLE);
      out->set_message(std::string(statuses[s].status().message()));
      continue;
    }
    const xkv::v1::StatusResponse& st = *statuses[s];
    out->set_layer_begin(st.layer_begin());
    out->set_layer_end(st.layer_end());
    out->set_weight_bytes(st.weight_bytes());
    if (predicted.ok() && s < predicted->size()) out->set_kv_bytes_predicted((*predicted)[s]);
    out->set_kv_bytes_used(st.usage().kv_bytes_used());
    out->set_kv_bytes_capacity(st.usage().kv_bytes_capacity());
    out->set_blocks_used(st.usage().blocks_used());
    out->set_blocks_free(st.usage().blocks_free());
    out->set_device(st.device());
    out->set_message(st.message());
    out->set_health(st.health() == xkv::v1::STAGE_HEALTH_SERVING
                        ? xkv::v1::HEALTH_STATE_SERVING
                        : xkv::v1::HEALTH_STATE_NOT_SERVING);
  }
  r.set_running_requests(static_cast<int>(scheduler_->running()));
  r.set_queued_requests(static_cast<int>(scheduler_->queued()));
  std::lock_guard<std::mutex> lock(mu_);
  r.set_draining(draining_ || stopping_);
  return r;
}

bool Coordinator::WaitIdle(absl::Duration timeout) {
  // Short waits: the scheduler's count is not guarded by mu_, so a wakeup may slip past.
  const absl::Time deadline = absl::Now() + timeout;
  std::unique_lock<std::mutex> lock(mu_);
  while (scheduler_->running() != 0) {
    if (absl::Now() >= deadline) return false;
    drained_.wait_for(lock, std::chrono::milliseconds(50));
  }
  return true;
}

absl::StatusOr<xkv::v1::ReplanResponse> Coordinator::Replan(bool dry_run) {
  xkv::v1::ReplanResponse r;
  StagePlan current;
  {
    std::lock_guard<std::mutex> lock(mu_);
    current = plan_;
  }
  ASSIGN_OR_RETURN(StagePlan next, PlanStages(CostInputs(), KeptFractions(), options_.planner));
  ASSIGN_OR_RETURN(StagePlan recosted,
                   RecostPlan(current, CostInputs(), KeptFractions(), options_.planner));
  PlanToProto(recosted, r.mutable_previous());
  PlanToProto(next, r.mutable_planned());
  if (DescribePlan(next) == DescribePlan(current)) {
    r.set_message("the current plan is already optimal for the live profile");
    return r;
  }
  if (dry_run) {
    r.set_message("dry run: nothing changed");
    return r;
  }
  scheduler_->SetAdmitting(false);
  const bool idle = WaitIdle(absl::Minutes(2));
  absl::Status loaded = absl::OkStatus();
  if (idle) {
    std::lock_guard<std::mutex> driver_lock(driver_mu_);
    loaded = ReloadStages(next);
    if (loaded.ok()) {
      std::lock_guard<std::mutex> lock(mu_);
      plan_ = next;
    }
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!draining_ && !stopping_) scheduler_->SetAdmitting(true);
  }
  if (!idle) return absl::DeadlineExceededError("re-plan: running requests did not drain");
  RETURN_IF_ERROR(loaded);
  r.set_applied(true);
  r.set_message(absl::StrCat("stages reloaded: ", DescribePlan(next)));
  return r;
}

void Coordinator::MaybeAutoReplan() {
  if (!options_.auto_replan || store_->num_samples() == last_replan_samples_) return;
  last_replan_samples_ = store_->num_samples();
  StagePlan current;
  {
    std::lock_guard<std::mutex> lock(mu_);
    current = plan_;
  }
  StagePlan next;
  absl::StatusOr<bool> shifted =
      ShouldReplan(current, CostInputs(), KeptFractions(), options_.planner, &next);
  if (!shifted.ok() || !*shifted) return;
  std::lock_guard<std::mutex> driver_lock(driver_mu_);
  if (ReloadStages(next).ok()) {
    std::lock_guard<std::mutex> lock(mu_);
    plan_ = next;
  }
}

xkv::v1::DrainResponse Coordinator::Drain(bool resume, int64_t timeout_ms) {
  xkv::v1::DrainResponse r;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) resume = false;
    draining_ = !resume;
    scheduler_->SetAdmitting(resume);
  }
  // Waiting requests would only wait for the resume: they get UNAVAILABLE now, like new ones.
  if (!resume) {
    DropQueued(absl::UnavailableError(
        "the server is draining and admits no request; retry on another replica or later"));
  }
  bool drained = scheduler_->running() == 0;
  if (!resume && !drained && timeout_ms > 0) drained = WaitIdle(absl::Milliseconds(timeout_ms));
  r.set_drained(drained);
  r.set_running_requests(static_cast<int>(scheduler_->running()));
  r.set_queued_requests(static_cast<int>(scheduler_->queued()));
  return r;
}

}  // namespace xkv
