#include "worker/stage_executor.h"

#include <algorithm>
#include <limits>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "model/cpu_stage_engine.h"
#include "model/gguf.h"
#include "model/kv_allocation.h"
#include "model/model_config.h"
#include "worker/stage_engine_factory.h"

namespace xkv {
namespace {

double MsSince(absl::Time t0) { return absl::ToDoubleMilliseconds(absl::Now() - t0); }

// a + b, or INT64_MAX when it overflows (a, b >= 0): a bound check then refuses it.
int64_t SaturatingAdd(int64_t a, int64_t b) {
  return b > std::numeric_limits<int64_t>::max() - a ? std::numeric_limits<int64_t>::max() : a + b;
}

// The stage's pool in blocks, from the first capacity option that is set (StageOptions).
absl::StatusOr<int64_t> RawCapacity(const StageOptions& o, int num_layers, int64_t block_bytes) {
  if (o.kv_capacity_blocks < 0 || o.kv_capacity_bytes < 0) {
    return absl::InvalidArgumentError("stage: negative KV capacity");
  }
  int64_t total = 0;
  if (!o.layer_capacity_blocks.empty()) {
    if (static_cast<int>(o.layer_capacity_blocks.size()) != num_layers) {
      return absl::InvalidArgumentError(absl::StrCat("stage: ", o.layer_capacity_blocks.size(),
                                                     " layer capacities for ", num_layers,
                                                     " layers"));
    }
    for (int64_t c : o.layer_capacity_blocks) {
      if (c < 0) return absl::InvalidArgumentError("stage: negative KV capacity");
      total = SaturatingAdd(total, c);
    }
    return total;
  }
  if (o.kv_capacity_bytes > 0 && o.kv_capacity_blocks == 0) {
    return o.kv_capacity_bytes / block_bytes;
  }
  const int64_t per_layer =
      o.kv_capacity_blocks > 0 ? o.kv_capacity_blocks : kDefaultBlocksPerLayer;
  for (int l = 0; l < num_layers; ++l) total = SaturatingAdd(total, per_layer);
  return total;
}

// The stage's pool within o.max_kv_bytes.
absl::Status CheckPoolBytes(const StageOptions& o, int64_t capacity, int num_layers,
                            int64_t block_bytes) {
  if (o.max_kv_bytes <= 0 || block_bytes <= 0) return absl::OkStatus();
  const int64_t max_blocks = o.max_kv_bytes / block_bytes;
  if (capacity > max_blocks) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "stage: the KV pool asks for more than ", max_blocks, " blocks of ", block_bytes,
        " bytes for the stage's ", num_layers, " layers, beyond this worker's bound of ",
        o.max_kv_bytes, " bytes (its memory, or --max-kv-bytes)"));
  }
  return absl::OkStatus();
}

const LayerBudgetEntry* FindBudget(const StageCompactSpec& spec, int layer) {
  for (const LayerBudgetEntry& b : spec.budgets) {
    if (b.layer == layer) return &b;
  }
  return nullptr;
}

}  // namespace

absl::StatusOr<int64_t> KvPoolCapacity(const StageOptions& o, int num_layers, int64_t block_bytes) {
  ASSIGN_OR_RETURN(const int64_t capacity, RawCapacity(o, num_layers, block_bytes));
  RETURN_IF_ERROR(CheckPoolBytes(o, capacity, num_layers, block_bytes));
  return capacity;
}

