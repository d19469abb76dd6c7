#include "worker/stage_executor.h"

#include <algorithm>
#include <string>
#include <utility>

#include "absl/algorithm/container.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "model/cpu_stage_engine.h"
#include "model/gguf.h"
#include "model/kv_allocation.h"
#include "model/model_config.h"
#include "worker/stage_engine_factory.h"
#include "worker/step_fields.h"

namespace xkv {
namespace {

double MsSince(absl::Time t0) { return absl::ToDoubleMilliseconds(absl::Now() - t0); }

using step_fields::FindBudget;
using step_fields::NewTokens;
using step_fields::Observed;
using step_fields::Rereads;
using step_fields::Samples;
using step_fields::SamplingOf;
using step_fields::ScoresOnly;
using step_fields::ScoresWindow;
using step_fields::ScoringOf;
using xkv::v1::CompactSpec;
using xkv::v1::StepRequest;
using xkv::v1::StepSequence;

}  // namespace

void StageExecutor::SetLogprobs(const std::optional<SampledLogprobs>& logprobs,
                                xkv::v1::SequenceResult& r) {
  if (!logprobs.has_value()) return;
  r.set_logprob(logprobs->token.logprob);
  for (const TokenLogprob& t : logprobs->top) {
    r.add_top_ids(t.id);
    r.add_top_logprobs(t.logprob);
  }
}

void StageExecutor::FillDeviceDraw(const Sequence& q, RowSampling& r) {
  const SamplingParams& p = *q.device_params;
  r.params = p;
  r.draws = q.draws;
  for (const auto& [id, n] : q.counts) {  // the same sum as Sampler::Sample's
    r.penalties.emplace_back(id, p.presence_penalty + p.frequency_penalty * n);
  }
}

// One step in flight. Its hidden rows stay inside the engine (StageEngine's resident path).
struct StageExecutor::Run {
  EngineStep batch;
  std::vector<EngineObservation> observations;
  bool scores_only = false;
  bool sent = false;
  xkv::v1::StepResponse result;
};

absl::StatusOr<std::unique_ptr<StageExecutor>> StageExecutor::Load(
    const StageOptions& options, std::unique_ptr<StageLink> link) {
  ASSIGN_OR_RETURN(std::unique_ptr<StageEngine> engine, LoadStageEngine(options));
  const StageOptions o = StageOptionsForEngine(options, *engine);
  return Create(std::move(engine), o, std::move(link));
}

absl::StatusOr<std::unique_ptr<StageExecutor>> StageExecutor::Create(
    std::shared_ptr<const LlamaWeights> weights, const StageOptions& options,
    std::unique_ptr<StageLink> link) {
  if (weights == nullptr) return absl::InvalidArgumentError("stage: no weights");
  StageOptions o = options;
  if (o.layer_end < 0) o.layer_end = weights->config.n_layers;
  if (o.layer_begin != weights->layer_begin || o.layer_end != weights->layer_end) {
    return absl::InvalidArgumentError(absl::StrCat(
        "stage: layers [", o.layer_begin, ", ", o.layer_end, ") but the weights hold [",
        weights->layer_begin, ", ", weights->layer_end, ")"));
  }
  if (o.layer_begin >= o.layer_end) {
    return absl::InvalidArgumentError("stage: empty layer range");
  }
  const bool first = o.layer_begin == 0, last = o.layer_end == weights->config.n_layers;
  const bool has_head = weights->lm_head != nullptr || weights->lm_head_q != nullptr;
  if ((first && weights->embedding == nullptr) || (last && !has_head)) {
    return absl::InvalidArgumentError(
        "stage: the first stage needs the embedding, the last the "
        "lm_head");
  }
  ASSIGN_OR_RETURN(std::unique_ptr<CpuStageEngine> engine,
                   CpuStageEngine::Create(weights, LlamaModelOptions{o.num_threads, o.numerics}));
  return Create(std::move(engine), o, std::move(link));
}

absl::StatusOr<std::unique_ptr<StageExecutor>> StageExecutor::Create(
    std::unique_ptr<StageEngine> engine, const StageOptions& options,
    std::unique_ptr<StageLink> link) {
  if (engine == nullptr) return absl::InvalidArgumentError("stage: no engine");
  StageOptions o = options;
  o.layer_begin = engine->layer_begin();
  o.layer_end = engine->layer_end();
  o.device = engine->device();
  if (o.block_tokens < 1) return absl::InvalidArgumentError("stage: block_tokens must be >= 1");
  const int num_layers = o.layer_end - o.layer_begin;
  const int64_t block_bytes = int64_t{o.block_tokens} * engine->kv_bytes_per_token();
  ASSIGN_OR_RETURN(const int64_t capacity, KvPoolCapacity(o, num_layers, block_bytes));
  // Per-head tables: the same bytes in blocks of one KV head (architecture.md §5).
  const int heads =
      o.per_head_tables && engine->supports_per_head_kv() ? engine->config().n_kv_heads : 1;
  ASSIGN_OR_RETURN(BlockPool pool, BlockPool::Create({o.layer_begin, num_layers, capacity * heads,
                                                      o.block_tokens, block_bytes / heads, heads}));
  if (link != nullptr) link->AcceptDeviceRows(engine->device_resident());
  return std::unique_ptr<StageExecutor>(
      new StageExecutor(o, std::move(engine), std::move(link), std::move(pool)));
}

StageExecutor::StageExecutor(const StageOptions& options, std::unique_ptr<StageEngine> engine,
                             std::unique_ptr<StageLink> link, BlockPool pool)
    : options_(options),
      engine_(std::move(engine)),
      link_(std::move(link)),
      weight_bytes_(engine_->weight_bytes()),
      block_bytes_(pool.block_bytes()),
      capacity_blocks_(pool.capacity()),
      head_tables_(pool.head_tables()),
      pool_(std::move(pool)) {
  absl::MutexLock lock(&mu_);
  RefreshStatus();
}

StageExecutor::~StageExecutor() = default;

xkv::v1::LoadStageResponse StageExecutor::Description() const {
  xkv::v1::LoadStageResponse r;
  const ModelConfig& c = config();
  xkv::v1::ModelInfo* m = r.mutable_model();
  m->set_name(c.name);
  m->set_n_layers(c.n_layers);
  m->set_hidden(c.hidden);
  m->set_n_heads(c.n_heads);
  m->set_n_kv_heads(c.n_kv_heads);
  m->set_head_dim(c.head_dim);
  m->set_vocab_size(c.vocab_size);
  m->set_context_length(c.context_length);
  m->set_bos_token(c.bos_token);
  m->set_eos_token(c.eos_token);
  m->set_kv_bytes_per_token_per_layer(c.KvBytesPerTokenPerLayer(sizeof(float)));
  r.set_weight_bytes(weight_bytes_);
  r.set_stage_capacity_blocks(capacity_blocks_);
  r.set_kv_capacity_bytes(capacity_blocks_ * block_bytes_);
  r.set_block_tokens(block_tokens());
  r.set_block_bytes(block_bytes_);
  r.set_head_tables(head_tables());
  return r;
}

// ---- the step ------------------------------------------------------------------------------

absl::StatusOr<xkv::v1::StepResponse> StageExecutor::Step(const StepRequest& step) {
  RETURN_IF_ERROR(CheckFields(step));  // refused at the edge: nothing reaches the link
  absl::MutexLock lock(&mu_);
  if (AheadMatches(step)) return AdoptAhead(step);
  const bool undone = ahead_ != nullptr;
  DiscardAhead(&step);
  const absl::Time t0 = absl::Now();
  absl::Status valid = ValidateStep(step);
  absl::StatusOr<BlockPlan> plan = valid.ok() ? PlanBlocks(step) : valid;
  Run run;
  run.result.set_step_id(step.step_id());
  xkv::v1::StepTimings& timings = *run.result.mutable_timings();
  timings.set_lookahead_undone(undone);
  if (step.dry_run()) {
    if (!plan.ok()) return plan.status();
    *run.result.mutable_usage() = Usage();
    return std::move(run.result);
  }
  if (!plan.ok()) return FailBeforeCompute(step, plan.status(), /*received=*/false);
  if (absl::Status in = InputRows(step, run); !in.ok()) {
    return FailBeforeCompute(step, in, /*received=*/true);
  }
  // Same version: nothing ran in between (mu_ held); a failure still tells the next stage.
  if (absl::Status c = pool_.Commit(*plan); !c.ok()) return FailBeforeCompute(step, c, true);
  absl::Status s = Compute(step, run);
  if (s.ok()) s = Output(step, run);
  const absl::Time tc = absl::Now();
  for (const StepSequence& q : step.sequences()) {
    if (!s.ok()) break;
    if (q.has_compact()) {
      s = CompactSequence(q.seq_id(), sequences_.at(q.seq_id()), q.compact());
    }
  }
  timings.set_compact_ms(MsSince(tc));
  for (const StepSequence& q : step.sequences()) {
    if (s.ok() && !run.scores_only) s = SyncBlocks(q.seq_id());
  }
  if (!s.ok()) {
    for (const StepSequence& q : step.sequences()) Drop(q.seq_id());
    if (!is_last() && !run.sent && link_ != nullptr) {
      link_->SendError(step.step_id(), s).IgnoreError();
    }
    RefreshStatus();
    return s;
  }
  for (int i = 0; i < step.sequences_size(); ++i) {
    LayerSizes(step.sequences(i).seq_id(), run.result.mutable_sequences(i)->mutable_layers());
  }
  *run.result.mutable_usage() = Usage();
  timings.set_total_ms(MsSince(t0));
  RefreshStatus();
  if (options_.lookahead) {  // after the answer's sizes: they are this step's
    std::vector<int32_t> sampled;
    for (const xkv::v1::SequenceResult& r : run.result.sequences()) sampled.push_back(r.token());
    QueueAhead(step, &sampled, nullptr, run.result);
  }
  return std::move(run.result);
}

absl::Status StageExecutor::FailBeforeCompute(const StepRequest& step, absl::Status error,
                                              bool received) {
  if (link_ != nullptr) {
    if (!is_first() && !received) link_->Discard(step.step_id());
    if (!is_last()) link_->SendError(step.step_id(), error).IgnoreError();
  }
  return error;
}

absl::Status StageExecutor::InputRows(const StepRequest& step, Run& run) {
  const absl::Time t0 = absl::Now();
  std::vector<int32_t> tokens;
  int64_t n = 0;
  for (const StepSequence& s : step.sequences()) {
    n += NewTokens(s);
    if (is_first()) tokens.insert(tokens.end(), s.tokens().begin(), s.tokens().end());
  }
  if (is_first()) return engine_->EmbedResident(tokens);
  if (link_ == nullptr) {
    return absl::FailedPreconditionError("stage: not the first stage and no link to receive from");
  }
  const absl::Duration timeout = step.link_timeout_ms() > 0
                                     ? absl::Milliseconds(step.link_timeout_ms())
                                     : options_.link_timeout;
  absl::StatusOr<StageRows> rows = link_->ReceiveRows(step.step_id(), t0 + timeout);
  run.result.mutable_timings()->set_wait_ms(MsSince(t0));
  RETURN_IF_ERROR(rows.status());
  if (rows->device.has_value()) {
    const DeviceRows& d = *rows->device;
    if (d.rows != n || d.width != config().hidden) {
      return absl::InvalidArgumentError(
          absl::StrCat("stage: step ", step.step_id(), " received device rows [", d.rows, ", ",
                       d.width, "], want [", n, ", ", config().hidden, "]"));
    }
    return engine_->LoadResidentDevice(d);
  }
  if (static_cast<int64_t>(rows->host.size()) != n * config().hidden) {
    return absl::InvalidArgumentError(absl::StrCat("stage: step ", step.step_id(), " received ",
                                                   rows->host.size(), " floats, want ", n, " x ",
                                                   config().hidden));
  }
  return engine_->LoadResident(std::move(rows->host));
}

// Device rows when both this engine and the link's far end keep rows on a device, else host fp32.
absl::Status StageExecutor::SendRows(const StepRequest& step) {
  if (engine_->device_resident() && link_->SendsDeviceRows()) {
    ASSIGN_OR_RETURN(DeviceRows rows, engine_->ExportResident(link_->device_dtype()));
    return link_->SendDevice(step.step_id(), rows);
  }
  ASSIGN_OR_RETURN(absl::Span<const float> rows, engine_->ResidentHost());
  return link_->Send(step.step_id(), rows);
}

absl::Status StageExecutor::Compute(const StepRequest& step, Run& run) {
  run.scores_only = ScoresOnly(step.sequences(0));
  run.batch.scores_only = run.scores_only;
  for (const StepSequence& s : step.sequences()) {
    xkv::v1::SequenceResult* r = run.result.add_sequences();
    r->set_seq_id(s.seq_id());
    r->set_token(-1);
    Sequence& q = sequences_[s.seq_id()];  // known from now on (dropped again if the step fails)
    if (is_last() && q.sampler == nullptr && !ScoresOnly(s) &&
        SamplingOf(s).repetition_penalty != 1.f) {
      q.context.insert(q.context.end(), s.tokens().begin(), s.tokens().end());
    }
    EngineSequenceStep e{s.seq_id(), NewTokens(s), s.position(), ScoresWindow(s)};
    if (Rereads(s)) e.reread = RereadSpan{s.reread().chunk_begin(), s.reread().chunk_end()};
    if (ScoresWindow(s)) e.scoring = ScoringOf(s, options_.importance);
    e.replayed_decodes = s.replayed_decodes();
    run.batch.sequences.push_back(e);
  }
  const absl::Time t0 = absl::Now();
  RETURN_IF_ERROR(engine_->RunLayersResident(run.batch, options_.importance, &run.observations));
  run.result.mutable_timings()->set_compute_ms(MsSince(t0));
  return Observe(step, run);
}

absl::StatusOr<std::optional<CollectedScores>> StageExecutor::Reread(
    const StepSequence& s, EngineObservation& observation) {
  Sequence& q = sequences_.at(s.seq_id());
  const RereadSpan span{s.reread().chunk_begin(), s.reread().chunk_end()};
  if (!q.reread.has_value()) {
    q.reread = EmptyReconstructScores(layer_begin(), layer_end(), config().n_kv_heads, s.position(),
                                      span.sinks);
  }
  RETURN_IF_ERROR(AccumulateReread(observation.reread, span, &*q.reread));
  if (!s.reread().last()) return std::optional<CollectedScores>();
  // The re-reading's scores alone, unpooled (xkv eval's profile=reconstruct; the window's scores
  // max-merged in, its mix=max, scored lower on the dev split: docs/quality-reconstruct.md).
  ImportanceOptions unpooled = ScoringOf(s, options_.importance);
  unpooled.pool_kernel = kRereadPoolKernel;
  ASSIGN_OR_RETURN(CollectedScores scores,
                   ReconstructCollectedScores(*q.reread, s.position(), config(), unpooled));
  q.reread.reset();
  return std::optional<CollectedScores>(std::move(scores));
}

absl::Status StageExecutor::Observe(const StepRequest& step, Run& run) {
  for (int i = 0; i < step.sequences_size(); ++i) {
    const StepSequence& s = step.sequences(i);
    if (!Observed(s)) continue;
    if (i >= static_cast<int>(run.observations.size()) ||
        (!Rereads(s) && !run.observations[i].scores.has_value())) {
      return absl::InternalError(absl::StrCat("stage: no scores for sequence ", s.seq_id()));
    }
    std::optional<CollectedScores> observed = std::move(run.observations[i].scores);
    if (Rereads(s)) {
      ASSIGN_OR_RETURN(observed, Reread(s, run.observations[i]));
      if (!observed.has_value()) continue;  // more spans to come
    }
    CollectedScores scores = *std::move(observed);
    xkv::v1::ObservedSequence& p = *run.result.mutable_sequences(i)->mutable_observed();
    p.set_seq_id(s.seq_id());
    p.set_prompt_len(scores.prompt_len);
    p.set_prefix_len(scores.prefix_len());
    p.set_window(scores.window);
    p.set_profile_ms(run.observations[i].ms);
    if (scores.prefix_len() > 0) {
      ASSIGN_OR_RETURN(std::vector<LayerProfile> profiles, BuildProfiles(scores));
      // Per-(layer, KV head) curves: each KV head's sorted scores (query-head rows summed).
      std::vector<LayerProfile> summed;
      if (s.per_head() && scores.heads != scores.n_kv_heads) {
        ASSIGN_OR_RETURN(summed, KvHeadProfiles(scores));
      }
      const std::vector<LayerProfile>& heads = summed.empty() ? profiles : summed;
      for (int l = layer_begin(); l < layer_end(); ++l) {
        const LayerProfile& lp = profiles[l - layer_begin()];
        xkv::v1::LayerGains* g = p.add_layers();
        g->set_layer(l);
        g->mutable_gains()->Add(lp.gain.begin(), lp.gain.end());
        g->set_total_mass(lp.total_mass);
        g->set_heads(scores.heads);
        if (s.return_scores()) {
          g->mutable_scores()->Add(scores.layer(l).begin(), scores.layer(l).end());
        }
        if (s.per_head()) {
          const std::vector<float>& sorted = heads[l - layer_begin()].sorted_scores;
          g->mutable_head_scores()->Add(sorted.begin(), sorted.end());
        }
      }
    }
    sequences_.at(s.seq_id()).scores = std::move(scores);
  }
  return absl::OkStatus();
}

absl::Status StageExecutor::Output(const StepRequest& step, Run& run) {
  const absl::Time t0 = absl::Now();
  xkv::v1::StepTimings& timings = *run.result.mutable_timings();
  if (!is_last()) {
    if (link_ == nullptr) {
      return absl::FailedPreconditionError("stage: not the last stage and no link to send to");
    }
    RETURN_IF_ERROR(SendRows(step));
    run.sent = true;
    timings.set_send_ms(MsSince(t0));
    return absl::OkStatus();
  }
  if (run.scores_only) return absl::OkStatus();  // hidden is not meaningful after the last scores
  RETURN_IF_ERROR(Sample(step, run));
  timings.set_compute_ms(timings.compute_ms() + MsSince(t0));
  return absl::OkStatus();
}

absl::Status StageExecutor::Sample(const StepRequest& step, Run& run) {
  if (engine_->device_resident() && options_.device_sampling) return SampleOnDevice(step, run);
  const std::vector<int64_t> last = run.batch.LastRows();
  std::vector<int64_t> rows;
  std::vector<int> which;
  for (int i = 0; i < step.sequences_size(); ++i) {
    if (!Samples(step.sequences(i)) && !step.sequences(i).return_logits()) continue;
    rows.push_back(last[i]);
    which.push_back(i);
  }
  if (rows.empty()) return absl::OkStatus();
  ASSIGN_OR_RETURN(std::vector<float> logits, engine_->LogitsResident(rows));
  const size_t V = config().vocab_size;
  for (size_t k = 0; k < which.size(); ++k) {
    const StepSequence& s = step.sequences(which[k]);
    absl::Span<const float> row(logits.data() + k * V, V);
    xkv::v1::SequenceResult& r = *run.result.mutable_sequences(which[k]);
    if (Samples(s)) SampleOnHost(s, row, sequences_.at(s.seq_id()), r);
    if (s.return_logits()) r.mutable_logits()->Add(row.begin(), row.end());
  }
  return absl::OkStatus();
}

// The CPU Sampler of a sequence (made at its first sample, with the prompt tokens a repetition
// penalty needs), on one row of host logits.
void StageExecutor::SampleOnHost(const StepSequence& s, absl::Span<const float> row, Sequence& q,
                                 xkv::v1::SequenceResult& r) {
  if (q.sampler == nullptr) {
    q.sampler = std::make_unique<Sampler>(SamplingOf(s));
    q.sampler->AddContext(q.context);
    q.context = {};
  }
  r.set_token(q.sampler->Sample(row));
  SetLogprobs(q.sampler->last_logprobs(), r);
}

// Sequences sample on the device from their first sample on, unless that sample asks for
// logprobs or a repetition penalty: those (and only those) get their logits on the host and the
// CPU Sampler, for good.
absl::Status StageExecutor::SampleOnDevice(const StepRequest& step, Run& run) {
  const std::vector<int64_t> last = run.batch.LastRows();
  std::vector<RowSampling> rows;
  std::vector<int> which;
  for (int i = 0; i < step.sequences_size(); ++i) {
    const StepSequence& s = step.sequences(i);
    if (!Samples(s) && !s.return_logits()) continue;
    Sequence& q = sequences_.at(s.seq_id());
    const SamplingParams sampling = SamplingOf(s);
    const bool device = Samples(s) && q.sampler == nullptr &&
                        (q.device_params.has_value() ||
                         (sampling.logprobs < 0 && sampling.repetition_penalty == 1.f));
    RowSampling r;
    r.row = last[i];
    r.sample = device;
    r.want_logits = s.return_logits() || (Samples(s) && !device);
    if (device) {
      if (!q.device_params.has_value()) q.device_params = sampling;
      FillDeviceDraw(q, r);
    }
    rows.push_back(std::move(r));
    which.push_back(i);
  }
  if (rows.empty()) return absl::OkStatus();
  ASSIGN_OR_RETURN(SampledRows got, engine_->SampleResident(rows));
  const size_t V = config().vocab_size;
  size_t k = 0;
  for (size_t j = 0; j < which.size(); ++j) {
    const StepSequence& s = step.sequences(which[j]);
    xkv::v1::SequenceResult& r = *run.result.mutable_sequences(which[j]);
    Sequence& q = sequences_.at(s.seq_id());
    absl::Span<const float> row;
    if (rows[j].want_logits) row = absl::Span<const float>(got.logits.data() + k++ * V, V);
    if (rows[j].sample) {
      r.set_token(got.tokens[j]);
      CountDeviceDraw(q, r.token());
    } else if (Samples(s)) {
      SampleOnHost(s, row, q, r);
    }
    if (s.return_logits()) r.mutable_logits()->Add(row.begin(), row.end());
  }
  return absl::OkStatus();
}

// ---- compaction, release, accounting -------------------------------------------------------

absl::Status StageExecutor::CompactSequence(uint64_t seq_id, Sequence& seq,
                                            const CompactSpec& spec) {
  ASSIGN_OR_RETURN(const PolicyOptions policy, CompactSelection(spec));
  if (seq.compacted) {
    return absl::FailedPreconditionError(
        absl::StrCat("stage: sequence ", seq_id, " was already compacted"));
  }
  CollectedScores meta;
  const CollectedScores* scores = seq.scores.has_value() ? &*seq.scores : nullptr;
  if (scores == nullptr) {
    meta = MakeCollectedScores(config(), layer_begin(), layer_end(),
                               engine_->CacheLength(seq_id, layer_begin()), options_.importance);
    scores = &meta;
  }
  const int64_t T = scores->prompt_len;
  if (policy.kind == PolicyKind::kFull || T <= scores->window) {
    seq.scores.reset();
    seq.compacted = true;
    return absl::OkStatus();
  }
  if (NeedsScores(policy.kind) && !seq.scores.has_value()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "stage: sequence ", seq_id, " has no importance scores to select its kept tokens"));
  }
  std::vector<int64_t> budgets;
  std::vector<std::vector<int64_t>> head_budgets;
  RETURN_IF_ERROR(CheckBudgetsFit(seq_id, spec, T, scores->window,
                                  [&](int l) { return engine_->CacheLength(seq_id, l); }));
  for (int l = layer_begin(); l < layer_end(); ++l) {
    const xkv::v1::LayerBudget& budget = *FindBudget(spec, l);
    budgets.push_back(budget.kept_prefix());
    if (budget.head_kept_prefix_size() > 0) {
      head_budgets.emplace_back(budget.head_kept_prefix().begin(), budget.head_kept_prefix().end());
    }
  }
  ASSIGN_OR_RETURN(std::vector<std::vector<std::vector<int32_t>>> kept,
                   KeptSlotsForLayers(*scores, budgets, policy, head_budgets));
  for (int l = layer_begin(); l < layer_end(); ++l) {
    RETURN_IF_ERROR(engine_->CompactLayer(seq_id, l, T, kept[l - layer_begin()]));
  }
  seq.scores.reset();
  seq.compacted = true;
  return SyncBlocks(seq_id);
}

