#include "worker/worker_convert.h"

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "worker/host_memory.h"
#include "worker/model_path.h"
#include "worker/stage_engine_factory.h"

namespace xkv {
namespace {

absl::StatusOr<ScoreGranularity> GranularityFromProto(xkv::v1::ScoreGranularity g) {
  switch (g) {
    case xkv::v1::SCORE_GRANULARITY_UNSPECIFIED:
    case xkv::v1::SCORE_GRANULARITY_KV_HEAD:
      return ScoreGranularity::kKvHead;
    case xkv::v1::SCORE_GRANULARITY_QUERY_HEAD:
      return ScoreGranularity::kQueryHead;
    default:
      return absl::InvalidArgumentError(absl::StrCat("importance.granularity ", g, " unknown"));
  }
}

absl::StatusOr<SequenceMode> ModeFromProto(xkv::v1::SequenceMode m) {
  switch (m) {
    case xkv::v1::SEQUENCE_MODE_NORMAL:
      return SequenceMode::kNormal;
    case xkv::v1::SEQUENCE_MODE_SCORES_ONLY:
      return SequenceMode::kScoresOnly;
    case xkv::v1::SEQUENCE_MODE_OBSERVE:
      return SequenceMode::kObserve;
    case xkv::v1::SEQUENCE_MODE_REREAD:
      return SequenceMode::kReread;
    default:
      return absl::InvalidArgumentError(absl::StrCat("sequences.mode ", m, " unknown"));
  }
}

// `value` in [lo, hi], or INVALID_ARGUMENT naming `field`, the value and the range (`why`).
absl::Status CheckRange(const std::string& field, int64_t value, int64_t lo, int64_t hi,
                        const std::string& why = "") {
  if (value >= lo && value <= hi) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(field, " ", value, " is outside [", lo, ", ", hi,
                                                 "]", why.empty() ? "" : " (", why,
                                                 why.empty() ? "" : ")"));
}

absl::Status CheckLinkTimeout(int64_t ms) {
  return CheckRange("link_timeout_ms", ms, 0, absl::ToInt64Milliseconds(kMaxLinkTimeout),
                    "0: the stage's default");
}

absl::StatusOr<StageSequence> SequenceFromProto(const xkv::v1::StepSequence& p, int index,
                                                const StepBounds& bounds) {
  const std::string field = absl::StrCat("sequences[", index, "].");
  const int64_t ctx = bounds.context_length;
  const std::string why = absl::StrCat("the model's context length is ", ctx);
  RETURN_IF_ERROR(CheckRange(field + "tokens size", p.tokens_size(), 0, ctx, why));
  StageSequence s;
  s.seq_id = p.seq_id();
  s.n_new = p.n_new() != 0 ? p.n_new() : static_cast<int64_t>(p.tokens_size());
  RETURN_IF_ERROR(CheckRange(field + "n_new", s.n_new, 1, ctx, why));
  RETURN_IF_ERROR(CheckRange(field + "position", p.position(), 0, ctx - s.n_new,
                             absl::StrCat(why, " and n_new is ", s.n_new)));
  s.tokens.assign(p.tokens().begin(), p.tokens().end());
  s.position = p.position();
  s.new_sequence = p.new_sequence();
  ASSIGN_OR_RETURN(s.mode, ModeFromProto(p.mode()));
  s.sampling.temperature = p.sampling().temperature();
  s.sampling.top_k = p.sampling().top_k();
  s.sampling.top_p = p.sampling().top_p() == 0.f ? 1.f : p.sampling().top_p();
  s.sampling.seed = p.sampling().seed();
  s.sampling.min_p = p.sampling().min_p();
  s.sampling.presence_penalty = p.sampling().presence_penalty();
  s.sampling.frequency_penalty = p.sampling().frequency_penalty();
  s.sampling.logprobs = p.sampling().has_logprobs() ? p.sampling().logprobs() : -1;
  s.sampling.repetition_penalty =
      p.sampling().has_repetition_penalty() ? p.sampling().repetition_penalty() : 1.f;
  if (s.mode == SequenceMode::kReread) {
    RETURN_IF_ERROR(CheckRange(field + "reread.chunk_begin", p.reread().chunk_begin(), 0,
                               s.position - 1, "the cached prompt's length is the position"));
    RETURN_IF_ERROR(CheckRange(field + "reread.chunk_end", p.reread().chunk_end(),
                               p.reread().chunk_begin() + 1, s.position,
                               "after chunk_begin, within the cached prompt"));
    s.reread = RereadSpan{p.reread().chunk_begin(), p.reread().chunk_end()};
    s.reread_last = p.reread().last();
  }
  s.sample =
      !p.skip_sampling() && s.mode != SequenceMode::kScoresOnly && s.mode != SequenceMode::kReread;
  s.return_logits = p.return_logits();
  s.return_scores = p.return_scores();
  if (p.has_compact()) {
    ASSIGN_OR_RETURN(s.compact, CompactSpecFromProto(p.compact(), ctx));
  }
  return s;
}

}  // namespace