// One step in flight. Its hidden rows stay inside the engine (StageEngine's resident path).
struct StageExecutor::Run {
  EngineStep batch;
  std::vector<EngineObservation> observations;
  bool scores_only = false;
  bool sent = false;
  StageStepResult result;
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
  ASSIGN_OR_RETURN(BlockPool pool, BlockPool::Create({o.layer_begin, num_layers, capacity,
                                                      o.block_tokens, block_bytes}));
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
      pool_(std::move(pool)) {
  absl::MutexLock lock(&mu_);
  RefreshStatus();
}

StageExecutor::~StageExecutor() = default;

// ---- validation ---------------------------------------------------------------------------

absl::Status StageExecutor::ValidateCompact(const StageCompactSpec& spec) const {
  for (int l = layer_begin(); l < layer_end(); ++l) {
    const LayerBudgetEntry* b = FindBudget(spec, l);
    if (spec.policy.kind != PolicyKind::kFull && (b == nullptr || b->kept_prefix < 0)) {
      return absl::InvalidArgumentError(
          absl::StrCat("stage: compaction needs a budget >= 0 for layer ", l));
    }
  }
  return absl::OkStatus();
}

absl::Status StageExecutor::ValidateSequence(const StageSequence& s) const {
  const std::string who = absl::StrCat("stage: sequence ", s.seq_id);
  if (s.n_new < 1 || s.position < 0) {
    return absl::InvalidArgumentError(absl::StrCat(who, " needs n_new >= 1 and position >= 0"));
  }
  if (is_first()) {
    if (static_cast<int64_t>(s.tokens.size()) != s.n_new) {
      return absl::InvalidArgumentError(
          absl::StrCat(who, " has ", s.tokens.size(), " tokens for n_new ", s.n_new));
    }
    for (int32_t t : s.tokens) {
      if (t < 0 || t >= config().vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat(who, " token ", t, " outside the vocab"));
      }
    }
  }
  auto it = sequences_.find(s.seq_id);
  const bool known = engine_->HasSequence(s.seq_id);
  if (!known && !s.new_sequence) {
    return absl::NotFoundError(absl::StrCat(who, " is unknown (released or never started)"));
  }
  const int64_t T = s.position + s.n_new;
  for (int l = layer_begin(); known && l < layer_end(); ++l) {
    const int64_t length = engine_->CacheLength(s.seq_id, l);
    if (s.new_sequence && length > 0) {
      return absl::InvalidArgumentError(absl::StrCat(who, " already exists"));
    }
    if (length > s.position || (s.mode != SequenceMode::kNormal && length != s.position)) {
      return absl::InvalidArgumentError(
          absl::StrCat(who, " layer ", l, " holds ", length, " tokens; position is ", s.position));
    }
  }
  if (s.mode == SequenceMode::kScoresOnly && (s.position != 0 || s.compact.has_value())) {
    return absl::InvalidArgumentError(
        absl::StrCat(who, ": a scores-only step is the whole prompt, without compaction"));
  }
  if (s.mode == SequenceMode::kReread &&
      (!known || s.compact.has_value() || (it != sequences_.end() && it->second.compacted) ||
       s.reread.chunk_begin < 0 || s.reread.chunk_begin >= s.reread.chunk_end ||
       s.reread.chunk_end > s.position)) {
    return absl::InvalidArgumentError(absl::StrCat(
        who, ": a re-reading step needs the uncompacted prompt's cache, no compaction and a span ",
        "0 <= chunk_begin < chunk_end <= position (", s.reread.chunk_begin, ", ",
        s.reread.chunk_end, ", ", s.position, ")"));
  }
  if ((s.mode == SequenceMode::kScoresOnly || s.mode == SequenceMode::kObserve) &&
      T > options_.importance.window && s.n_new < options_.importance.window) {
    return absl::InvalidArgumentError(absl::StrCat(who, ": the observed chunk holds ", s.n_new,
                                                   " tokens, fewer than the window ",
                                                   options_.importance.window));
  }
  if (is_last() && s.sample && (it == sequences_.end() || it->second.sampler == nullptr)) {
    RETURN_IF_ERROR(ValidateSamplingParams(s.sampling));
  }
  if (s.compact.has_value()) {
    RETURN_IF_ERROR(ValidateCompact(*s.compact));
    if (it != sequences_.end() && it->second.compacted) {
      return absl::FailedPreconditionError(absl::StrCat(who, " was already compacted"));
    }
    const bool has_scores = s.mode == SequenceMode::kObserve ||
                            (it != sequences_.end() && it->second.scores.has_value());
    if (NeedsScores(s.compact->policy.kind) && !has_scores && T > options_.importance.window) {
      return absl::FailedPreconditionError(
          absl::StrCat(who, ": policy ", std::string(PolicyName(s.compact->policy.kind)),
                       " needs importance scores: observe the prompt's final chunk first"));
    }
  }
  return absl::OkStatus();
}

