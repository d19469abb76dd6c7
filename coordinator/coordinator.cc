// Coordinator lifecycle, submission, cancellation and admin operations (the step loop is in
// coordinator_step.cc).
#include "coordinator/coordinator.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "coordinator/coordinator_sequence.h"
#include "coordinator/request_validation.h"
#include "model/chat_template.h"
#include "model/stop_tokens.h"

namespace xkv {

Coordinator::Coordinator(const CoordinatorOptions& options)
    : options_(options),
      clock_(options.clock != nullptr ? options.clock : RealClock::Get()),
      kv_(options.kv) {}

absl::StatusOr<std::unique_ptr<Coordinator>> Coordinator::Start(
    const CoordinatorOptions& options, std::vector<std::unique_ptr<StageClient>> stages) {
  if (stages.empty()) return absl::InvalidArgumentError("coordinator: no stages");
  RETURN_IF_ERROR(ValidateSettings(options.kv));
  RETURN_IF_ERROR(ValidateRereadChunk(options.reread_chunk, "reread_chunk"));
  std::unique_ptr<Coordinator> c(new Coordinator(options));
  RETURN_IF_ERROR(c->Init(std::move(stages)));
  RETURN_IF_ERROR(c->CheckStagesHold(options.kv));
  c->stages_ready_ = absl::OkStatus();  // every stage was just loaded
  c->loop_ = std::thread([p = c.get()] { p->Loop(); });
  if (options.health_interval > absl::ZeroDuration()) {
    c->monitor_ = std::thread([p = c.get()] { p->Monitor(); });
  }
  return c;
}

ModelCostInputs Coordinator::CostInputs() const {
  ModelCostInputs m;
  const int L = config_.n_layers;
  m.weight_bytes.assign(L, 0);
  const int64_t bytes_per_token = bytes_per_token_.load();
  m.kv_bytes_per_token.assign(
      L, bytes_per_token > 0 ? bytes_per_token : config_.KvBytesPerTokenPerLayer(4));
  for (const GgufTensorInfo& t : file_->tensors()) {
    const int64_t bytes = t.NumElements() * 4;  // the CPU engine holds fp32 weights
    int layer = -1;
    if (absl::StartsWith(t.name, "blk.") && sscanf(t.name.c_str(), "blk.%d.", &layer) == 1 &&
        layer >= 0 && layer < L) {
      m.weight_bytes[layer] += bytes;
    } else if (t.name == "token_embd.weight") {
      m.first_stage_bytes += bytes;
      if (config_.tied_embeddings) m.last_stage_bytes += bytes;
    } else {
      m.last_stage_bytes += bytes;  // output_norm, output
    }
  }
  return m;
}

std::vector<double> Coordinator::KeptFractions() const {
  std::vector<double> f = store_->MeanFractions();
  for (double& x : f) x = std::clamp(x, 0.0, 1.0);
  return f;  // empty before the first profile: a full cache
}

absl::Status Coordinator::Init(std::vector<std::unique_ptr<StageClient>> stages) {
  // A prompt's final chunk holds the observation window (its queries are the XKV scores' input).
  if (options_.scheduler.prefill_chunk < options_.window) {
    return absl::InvalidArgumentError(
        absl::StrCat("prefill_chunk (", options_.scheduler.prefill_chunk,
                     ") must be >= the observation window w = ", options_.window));
  }
  RETURN_IF_ERROR(ValidatePoolKernel(options_.pool_kernel, "pool_kernel"));
  ASSIGN_OR_RETURN(file_, GgufFile::Open(options_.model_path));
  ASSIGN_OR_RETURN(config_, ReadModelConfig(*file_));
  ASSIGN_OR_RETURN(tokenizer_, Tokenizer::FromGguf(*file_));
  // A model without a known template still serves plain prompts; chat requests get the error.
  chat_template_ = ChatTemplate::ForModel(*file_, options_.chat_template);
  if (!options_.chat_template.empty()) RETURN_IF_ERROR(chat_template_.status());
  eos_tokens_ = StopTokens(*tokenizer_, chat_template_.ok() ? &*chat_template_ : nullptr);
  repeat_ = chat_template_.ok() ? MakeRepeatPrompt(*tokenizer_, *chat_template_)
                                : chat_template_.status();
  ASSIGN_OR_RETURN(store_, ProfileStore::Create({1.0, options_.seed, 0}));
  driver_ = std::make_unique<PipelineDriver>(std::move(stages));
  options_.planner.num_stages = driver_->num_stages();
  options_.planner.window = options_.window;
  options_.planner.block_tokens = options_.block_tokens;
  ASSIGN_OR_RETURN(plan_, PlanStages(CostInputs(), {}, options_.planner));
  RETURN_IF_ERROR(ReloadStages(plan_));
  SchedulerOptions so = options_.scheduler;
  so.kv = {options_.block_tokens, driver_->KvStages()};
  so.min_final_chunk = std::max(1, options_.window);
  ASSIGN_OR_RETURN(scheduler_, Scheduler::Create(so, clock_));
  return absl::OkStatus();
}

absl::Status Coordinator::ReloadStages(const StagePlan& plan) {
  StageLoadSettings s;
  s.model_path = options_.model_path;
  s.block_tokens = options_.block_tokens;
  s.kv_capacity_blocks = options_.kv_capacity_blocks;
  s.window = options_.window;
  s.pool_kernel = options_.pool_kernel;
  s.query_head_scores = options_.query_head_scores;
  s.link_timeout_ms = absl::ToInt64Milliseconds(options_.link_timeout);
  if (options_.nccl_unique_id_source) {
    ASSIGN_OR_RETURN(s.nccl_unique_id, options_.nccl_unique_id_source());
    if (s.nccl_unique_id.empty()) return absl::InternalError("the NCCL unique id is empty");
  }
  ++reloads_;  // odd while loading (Monitor ignores what it sees meanwhile)
  absl::Status loaded = driver_->LoadStages(plan, s);
  ++reloads_;
  RETURN_IF_ERROR(loaded);
  // The KV ledger follows the stages' pools (Init creates the scheduler after the first load).
  if (scheduler_ != nullptr) {
    RETURN_IF_ERROR(scheduler_->SetKvLayout({options_.block_tokens, driver_->KvStages()}));
  }
  const std::vector<StageState> states = driver_->stage_states();
  if (!states.empty() && states[0].block_bytes > 0) {
    bytes_per_token_ = states[0].block_bytes * states[0].head_tables / options_.block_tokens;
  }
  return absl::OkStatus();
}

Coordinator::~Coordinator() { ShutdownWithGrace(absl::ZeroDuration()); }

void Coordinator::ShutdownWithGrace(absl::Duration grace) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  if (scheduler_ == nullptr) return;  // Start failed in Init: no thread, no request
  // Nothing new runs: the queue is emptied (the loop ends those requests) and admission stops.
  DropQueued(absl::UnavailableError(
      "the server is shutting down; retry the request (on another replica or later)"));
  scheduler_->SetAdmitting(false);
  if (grace > absl::ZeroDuration() && !WaitIdle(grace)) {
    std::fprintf(stderr,
                 "xkv coordinator: %lld requests still running after the shutdown grace (%s); "
                 "cancelling them\n",
                 static_cast<long long>(scheduler_->running()),
                 absl::FormatDuration(grace).c_str());
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  monitor_wake_.notify_all();
  if (loop_.joinable()) loop_.join();
  if (monitor_.joinable()) monitor_.join();
  std::vector<uint64_t> left;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [id, seq] : sequences_) left.push_back(id);
  }
  // Loop thread gone: this thread now owns the sequences and the stage calls.
  for (uint64_t id : left) {
    FinishSequence(id,
                   absl::UnavailableError(absl::StrCat(
                       "the server shut down before the request finished (shutdown grace ",
                       absl::FormatDuration(grace), "); retry the request")),
                   0);
  }
  if (!left.empty()) {  // a quiet stop when nothing was cut (`xkv generate` ends this way)
    std::fprintf(stderr, "xkv coordinator: stopped (%zu requests cut at the end of the grace)\n",
                 left.size());
  }
  if (!unreleased_.empty()) {
    std::fprintf(stderr, "xkv coordinator: %zu sequences could not be released on a stage\n",
                 unreleased_.size());
  }
}