absl::StatusOr<xkv::v1::CompactResponse> StageExecutor::Compact(
    const xkv::v1::CompactRequest& request) {
  RETURN_IF_ERROR(CheckFields(request.compact()));
  absl::MutexLock lock(&mu_);
  DiscardAhead();
  const uint64_t seq_id = request.seq_id();
  auto it = sequences_.find(seq_id);
  if (it == sequences_.end()) {
    return absl::NotFoundError(absl::StrCat("stage: sequence ", seq_id, " is unknown"));
  }
  absl::Status s = CompactSequence(seq_id, it->second, request.compact());
  RefreshStatus();
  RETURN_IF_ERROR(s);
  xkv::v1::CompactResponse r;
  LayerSizes(seq_id, r.mutable_layers());
  int64_t held = 0;
  for (const xkv::v1::LayerSize& l : r.layers()) held += l.bytes();
  r.set_bytes_held(held);
  *r.mutable_usage() = Usage();
  return r;
}

absl::Status StageExecutor::SyncBlocks(uint64_t seq_id) {
  std::vector<BlockChange> changes;
  for (int l = layer_begin(); l < layer_end(); ++l) {
    if (head_tables() == 1) {
      changes.push_back({seq_id, l, std::max<int64_t>(engine_->CacheLength(seq_id, l), 0)});
      continue;
    }
    for (int h = 0; h < head_tables(); ++h) {
      changes.push_back(
          {seq_id, l, std::max<int64_t>(engine_->HeadCacheLength(seq_id, l, h), 0), h});
    }
  }
  absl::Status s = pool_.Apply(changes);
  if (!s.ok()) {
    return absl::InternalError(
        absl::StrCat("stage: cache of sequence ", seq_id, " outgrew its blocks: ", s.message()));
  }
  return absl::OkStatus();
}