absl::Status StageExecutor::ValidateStep(const StageStep& step) const {
  if (step.sequences.empty()) return absl::InvalidArgumentError("stage: step without sequences");
  absl::flat_hash_set<uint64_t> ids;
  const bool scores_only = ScoresOnly(step.sequences[0].mode);
  for (const StageSequence& s : step.sequences) {
    if (!ids.insert(s.seq_id).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("stage: sequence ", s.seq_id, " twice in step ", step.step_id));
    }
    if (ScoresOnly(s.mode) != scores_only) {
      return absl::InvalidArgumentError(
          "stage: scores-only sequences cannot share a step with others");
    }
    RETURN_IF_ERROR(ValidateSequence(s));
  }
  return absl::OkStatus();
}

absl::StatusOr<BlockPlan> StageExecutor::PlanBlocks(const StageStep& step) const {
  std::vector<BlockChange> changes;
  for (const StageSequence& s : step.sequences) {
    if (ScoresOnly(s.mode)) continue;  // no KV writes
    for (int l = layer_begin(); l < layer_end(); ++l) {
      changes.push_back({s.seq_id, l, pool_.tokens(s.seq_id, l) + s.n_new});
    }
  }
  return pool_.Plan(changes);
}

// ---- the step ------------------------------------------------------------------------------