absl::StatusOr<StageOptions> StageOptionsFromProto(const xkv::v1::LoadStageRequest& r,
                                                   const std::string& device, int num_threads) {
  if (r.model_path().empty()) return absl::InvalidArgumentError("model_path is empty");
  if (!r.device().empty() && r.device() != device) {
    return absl::InvalidArgumentError(
        absl::StrCat("device '", r.device(), "' but this worker runs on '", device, "'"));
  }
  if (r.layer_begin() < 0 || r.layer_end() <= r.layer_begin()) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer range [", r.layer_begin(), ", ", r.layer_end(), ") is empty"));
  }
  if (r.is_first() != (r.layer_begin() == 0)) {
    return absl::InvalidArgumentError("is_first must equal layer_begin == 0");
  }
  StageOptions o;
  o.model_path = r.model_path();
  o.layer_begin = r.layer_begin();
  o.layer_end = r.layer_end();
  o.stage_index = r.stage_index();
  o.device = device;
  o.num_threads = num_threads;
  if (r.numerics() == "exact") {
    o.numerics = Numerics::kExact;
  } else if (r.numerics().empty() || r.numerics() == "ggml") {
    o.numerics = Numerics::kGgml;
  } else if (r.numerics() == "bf16") {
    o.numerics = Numerics::kBf16;
  } else {
    return absl::InvalidArgumentError("numerics '" + r.numerics() +
                                      "' is not one of \"ggml\", \"exact\", \"bf16\"");
  }
  RETURN_IF_ERROR(CheckRange("block_tokens", r.block_tokens(), 0, kMaxBlockTokens, "0: 16"));
  o.block_tokens = r.block_tokens() > 0 ? r.block_tokens() : 16;
  RETURN_IF_ERROR(CheckRange("kv_capacity_blocks", r.kv_capacity_blocks(), 0, kMaxCapacityBlocks));
  RETURN_IF_ERROR(CheckRange("kv_capacity_bytes", r.kv_capacity_bytes(), 0, kMaxCapacityBytes));
  if (r.layer_capacity_blocks_size() != 0 &&
      r.layer_capacity_blocks_size() != r.layer_end() - r.layer_begin()) {
    return absl::InvalidArgumentError(absl::StrCat("layer_capacity_blocks has ",
                                                   r.layer_capacity_blocks_size(), " entries for ",
                                                   r.layer_end() - r.layer_begin(), " layers"));
  }
  for (int i = 0; i < r.layer_capacity_blocks_size(); ++i) {
    RETURN_IF_ERROR(CheckRange(absl::StrCat("layer_capacity_blocks[", i, "]"),
                               r.layer_capacity_blocks(i), 0, kMaxCapacityBlocks));
  }
  o.layer_capacity_blocks.assign(r.layer_capacity_blocks().begin(),
                                 r.layer_capacity_blocks().end());
  o.kv_capacity_blocks = r.kv_capacity_blocks();
  o.kv_capacity_bytes = r.kv_capacity_bytes();
  if (r.num_stages() != 0 || r.stage_index() != 0) {
    // Every stage holds at least one layer: stage_index <= layer_begin.
    RETURN_IF_ERROR(CheckRange("num_stages", r.num_stages(), 1, kMaxStages));
    RETURN_IF_ERROR(CheckRange("stage_index", r.stage_index(), 0,
                               std::min(r.num_stages() - 1, r.layer_begin()),
                               "below num_stages and at most layer_begin"));
  }
  RETURN_IF_ERROR(CheckRange("importance.window", r.importance().window(), 0, kMaxImportanceWindow,
                             "0: default"));
  RETURN_IF_ERROR(CheckRange("importance.pool_kernel", r.importance().pool_kernel(), 0,
                             kMaxImportanceWindow - 1, "odd; 0: default"));
  if (r.importance().pool_kernel() % 2 == 0 && r.importance().pool_kernel() != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("importance.pool_kernel ", r.importance().pool_kernel(), " is not odd"));
  }
  if (r.importance().window() > 0) o.importance.window = r.importance().window();
  if (r.importance().pool_kernel() > 0) o.importance.pool_kernel = r.importance().pool_kernel();
  ASSIGN_OR_RETURN(o.importance.granularity, GranularityFromProto(r.importance().granularity()));
  RETURN_IF_ERROR(CheckLinkTimeout(r.link_timeout_ms()));
  if (r.link_timeout_ms() > 0) o.link_timeout = absl::Milliseconds(r.link_timeout_ms());
  return o;
}