void Coordinator::DropQueued(const absl::Status& status) {
  std::lock_guard<std::mutex> lock(mu_);
  drop_status_ = status;
  for (const auto& [id, seq] : sequences_) {
    if (!seq->admitted_set) drop_queued_.push_back(id);
  }
  wake_.notify_all();
}

absl::Status Coordinator::Readiness() const {
  std::lock_guard<std::mutex> lock(mu_);
  if (stopping_) return absl::UnavailableError("the server is shutting down");
  if (draining_) return absl::UnavailableError("the server is draining (Admin Drain)");
  return stages_ready_;
}

absl::StatusOr<std::vector<int32_t>> Coordinator::Tokenize(const GenerateParams& p) const {
  if (!p.prompt_ids.empty()) {
    for (size_t i = 0; i < p.prompt_ids.size(); ++i) {
      if (p.prompt_ids[i] < 0 || p.prompt_ids[i] >= config_.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat("prompt token id ", p.prompt_ids[i], " at ",
                                                       i, " is outside the vocabulary [0, ",
                                                       config_.vocab_size, ")"));
      }
    }
    return p.prompt_ids;
  }
  if (!p.chat) return tokenizer_->Encode(p.prompt, /*parse_special=*/false);
  if (!chat_template_.ok()) return chat_template_.status();
  ASSIGN_OR_RETURN(std::string text,
                   chat_template_->Apply(p.messages, /*add_generation_prompt=*/true));
  return tokenizer_->Encode(text, /*parse_special=*/true);
}