absl::StatusOr<StageStepResult> StageExecutor::Step(const StageStep& step) {
  absl::MutexLock lock(&mu_);
  const absl::Time t0 = absl::Now();
  absl::Status valid = ValidateStep(step);
  absl::StatusOr<BlockPlan> plan = valid.ok() ? PlanBlocks(step) : valid;
  Run run;
  run.result.step_id = step.step_id;
  if (step.dry_run) {
    if (!plan.ok()) return plan.status();
    run.result.usage = Usage();
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
  for (const StageSequence& q : step.sequences) {
    if (!s.ok()) break;
    if (q.compact.has_value()) s = CompactSequence(q.seq_id, sequences_.at(q.seq_id), *q.compact);
  }
  run.result.timings.compact_ms = MsSince(tc);
  for (const StageSequence& q : step.sequences) {
    if (s.ok() && !run.scores_only) s = SyncBlocks(q.seq_id);
  }
  if (!s.ok()) {
    for (const StageSequence& q : step.sequences) Drop(q.seq_id);
    if (!is_last() && !run.sent && link_ != nullptr)
      link_->SendError(step.step_id, s).IgnoreError();
    RefreshStatus();
    return s;
  }
  for (size_t i = 0; i < step.sequences.size(); ++i) {
    run.result.sequences[i].layers = LayerSizes(step.sequences[i].seq_id);
  }
  run.result.usage = Usage();
  run.result.timings.total_ms = MsSince(t0);
  RefreshStatus();
  return std::move(run.result);
}

absl::Status StageExecutor::FailBeforeCompute(const StageStep& step, absl::Status error,
                                              bool received) {
  if (link_ != nullptr) {
    if (!is_first() && !received) link_->Discard(step.step_id);
    if (!is_last()) link_->SendError(step.step_id, error).IgnoreError();
  }
  return error;
}

absl::Status StageExecutor::InputRows(const StageStep& step, Run& run) {
  const absl::Time t0 = absl::Now();
  std::vector<int32_t> tokens;
  int64_t n = 0;
  for (const StageSequence& s : step.sequences) {
    n += s.n_new;
    if (is_first()) tokens.insert(tokens.end(), s.tokens.begin(), s.tokens.end());
  }
  if (is_first()) return engine_->EmbedResident(tokens);
  if (link_ == nullptr) {
    return absl::FailedPreconditionError("stage: not the first stage and no link to receive from");
  }
  const absl::Duration timeout =
      step.link_timeout > absl::ZeroDuration() ? step.link_timeout : options_.link_timeout;
  absl::StatusOr<StageRows> rows = link_->ReceiveRows(step.step_id, t0 + timeout);
  run.result.timings.wait_ms = MsSince(t0);
  RETURN_IF_ERROR(rows.status());
  if (rows->device.has_value()) {
    const DeviceRows& d = *rows->device;
    if (d.rows != n || d.width != config().hidden) {
      return absl::InvalidArgumentError(
          absl::StrCat("stage: step ", step.step_id, " received device rows [", d.rows, ", ",
                       d.width, "], want [", n, ", ", config().hidden, "]"));
    }
    return engine_->LoadResidentDevice(d);
  }
  if (static_cast<int64_t>(rows->host.size()) != n * config().hidden) {
    return absl::InvalidArgumentError(absl::StrCat("stage: step ", step.step_id, " received ",
                                                   rows->host.size(), " floats, want ", n, " x ",
                                                   config().hidden));
  }
  return engine_->LoadResident(std::move(rows->host));
}

// Device rows when both this engine and the link's far end keep rows on a device, else host fp32.
absl::Status StageExecutor::SendRows(const StageStep& step) {
  if (engine_->device_resident() && link_->SendsDeviceRows()) {
    ASSIGN_OR_RETURN(DeviceRows rows, engine_->ExportResident(link_->device_dtype()));
    return link_->SendDevice(step.step_id, rows);
  }
  ASSIGN_OR_RETURN(absl::Span<const float> rows, engine_->ResidentHost());
  return link_->Send(step.step_id, rows);
}

absl::Status StageExecutor::Compute(const StageStep& step, Run& run) {
  run.scores_only = ScoresOnly(step.sequences[0].mode);
  run.batch.scores_only = run.scores_only;
  run.result.sequences.resize(step.sequences.size());
  for (size_t i = 0; i < step.sequences.size(); ++i) {
    const StageSequence& s = step.sequences[i];
    run.result.sequences[i].seq_id = s.seq_id;
    Sequence& q = sequences_[s.seq_id];  // known from now on (dropped again if the step fails)
    if (is_last() && q.sampler == nullptr && !ScoresOnly(s.mode) &&
        s.sampling.repetition_penalty != 1.f) {
      q.context.insert(q.context.end(), s.tokens.begin(), s.tokens.end());
    }
    EngineSequenceStep e{s.seq_id, s.n_new, s.position,
                         s.mode == SequenceMode::kScoresOnly || s.mode == SequenceMode::kObserve};
    if (s.mode == SequenceMode::kReread) e.reread = s.reread;
    run.batch.sequences.push_back(e);
  }
  const absl::Time t0 = absl::Now();
  RETURN_IF_ERROR(engine_->RunLayersResident(run.batch, options_.importance, &run.observations));
  run.result.timings.compute_ms = MsSince(t0);
  return Observe(step, run);
}

absl::StatusOr<std::optional<CollectedScores>> StageExecutor::Reread(
    const StageSequence& s, EngineObservation& observation) {
  Sequence& q = sequences_.at(s.seq_id);
  if (!q.reread.has_value()) {
    q.reread = EmptyReconstructScores(layer_begin(), layer_end(), config().n_kv_heads, s.position,
                                      s.reread.sinks);
  }
  RETURN_IF_ERROR(AccumulateReread(observation.reread, s.reread, &*q.reread));
  if (!s.reread_last) return std::optional<CollectedScores>();
  // Unpooled re-reading scores, max-merged with the window's of the observed prefill (xkv eval's
  // profile=reconstruct:mix=max).
  ImportanceOptions unpooled = options_.importance;
  unpooled.pool_kernel = 1;
  ASSIGN_OR_RETURN(CollectedScores scores,
                   ReconstructCollectedScores(*q.reread, s.position, config(), unpooled));
  if (q.scores.has_value()) RETURN_IF_ERROR(MaxMergeScores(*q.scores, &scores));
  q.reread.reset();
  return std::optional<CollectedScores>(std::move(scores));
}

absl::Status StageExecutor::Observe(const StageStep& step, Run& run) {
  for (size_t i = 0; i < step.sequences.size(); ++i) {
    const StageSequence& s = step.sequences[i];
    if (s.mode == SequenceMode::kNormal) continue;
    if (i >= run.observations.size() ||
        (s.mode != SequenceMode::kReread && !run.observations[i].scores.has_value())) {
      return absl::InternalError(absl::StrCat("stage: no scores for sequence ", s.seq_id));
    }
    std::optional<CollectedScores> observed = std::move(run.observations[i].scores);
    if (s.mode == SequenceMode::kReread) {
      ASSIGN_OR_RETURN(observed, Reread(s, run.observations[i]));
      if (!observed.has_value()) continue;  // more spans to come
    }
    CollectedScores scores = *std::move(observed);
    ObservedProfile p;
    p.prompt_len = scores.prompt_len;
    p.prefix_len = scores.prefix_len();
    p.window = scores.window;
    p.profile_ms = run.observations[i].ms;
    if (p.prefix_len > 0) {
      ASSIGN_OR_RETURN(std::vector<LayerProfile> profiles, BuildProfiles(scores));
      for (int l = layer_begin(); l < layer_end(); ++l) {
        LayerProfile& lp = profiles[l - layer_begin()];
        LayerGainCurve c{l, std::move(lp.gain), lp.total_mass, scores.heads, {}};
        if (s.return_scores) c.scores = scores.layer(l);
        p.layers.push_back(std::move(c));
      }
    }
    run.result.sequences[i].observed = std::move(p);
    sequences_.at(s.seq_id).scores = std::move(scores);
  }
  return absl::OkStatus();
}

absl::Status StageExecutor::Output(const StageStep& step, Run& run) {
  const absl::Time t0 = absl::Now();
  if (!is_last()) {
    if (link_ == nullptr) {
      return absl::FailedPreconditionError("stage: not the last stage and no link to send to");
    }
    RETURN_IF_ERROR(SendRows(step));
    run.sent = true;
    run.result.timings.send_ms = MsSince(t0);
    return absl::OkStatus();
  }
  if (run.scores_only) return absl::OkStatus();  // hidden is not meaningful after the last scores
  RETURN_IF_ERROR(Sample(step, run));
  run.result.timings.compute_ms += MsSince(t0);
  return absl::OkStatus();
}

absl::Status StageExecutor::Sample(const StageStep& step, Run& run) {
  if (engine_->device_resident() && options_.device_sampling) return SampleOnDevice(step, run);
  const std::vector<int64_t> last = run.batch.LastRows();
  std::vector<int64_t> rows;
  std::vector<size_t> which;
  for (size_t i = 0; i < step.sequences.size(); ++i) {
    if (!step.sequences[i].sample && !step.sequences[i].return_logits) continue;
    rows.push_back(last[i]);
    which.push_back(i);
  }
  if (rows.empty()) return absl::OkStatus();
  ASSIGN_OR_RETURN(std::vector<float> logits, engine_->LogitsResident(rows));
  const size_t V = config().vocab_size;
  for (size_t k = 0; k < which.size(); ++k) {
    const StageSequence& s = step.sequences[which[k]];
    absl::Span<const float> row(logits.data() + k * V, V);
    StageSequenceResult& r = run.result.sequences[which[k]];
    if (s.sample) SampleOnHost(s, row, sequences_.at(s.seq_id), r);
    if (s.return_logits) r.logits.assign(row.begin(), row.end());
  }
  return absl::OkStatus();
}

// The CPU Sampler of a sequence (made at its first sample, with the prompt tokens a repetition
// penalty needs), on one row of host logits.
void StageExecutor::SampleOnHost(const StageSequence& s, absl::Span<const float> row, Sequence& q,
                                 StageSequenceResult& r) {
  if (q.sampler == nullptr) {
    q.sampler = std::make_unique<Sampler>(s.sampling);
    q.sampler->AddContext(q.context);
    q.context = {};
  }
  r.token = q.sampler->Sample(row);
  r.logprobs = q.sampler->last_logprobs();
}

// Sequences sample on the device from their first sample on, unless that sample asks for
// logprobs or a repetition penalty: those (and only those) get their logits on the host and the
// CPU Sampler, for good.
absl::Status StageExecutor::SampleOnDevice(const StageStep& step, Run& run) {
  const std::vector<int64_t> last = run.batch.LastRows();
  std::vector<RowSampling> rows;
  std::vector<size_t> which;
  for (size_t i = 0; i < step.sequences.size(); ++i) {
    const StageSequence& s = step.sequences[i];
    if (!s.sample && !s.return_logits) continue;
    Sequence& q = sequences_.at(s.seq_id);
    const bool device = s.sample && q.sampler == nullptr &&
                        (q.device_params.has_value() ||
                         (s.sampling.logprobs < 0 && s.sampling.repetition_penalty == 1.f));
    RowSampling r;
    r.row = last[i];
    r.sample = device;
    r.want_logits = s.return_logits || (s.sample && !device);
    if (device) {
      if (!q.device_params.has_value()) q.device_params = s.sampling;
      const SamplingParams& p = *q.device_params;
      r.params = p;
      r.draws = q.draws;
      for (const auto& [id, n] : q.counts) {  // the same sum as Sampler::Sample's
        r.penalties.emplace_back(id, p.presence_penalty + p.frequency_penalty * n);
      }
    }
    rows.push_back(std::move(r));
    which.push_back(i);
  }
  if (rows.empty()) return absl::OkStatus();
  ASSIGN_OR_RETURN(SampledRows got, engine_->SampleResident(rows));
  const size_t V = config().vocab_size;
  size_t k = 0;
  for (size_t j = 0; j < which.size(); ++j) {
    const StageSequence& s = step.sequences[which[j]];
    StageSequenceResult& r = run.result.sequences[which[j]];
    Sequence& q = sequences_.at(s.seq_id);
    absl::Span<const float> row;
    if (rows[j].want_logits) row = absl::Span<const float>(got.logits.data() + k++ * V, V);
    if (rows[j].sample) {
      r.token = got.tokens[j];
      ++q.draws;
      const SamplingParams& p = *q.device_params;
      if (p.presence_penalty != 0.f || p.frequency_penalty != 0.f) ++q.counts[r.token];
    } else if (s.sample) {
      SampleOnHost(s, row, q, r);
    }
    if (s.return_logits) r.logits.assign(row.begin(), row.end());
  }
  return absl::OkStatus();
}

// ---- compaction, release, accounting -------------------------------------------------------

absl::Status StageExecutor::CompactSequence(uint64_t seq_id, Sequence& seq,
                                            const StageCompactSpec& spec) {
  RETURN_IF_ERROR(ValidateCompact(spec));
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
  const int64_t T = scores->prompt_len, P = scores->prefix_len();
  if (spec.policy.kind == PolicyKind::kFull || T <= scores->window) {
    seq.scores.reset();
    seq.compacted = true;
    return absl::OkStatus();
  }
  if (NeedsScores(spec.policy.kind) && !seq.scores.has_value()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "stage: sequence ", seq_id, " has no importance scores to select its kept tokens"));
  }
  for (int l = layer_begin(); l < layer_end(); ++l) {
    if (engine_->CacheLength(seq_id, l) != T || FindBudget(spec, l)->kept_prefix > P) {
      return absl::FailedPreconditionError(absl::StrCat(
          "stage: sequence ", seq_id, " layer ", l, " holds ", engine_->CacheLength(seq_id, l),
          " tokens, budget ", FindBudget(spec, l)->kept_prefix, "; compaction needs the whole ", T,
          "-token prompt (before decoding) and a budget <= ", P));
    }
  }
  std::vector<int64_t> budgets;
  for (int l = layer_begin(); l < layer_end(); ++l)
    budgets.push_back(FindBudget(spec, l)->kept_prefix);
  ASSIGN_OR_RETURN(std::vector<std::vector<std::vector<int32_t>>> kept,
                   KeptSlotsForLayers(*scores, budgets, spec.policy));
  for (int l = layer_begin(); l < layer_end(); ++l) {
    RETURN_IF_ERROR(engine_->CompactLayer(seq_id, l, T, kept[l - layer_begin()]));
  }
  seq.scores.reset();
  seq.compacted = true;
  return SyncBlocks(seq_id);
}