void StageExecutor::LayerSizes(uint64_t seq_id,
                               google::protobuf::RepeatedPtrField<xkv::v1::LayerSize>* out) const {
  if (!sequences_.contains(seq_id)) return;
  for (int l = layer_begin(); l < layer_end(); ++l) {
    const int64_t blocks = pool_.blocks(seq_id, l);
    xkv::v1::LayerSize* size = out->Add();
    size->set_layer(l);
    size->set_tokens(engine_->CacheLength(seq_id, l));
    size->set_bytes(blocks * block_bytes_);
    size->set_blocks(blocks);
    for (int h = 0; h < head_tables() && head_tables() > 1; ++h) {
      size->add_head_tokens(engine_->HeadCacheLength(seq_id, l, h));
    }
  }
}

void StageExecutor::Drop(uint64_t seq_id) {
  pool_.Release(seq_id);
  engine_->ReleaseSequence(seq_id);
  sequences_.erase(seq_id);
}

xkv::v1::ReleaseResponse StageExecutor::Release(const xkv::v1::ReleaseRequest& request) {
  absl::MutexLock lock(&mu_);
  DiscardAhead();
  int known = 0;
  for (uint64_t id : request.seq_ids()) {
    if (sequences_.contains(id) || pool_.has_sequence(id) || engine_->HasSequence(id)) ++known;
    Drop(id);
  }
  RefreshStatus();
  xkv::v1::ReleaseResponse r;
  r.set_released(known);
  *r.mutable_usage() = Usage();
  return r;
}