absl::StatusOr<uint64_t> Coordinator::Submit(GenerateParams params,
                                             std::shared_ptr<GenerateSink> sink) {
  absl::StatusOr<uint64_t> id = SubmitImpl(std::move(params), std::move(sink));
  if (!id.ok() && options_.on_request_done) {
    RequestRecord r;
    r.code = id.status().code();
    options_.on_request_done(r);
  }
  return id;
}

absl::StatusOr<uint64_t> Coordinator::SubmitImpl(GenerateParams params,
                                                 std::shared_ptr<GenerateSink> sink) {
  if (params.max_tokens == 0) params.max_tokens = options_.default_max_tokens;
  RETURN_IF_ERROR(ValidateGenerateParams(params));
  KvSettings kv;
  {
    std::lock_guard<std::mutex> lock(mu_);
    kv = kv_;
  }
  ASSIGN_OR_RETURN(kv, ApplyOverride(kv, params.kv));
  RETURN_IF_ERROR(CheckStagesHold(kv));
  ASSIGN_OR_RETURN(std::vector<int32_t> ids, Tokenize(params));
  RETURN_IF_ERROR(ValidateTokenCounts(static_cast<int64_t>(ids.size()), params.max_tokens,
                                      config_.context_length));
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_ || draining_) {
      return absl::UnavailableError(
          absl::StrCat("the server is ", stopping_ ? "shutting down" : "draining",
                       " and admits no request; retry on another replica or later"));
    }
    if (!stages_ready_.ok()) {
      return absl::UnavailableError(absl::StrCat(stages_ready_.message(), "; retry later"));
    }
  }
  auto seq = std::make_unique<Sequence>();
  seq->params = std::move(params);
  seq->kv = kv;
  seq->prompt = std::move(ids);
  seq->sink = std::move(sink);
  seq->stop = std::make_unique<StopMatcher>(seq->params.stop);
  seq->submitted = clock_->Now();
  const int64_t T = static_cast<int64_t>(seq->prompt.size());
  const bool compress = kv.policy != PolicyKind::kFull && T > options_.window;
  seq->compress = compress;
  if (compress) RETURN_IF_ERROR(PlanBudgetsAtSubmit(*seq));
  SequenceSpec spec = SpecFor(*seq);
  std::lock_guard<std::mutex> lock(mu_);
  if (stopping_) return absl::UnavailableError("the server is shutting down; retry later");
  spec.id = seq->id = next_id_++;
  sequences_[spec.id] = std::move(seq);  // before the scheduler can admit it
  if (absl::Status s = scheduler_->Submit(spec); !s.ok()) {
    sequences_.erase(spec.id);
    return s;
  }
  work_ = true;
  wake_.notify_all();
  return spec.id;
}