absl::StatusOr<StageCompactResult> StageExecutor::Compact(uint64_t seq_id,
                                                          const StageCompactSpec& spec) {
  absl::MutexLock lock(&mu_);
  auto it = sequences_.find(seq_id);
  if (it == sequences_.end()) {
    return absl::NotFoundError(absl::StrCat("stage: sequence ", seq_id, " is unknown"));
  }
  absl::Status s = CompactSequence(seq_id, it->second, spec);
  RefreshStatus();
  RETURN_IF_ERROR(s);
  StageCompactResult r;
  r.layers = LayerSizes(seq_id);
  for (const StageLayerSize& l : r.layers) r.bytes_held += l.bytes;
  r.usage = Usage();
  return r;
}

absl::Status StageExecutor::SyncBlocks(uint64_t seq_id) {
  std::vector<BlockChange> changes;
  for (int l = layer_begin(); l < layer_end(); ++l) {
    changes.push_back({seq_id, l, std::max<int64_t>(engine_->CacheLength(seq_id, l), 0)});
  }
  absl::Status s = pool_.Apply(changes);
  if (!s.ok()) {
    return absl::InternalError(
        absl::StrCat("stage: cache of sequence ", seq_id, " outgrew its blocks: ", s.message()));
  }
  return absl::OkStatus();
}