absl::Status ApplyWorkerLimits(const WorkerLimits& limits, StageOptions* options) {
  ASSIGN_OR_RETURN(options->model_path, ResolveModelPath(limits.model_dir, options->model_path));
  // Unset: the host's memory bounds a CPU stage's pool; a CUDA engine bounds its own on the device.
  ASSIGN_OR_RETURN(const int device, ParseStageDevice(options->device));
  options->max_kv_bytes = limits.max_kv_bytes > 0 ? limits.max_kv_bytes
                          : device < 0            ? HostMemoryBytes()
                                                  : 0;
  return CheckStageKvPool(*options);
}

absl::StatusOr<StageCompactSpec> CompactSpecFromProto(const xkv::v1::CompactSpec& p,
                                                      int64_t context_length) {
  StageCompactSpec s;
  const std::string name = p.selection().policy().empty() ? "xkv" : p.selection().policy();
  ASSIGN_OR_RETURN(s.policy.kind, ParsePolicy(name));
  const std::string why = absl::StrCat("the model's context length is ", context_length);
  RETURN_IF_ERROR(CheckRange("compact.selection.sink_tokens", p.selection().sink_tokens(), 0,
                             context_length, why));
  if (p.selection().sink_tokens() > 0) s.policy.sink_tokens = p.selection().sink_tokens();
  for (const xkv::v1::LayerBudget& b : p.budgets()) {
    RETURN_IF_ERROR(CheckRange(absl::StrCat("compact.budgets (layer ", b.layer(), ").kept_prefix"),
                               b.kept_prefix(), 0, context_length, why));
    s.budgets.push_back({b.layer(), b.kept_prefix()});
  }
  return s;
}

absl::StatusOr<StageStep> StepFromProto(const xkv::v1::StepRequest& r, const StepBounds& bounds) {
  StageStep step;
  step.step_id = r.step_id();
  step.dry_run = r.dry_run();
  RETURN_IF_ERROR(CheckLinkTimeout(r.link_timeout_ms()));
  step.link_timeout = absl::Milliseconds(r.link_timeout_ms());
  const std::string why =
      absl::StrCat("at most ", bounds.max_step_tokens, " tokens per step on this worker");
  RETURN_IF_ERROR(CheckRange("sequences size", r.sequences_size(), 1, bounds.max_step_tokens, why));
  int64_t tokens = 0;  // each n_new <= context_length: no overflow
  for (int i = 0; i < r.sequences_size(); ++i) {
    ASSIGN_OR_RETURN(StageSequence s, SequenceFromProto(r.sequences(i), i, bounds));
    tokens += s.n_new;
    if (tokens > bounds.max_step_tokens) {
      return absl::InvalidArgumentError(absl::StrCat("the step's sequences carry more than ",
                                                     bounds.max_step_tokens, " new tokens (", why,
                                                     ", --max-step-tokens)"));
    }
    step.sequences.push_back(std::move(s));
  }
  return step;
}