SequenceSpec Coordinator::SpecFor(const Sequence& seq) const {
  SequenceSpec spec;
  spec.id = seq.id;
  spec.prompt_tokens = static_cast<int64_t>(seq.prompt.size());
  spec.max_new_tokens = seq.params.max_tokens;
  spec.needs_profile = seq.needs_profile_pass;
  for (const std::vector<int32_t>& in : seq.reread_inputs) {
    spec.reread_tokens.push_back(static_cast<int64_t>(in.size()));
  }
  spec.deadline = seq.params.deadline;
  return spec;
}

absl::Status Coordinator::CheckStagesHold(const KvSettings& kv) const {
  RETURN_IF_ERROR(CheckHeadWeights(kv));
  if (!PerHeadBudgets(kv.allocator)) return absl::OkStatus();
  const std::vector<StageState> states = driver_->stage_states();
  for (size_t s = 0; s < states.size(); ++s) {
    if (states[s].head_tables == config_.n_kv_heads) continue;
    return absl::InvalidArgumentError(absl::StrCat(
        "per-head budgets (per_head 1, allocator heads) need stages that hold a count per KV head; "
        "stage ",
        s, " (", states[s].address,
        ") keeps one per layer (StageEngine::supports_per_head_kv); allowed "
        "here: per_head 0 with allocator global or paper"));
  }
  return absl::OkStatus();
}

absl::Status Coordinator::ClampBudgets(const Sequence& seq, std::vector<int64_t>& budgets) const {
  const int64_t T = static_cast<int64_t>(seq.prompt.size());
  const int64_t P = T - std::min<int64_t>(options_.window, T);
  if (static_cast<int>(budgets.size()) != config_.n_layers) {
    return absl::InternalError(absl::StrCat("the KV budgets name ", budgets.size(),
                                            " layers; the model has ", config_.n_layers));
  }
  for (size_t l = 0; l < budgets.size(); ++l) {
    if (budgets[l] < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("the request's KV spec (", TargetName(seq.kv.target), ") gives layer ", l,
                       " a budget of ", budgets[l], " tokens; budgets must be >= 0"));
    }
    budgets[l] = std::min(budgets[l], P);
  }
  return absl::OkStatus();
}

// Sampled mode decides here whether this request is profiled; unprofiled ones get the running
// mean's budgets up front, baselines their policy budgets; xkv per_request runs a scores-only pass.
absl::Status Coordinator::PlanBudgetsAtSubmit(Sequence& seq) {
  const int64_t T = static_cast<int64_t>(seq.prompt.size());
  const int64_t P = T - std::min<int64_t>(options_.window, T);
  if (seq.kv.profile.kind == ProfileModeKind::kReconstruct) RETURN_IF_ERROR(PlanRereads(seq));
  if (!NeedsProfile(seq.kv.policy)) {
    ASSIGN_OR_RETURN(seq.budgets, BudgetsUpFront(config_.n_layers, P, bytes_per_token_, seq.kv));
    RETURN_IF_ERROR(ClampBudgets(seq, seq.budgets.budgets));
    seq.budgets_known = true;
    return absl::OkStatus();
  }
  switch (seq.kv.profile.kind) {
    case ProfileModeKind::kPerRequest:
      // A scores-only pass keeps no KV, so it cannot be split into chunks: a prompt longer than
      // one step (--max-batched-tokens) is profiled one_pass-style instead, by its chunked
      // prefill whose final chunk observes the window (architecture.md §3.5).
      seq.needs_profile_pass = T <= options_.scheduler.step_token_budget;
      return absl::OkStatus();
    case ProfileModeKind::kOnePass:
      return absl::OkStatus();
    case ProfileModeKind::kSampled:
      // The n-th sampled request's decision (its id is assigned later, under the lock).
      if (store_->ShouldProfile(sample_counter_++, seq.kv.profile.sample_rate)) {
        return absl::OkStatus();
      }
      break;
    case ProfileModeKind::kReconstruct:  // the re-reading steps (PlanRereads) give the gains
      return absl::OkStatus();
  }
  absl::StatusOr<PolicyBudgets> b =
      SampledBudgets(*store_, seq.kv, {config_.n_layers, P, bytes_per_token_});
  if (!b.ok() || !ClampBudgets(seq, b->budgets).ok()) {
    return absl::OkStatus();  // no usable mean yet: profile this one
  }
  seq.budgets = *std::move(b);
  seq.budgets_known = true;
  return absl::OkStatus();
}