std::vector<StageLayerSize> StageExecutor::LayerSizes(uint64_t seq_id) const {
  std::vector<StageLayerSize> out;
  auto it = sequences_.find(seq_id);
  if (it == sequences_.end()) return out;
  for (int l = layer_begin(); l < layer_end(); ++l) {
    const int64_t blocks = static_cast<int64_t>(pool_.table(seq_id, l).size());
    out.push_back({l, engine_->CacheLength(seq_id, l), blocks, blocks * block_bytes_});
  }
  return out;
}

void StageExecutor::Drop(uint64_t seq_id) {
  pool_.Release(seq_id);
  engine_->ReleaseSequence(seq_id);
  sequences_.erase(seq_id);
}

int StageExecutor::Release(absl::Span<const uint64_t> seq_ids) {
  absl::MutexLock lock(&mu_);
  int known = 0;
  for (uint64_t id : seq_ids) {
    if (sequences_.contains(id) || pool_.has_sequence(id) || engine_->HasSequence(id)) ++known;
    Drop(id);
  }
  RefreshStatus();
  return known;
}

void StageExecutor::ReleaseAll() {
  absl::MutexLock lock(&mu_);
  for (const auto& [id, seq] : sequences_) engine_->ReleaseSequence(id);
  sequences_.clear();
  pool_.ReleaseAll();
  RefreshStatus();
}