void StageExecutor::ReleaseAll() {
  absl::MutexLock lock(&mu_);
  DiscardAhead();
  for (const auto& [id, seq] : sequences_) engine_->ReleaseSequence(id);
  sequences_.clear();
  pool_.ReleaseAll();
  RefreshStatus();
}

xkv::v1::BlockUsage StageExecutor::Usage() const {
  xkv::v1::BlockUsage u;
  u.set_blocks_used(pool_.used());
  u.set_blocks_free(pool_.free());
  u.set_kv_bytes_used(pool_.used() * block_bytes_);
  u.set_kv_bytes_capacity(pool_.capacity() * block_bytes_);
  return u;
}

void StageExecutor::RefreshStatus() {
  xkv::v1::StatusResponse s;
  s.set_layer_begin(layer_begin());
  s.set_layer_end(layer_end());
  s.set_is_first(is_first());
  s.set_is_last(is_last());
  s.set_weight_bytes(weight_bytes_);
  *s.mutable_usage() = Usage();
  for (int l = layer_begin(); l < layer_end(); ++l) {
    xkv::v1::LayerBlocks* b = s.add_layers();
    b->set_layer(l);
    b->set_used(pool_.layer_used(l));
    b->set_free(pool_.free());  // the stage's shared pool
  }
  s.set_sequences(static_cast<int>(sequences_.size()));
  s.set_health(xkv::v1::STAGE_HEALTH_SERVING);
  s.set_device(engine_->device());
  s.set_model_path(options_.model_path);
  absl::MutexLock lock(&status_mu_);
  status_ = std::move(s);
}

xkv::v1::StatusResponse StageExecutor::status() const {
  absl::MutexLock lock(&status_mu_);
  return status_;
}

int64_t StageExecutor::CacheLength(uint64_t seq_id, int layer) const {
  absl::MutexLock lock(&mu_);
  auto it = sequences_.find(seq_id);
  if (it == sequences_.end() || layer < layer_begin() || layer >= layer_end()) return -1;
  const int64_t queued =  // a decode step queued ahead holds one more
      ahead_ != nullptr && absl::c_linear_search(ahead_->ids, seq_id) ? 1 : 0;
  return engine_->CacheLength(seq_id, layer) - queued;
}

std::unique_ptr<KvCache> StageExecutor::CacheCopy(uint64_t seq_id) const {
  absl::MutexLock lock(&mu_);
  if (!sequences_.contains(seq_id)) return nullptr;
  return engine_->CacheCopy(seq_id);
}

}  // namespace xkv