ReconstructOptions Coordinator::RereadOptions() const {
  ReconstructOptions reread;
  reread.chunk_tokens = options_.reread_chunk;
  return reread;
}

int64_t Coordinator::RereadChunk() const {
  if (!repeat_.ok()) return 0;
  return std::max<int64_t>(
      0, RereadChunkTokens(*repeat_, RereadOptions(), options_.scheduler.step_token_budget));
}

absl::Status Coordinator::PlanRereads(Sequence& seq) const {
  if (!repeat_.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "profile mode reconstruct re-reads the prompt after a repeat instruction in ",
        "the model's chat template, which is unavailable: ", repeat_.status().message(),
        "; use per_request, one_pass or sampled:<rate>"));
  }
  const RepeatPrompt& r = *repeat_;
  const ReconstructOptions reread = RereadOptions();
  const int64_t T = static_cast<int64_t>(seq.prompt.size());
  // Each re-reading step (instruction, overlap, suffix, then the chunk) fits one step's tokens.
  const int64_t budget = options_.scheduler.step_token_budget;
  const int64_t chunk = RereadChunkTokens(r, reread, budget);
  if (chunk < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("profile mode reconstruct needs steps of more than ", budget - chunk,
                     " tokens (the repeat instruction); --max-batched-tokens is ", budget));
  }
  for (int64_t b = 0; b < T; b += chunk) {
    const int64_t e = std::min(T, b + chunk);
    std::vector<int32_t> in = RereadInput(seq.prompt, b, e, r, reread.overlap);
    if (config_.context_length > 0 &&
        T + static_cast<int64_t>(in.size()) > config_.context_length) {
      return absl::InvalidArgumentError(absl::StrCat(
          "profile mode reconstruct re-reads the ", T, "-token prompt after it, ", in.size(),
          " tokens at a time: past the model's context of ", config_.context_length,
          " tokens; use a shorter prompt or another profile mode"));
    }
    seq.reread_inputs.push_back(std::move(in));
    seq.reread_spans.push_back({b, e, reread.sinks});
  }
  seq.reread_pending = true;
  return absl::OkStatus();
}

void Coordinator::Cancel(uint64_t id, absl::Status status) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!sequences_.contains(id)) return;
  cancels_.emplace_back(id, std::move(status));
  wake_.notify_all();
}

absl::StatusOr<double> Coordinator::SetRetentionTarget(double retention) {
  RETURN_IF_ERROR(ValidateRetention(retention));
  std::lock_guard<std::mutex> lock(mu_);
  const double previous = kv_.target.kind == KvTarget::Kind::kRetention ? kv_.target.value : 0.0;
  kv_.target = {KvTarget::Kind::kRetention, retention};
  if (kv_.policy != PolicyKind::kFull) kv_.policy = PolicyKind::kXkv;
  return previous;
}

absl::Status Coordinator::SetPolicy(const KvPolicyOverride& policy) {
  RETURN_IF_ERROR(ValidateKvOverride(policy));
  std::lock_guard<std::mutex> lock(mu_);
  ASSIGN_OR_RETURN(KvSettings next, ApplyOverride(kv_, policy));
  RETURN_IF_ERROR(CheckStagesHold(next));
  kv_ = next;
  return absl::OkStatus();
}

}  // namespace xkv