StageUsage StageExecutor::Usage() const {
  StageUsage u;
  u.blocks_used = pool_.used();
  u.blocks_free = pool_.free();
  u.kv_bytes_used = u.blocks_used * block_bytes_;
  u.kv_bytes_capacity = pool_.capacity() * block_bytes_;
  return u;
}

void StageExecutor::RefreshStatus() {
  StageStatus s;
  s.layer_begin = layer_begin();
  s.layer_end = layer_end();
  s.is_first = is_first();
  s.is_last = is_last();
  s.weight_bytes = weight_bytes_;
  s.usage = Usage();
  for (int l = layer_begin(); l < layer_end(); ++l) {
    s.layers.push_back({l, pool_.layer_used(l), pool_.free()});  // free: the stage's shared pool
  }
  s.sequences = static_cast<int>(sequences_.size());
  s.device = engine_->device();
  s.model_path = options_.model_path;
  absl::MutexLock lock(&status_mu_);
  status_ = std::move(s);
}

StageStatus StageExecutor::status() const {
  absl::MutexLock lock(&status_mu_);
  return status_;
}

int64_t StageExecutor::CacheLength(uint64_t seq_id, int layer) const {
  absl::MutexLock lock(&mu_);
  auto it = sequences_.find(seq_id);
  if (it == sequences_.end() || layer < layer_begin() || layer >= layer_end()) return -1;
  return engine_->CacheLength(seq_id, layer);
}

std::unique_ptr<KvCache> StageExecutor::CacheCopy(uint64_t seq_id) const {
  absl::MutexLock lock(&mu_);
  if (!sequences_.contains(seq_id)) return nullptr;
  return engine_->CacheCopy(seq_id);
}

}  // namespace xkv