StepBounds StepBoundsOf(const StageExecutor& stage, int64_t max_step_tokens) {
  return {stage.config().context_length, max_step_tokens};
}

void ModelInfoToProto(const ModelConfig& c, xkv::v1::ModelInfo* out) {
  out->set_name(c.name);
  out->set_n_layers(c.n_layers);
  out->set_hidden(c.hidden);
  out->set_n_heads(c.n_heads);
  out->set_n_kv_heads(c.n_kv_heads);
  out->set_head_dim(c.head_dim);
  out->set_vocab_size(c.vocab_size);
  out->set_context_length(c.context_length);
  out->set_bos_token(c.bos_token);
  out->set_eos_token(c.eos_token);
  out->set_kv_bytes_per_token_per_layer(c.KvBytesPerTokenPerLayer(sizeof(float)));
}

void UsageToProto(const StageUsage& u, xkv::v1::BlockUsage* out) {
  out->set_blocks_used(u.blocks_used);
  out->set_blocks_free(u.blocks_free);
  out->set_kv_bytes_used(u.kv_bytes_used);
  out->set_kv_bytes_capacity(u.kv_bytes_capacity);
}

void LayerSizeToProto(const StageLayerSize& s, xkv::v1::LayerSize* out) {
  out->set_layer(s.layer);
  out->set_tokens(s.tokens);
  out->set_bytes(s.bytes);
  out->set_blocks(s.blocks);
}

namespace {

void ObservedToProto(uint64_t seq_id, const ObservedProfile& o, xkv::v1::ObservedSequence* out) {
  out->set_seq_id(seq_id);
  out->set_prompt_len(o.prompt_len);
  out->set_prefix_len(o.prefix_len);
  out->set_window(o.window);
  out->set_profile_ms(o.profile_ms);
  for (const LayerGainCurve& c : o.layers) {
    xkv::v1::LayerGains* g = out->add_layers();
    g->set_layer(c.layer);
    g->mutable_gains()->Add(c.gains.begin(), c.gains.end());
    g->set_total_mass(c.total_mass);
    g->set_heads(c.heads);
    g->mutable_scores()->Add(c.scores.begin(), c.scores.end());
  }
}

}  // namespace

void StepResultToProto(const StageStepResult& r, xkv::v1::StepResponse* out) {
  out->set_step_id(r.step_id);
  for (const StageSequenceResult& s : r.sequences) {
    xkv::v1::SequenceResult* p = out->add_sequences();
    p->set_seq_id(s.seq_id);
    p->set_token(s.token);
    if (s.logprobs.has_value()) {
      p->set_logprob(s.logprobs->token.logprob);
      for (const TokenLogprob& t : s.logprobs->top) {
        p->add_top_ids(t.id);
        p->add_top_logprobs(t.logprob);
      }
    }
    p->mutable_logits()->Add(s.logits.begin(), s.logits.end());
    if (s.observed.has_value()) ObservedToProto(s.seq_id, *s.observed, p->mutable_observed());
    for (const StageLayerSize& l : s.layers) LayerSizeToProto(l, p->add_layers());
  }
  xkv::v1::StepTimings* t = out->mutable_timings();
  t->set_wait_ms(r.timings.wait_ms);
  t->set_compute_ms(r.timings.compute_ms);
  t->set_send_ms(r.timings.send_ms);
  t->set_compact_ms(r.timings.compact_ms);
  t->set_total_ms(r.timings.total_ms);
  UsageToProto(r.usage, out->mutable_usage());
}

void StatusToProto(const StageStatus& s, xkv::v1::StatusResponse* out) {
  out->set_layer_begin(s.layer_begin);
  out->set_layer_end(s.layer_end);
  out->set_is_first(s.is_first);
  out->set_is_last(s.is_last);
  out->set_weight_bytes(s.weight_bytes);
  UsageToProto(s.usage, out->mutable_usage());
  for (const LayerBlockUsage& l : s.layers) {
    xkv::v1::LayerBlocks* b = out->add_layers();
    b->set_layer(l.layer);
    b->set_used(l.used);
    b->set_free(l.free);
  }
  out->set_sequences(s.sequences);
  out->set_device(s.device);
  out->set_model_path(s.model_path);
}

}  // namespace xkv
