// The stage executor's validation (architecture.md §2 step 5): every field of a step or compaction
// checked at the edge before anything happens (INVALID_ARGUMENT naming the field, its value and
// the allowed range, overflow-safe), then each sequence against what the stage holds, and the
// blocks the step needs planned against the stage's pool.
#include <algorithm>
#include <string>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "allocator/kv_spec.h"
#include "base/status_macros.h"
#include "worker/stage_executor.h"
#include "worker/step_fields.h"
#include "worker/worker_limits.h"

namespace xkv {
namespace {

using step_fields::FindBudget;
using step_fields::NewTokens;
using step_fields::Observed;
using step_fields::Rereads;
using step_fields::Samples;
using step_fields::SamplingOf;
using step_fields::ScoresOnly;
using step_fields::ScoresWindow;
using xkv::v1::CompactSpec;
using xkv::v1::StepRequest;
using xkv::v1::StepSequence;

std::string InContext(int64_t context_length) {
  return absl::StrCat("the model's context length is ", context_length);
}

// The spec's selection rule ("" is xkv): INVALID_ARGUMENT for an unknown policy or sink_tokens
// outside [0, context_length].
absl::StatusOr<PolicyOptions> SelectionOf(const CompactSpec& spec, int64_t context_length) {
  PolicyOptions o;
  const std::string& name = spec.selection().policy();
  ASSIGN_OR_RETURN(o.kind, ParsePolicy(name.empty() ? "xkv" : name));
  RETURN_IF_ERROR(CheckRange("compact.selection.sink_tokens", spec.selection().sink_tokens(), 0,
                             context_length, InContext(context_length)));
  if (spec.selection().sink_tokens() > 0) o.sink_tokens = spec.selection().sink_tokens();
  return o;
}

// A request's window scoring (StepSequence.scoring): known enums, an odd kernel in [1, 63].
absl::Status CheckScoring(const xkv::v1::SequenceScoring& s, const std::string& field) {
  if (!xkv::v1::ScoreReduce_IsValid(s.reduce())) {
    return absl::InvalidArgumentError(absl::StrCat(field, "reduce ", s.reduce(),
                                                   " unknown; allowed: SCORE_REDUCE_SUM (1), "
                                                   "SCORE_REDUCE_MAX (2), 0 (sum)"));
  }
  if (!xkv::v1::ScorePool_IsValid(s.pool())) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, "pool ", s.pool(),
                     " unknown; allowed: SCORE_POOL_AVG (1), SCORE_POOL_MAX (2), 0 (avg)"));
  }
  return ValidatePoolKernel(s.pool_kernel(), field + "pool_kernel");
}

}  // namespace

absl::Status StageExecutor::CheckPerHead(absl::string_view field) const {
  if (head_tables() == config().n_kv_heads) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      field, ": per-(layer, KV head) budgets need a stage that holds a count per KV head; this ",
      engine_->device(), " stage keeps one per layer (",
      engine_->supports_per_head_kv() ? "loaded without per_head_tables"
                                      : "its engine does not support per-head KV",
      "); use per_head 0"));
}

// ---- validation ---------------------------------------------------------------------------

absl::Status StageExecutor::CheckFields(const CompactSpec& spec) const {
  const int64_t ctx = config().context_length;
  RETURN_IF_ERROR(SelectionOf(spec, ctx).status());
  for (const xkv::v1::LayerBudget& b : spec.budgets()) {
    const std::string field = absl::StrCat("compact.budgets (layer ", b.layer(), ")");
    RETURN_IF_ERROR(CheckRange(field + ".kept_prefix", b.kept_prefix(), 0, ctx, InContext(ctx)));
    if (b.head_kept_prefix_size() == 0) continue;
    RETURN_IF_ERROR(CheckPerHead(field + ".head_kept_prefix"));
    RETURN_IF_ERROR(CheckRange(field + ".head_kept_prefix size", b.head_kept_prefix_size(),
                               config().n_kv_heads, config().n_kv_heads, "one per KV head"));
    int64_t most = 0;
    for (int h = 0; h < b.head_kept_prefix_size(); ++h) {
      RETURN_IF_ERROR(CheckRange(absl::StrCat(field, ".head_kept_prefix[", h, "]"),
                                 b.head_kept_prefix(h), 0, ctx, InContext(ctx)));
      most = std::max(most, b.head_kept_prefix(h));
    }
    RETURN_IF_ERROR(CheckRange(field + ".kept_prefix", b.kept_prefix(), most, most,
                               "the largest head_kept_prefix"));
  }
  return absl::OkStatus();
}

absl::Status StageExecutor::CheckFields(const StepRequest& r) const {
  RETURN_IF_ERROR(CheckLinkTimeout(r.link_timeout_ms()));
  const int64_t max_tokens = options_.max_step_tokens;
  const std::string why = absl::StrCat("at most ", max_tokens, " tokens per step on this worker");
  RETURN_IF_ERROR(CheckRange("sequences size", r.sequences_size(), 1, max_tokens, why));
  const int64_t ctx = config().context_length;
  int64_t tokens = 0;  // each n_new <= context_length: no overflow
  for (int i = 0; i < r.sequences_size(); ++i) {
    const StepSequence& s = r.sequences(i);
    const std::string field = absl::StrCat("sequences[", i, "].");
    RETURN_IF_ERROR(CheckRange(field + "tokens size", s.tokens_size(), 0, ctx, InContext(ctx)));
    const int64_t n_new = NewTokens(s);
    RETURN_IF_ERROR(CheckRange(field + "n_new", n_new, 1, ctx, InContext(ctx)));
    RETURN_IF_ERROR(CheckRange(field + "position", s.position(), 0, ctx - n_new,
                               absl::StrCat(InContext(ctx), " and n_new is ", n_new)));
    if (!xkv::v1::SequenceMode_IsValid(s.mode())) {
      return absl::InvalidArgumentError(absl::StrCat("sequences.mode ", s.mode(), " unknown"));
    }
    RETURN_IF_ERROR(CheckRange(field + "replayed_decodes", s.replayed_decodes(), 0,
                               Observed(s) ? 0 : n_new,
                               "at most n_new, and 0 unless the mode is NORMAL"));
    if (s.has_compact()) RETURN_IF_ERROR(CheckFields(s.compact()));
    if (s.per_head()) RETURN_IF_ERROR(CheckPerHead(field + "per_head"));
    if (s.has_scoring()) RETURN_IF_ERROR(CheckScoring(s.scoring(), field + "scoring."));
    if (Rereads(s)) {
      RETURN_IF_ERROR(CheckRange(field + "reread.chunk_begin", s.reread().chunk_begin(), 0,
                                 s.position() - 1, "the cached prompt's length is the position"));
      RETURN_IF_ERROR(CheckRange(field + "reread.chunk_end", s.reread().chunk_end(),
                                 s.reread().chunk_begin() + 1, s.position(),
                                 "after chunk_begin, within the cached prompt"));
    }
    tokens += n_new;
    if (tokens > max_tokens) {
      return absl::InvalidArgumentError(absl::StrCat("the step's sequences carry more than ",
                                                     max_tokens, " new tokens (", why,
                                                     ", --max-step-tokens)"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<PolicyOptions> StageExecutor::CompactSelection(const CompactSpec& spec) const {
  ASSIGN_OR_RETURN(const PolicyOptions policy, SelectionOf(spec, config().context_length));
  int per_head = 0;  // layers with per-head budgets: all of the stage's or none
  for (int l = layer_begin(); l < layer_end(); ++l) {
    const xkv::v1::LayerBudget* b = FindBudget(spec, l);
    if (policy.kind != PolicyKind::kFull && (b == nullptr || b->kept_prefix() < 0)) {
      return absl::InvalidArgumentError(
          absl::StrCat("stage: compaction needs a budget >= 0 for layer ", l));
    }
    per_head += b != nullptr && b->head_kept_prefix_size() > 0;
  }
  if (per_head != 0 && per_head != layer_end() - layer_begin()) {
    return absl::InvalidArgumentError(
        absl::StrCat("stage: compaction gives per-head budgets to ", per_head, " of the stage's ",
                     layer_end() - layer_begin(), " layers; give them to every layer or to none"));
  }
  return policy;
}

absl::Status StageExecutor::CheckBudgetsFit(uint64_t seq_id, const CompactSpec& spec, int64_t T,
                                            int window,
                                            absl::FunctionRef<int64_t(int)> length) const {
  const int64_t P = T - window;
  for (int l = layer_begin(); l < layer_end(); ++l) {
    const int64_t b = FindBudget(spec, l)->kept_prefix();
    if (length(l) != T || b > P) {
      return absl::FailedPreconditionError(
          absl::StrCat("stage: sequence ", seq_id, " layer ", l, " holds ", length(l),
                       " tokens, budget ", b, "; compaction needs the whole ", T,
                       "-token prompt (before decoding) and a budget <= ", P));
    }
  }
  return absl::OkStatus();
}

absl::Status StageExecutor::ValidateSequence(const StepSequence& s) const {
  const std::string who = absl::StrCat("stage: sequence ", s.seq_id());
  const int64_t n_new = NewTokens(s);
  if (is_first()) {
    if (s.tokens_size() != n_new) {
      return absl::InvalidArgumentError(
          absl::StrCat(who, " has ", s.tokens_size(), " tokens for n_new ", n_new));
    }
    for (int32_t t : s.tokens()) {
      if (t < 0 || t >= config().vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat(who, " token ", t, " outside the vocab"));
      }
    }
  }
  auto it = sequences_.find(s.seq_id());
  const bool known = engine_->HasSequence(s.seq_id());
  if (!known && !s.new_sequence()) {
    return absl::NotFoundError(absl::StrCat(who, " is unknown (released or never started)"));
  }
  const int64_t T = s.position() + n_new;
  for (int l = layer_begin(); known && l < layer_end(); ++l) {
    const int64_t length = engine_->CacheLength(s.seq_id(), l);
    if (s.new_sequence() && length > 0) {
      return absl::InvalidArgumentError(absl::StrCat(who, " already exists"));
    }
    if (length > s.position() || (Observed(s) && length != s.position())) {
      return absl::InvalidArgumentError(absl::StrCat(who, " layer ", l, " holds ", length,
                                                     " tokens; position is ", s.position()));
    }
  }
  if (s.mode() == xkv::v1::SEQUENCE_MODE_SCORES_ONLY && (s.position() != 0 || s.has_compact())) {
    return absl::InvalidArgumentError(
        absl::StrCat(who, ": a scores-only step is the whole prompt, without compaction"));
  }
  if (Rereads(s) &&
      (!known || s.has_compact() || (it != sequences_.end() && it->second.compacted))) {
    return absl::InvalidArgumentError(absl::StrCat(
        who, ": a re-reading step needs the uncompacted prompt's cache and no compaction"));
  }
  const int window = options_.importance.window;
  if (ScoresWindow(s) && T > window && n_new < window) {
    return absl::InvalidArgumentError(absl::StrCat(who, ": the observed chunk holds ", n_new,
                                                   " tokens, fewer than the window ", window));
  }
  if (is_last() && Samples(s) && (it == sequences_.end() || it->second.sampler == nullptr)) {
    RETURN_IF_ERROR(ValidateSamplingParams(SamplingOf(s)));
  }
  if (s.has_compact()) {
    ASSIGN_OR_RETURN(const PolicyOptions policy, CompactSelection(s.compact()));
    if (it != sequences_.end() && it->second.compacted) {
      return absl::FailedPreconditionError(absl::StrCat(who, " was already compacted"));
    }
    const bool has_scores = s.mode() == xkv::v1::SEQUENCE_MODE_OBSERVE ||
                            (it != sequences_.end() && it->second.scores.has_value());
    if (NeedsScores(policy.kind) && !has_scores && T > window) {
      return absl::FailedPreconditionError(
          absl::StrCat(who, ": policy ", std::string(PolicyName(policy.kind)),
                       " needs importance scores: observe the prompt's final chunk first"));
    }
    // The compaction's own check on the cache this step leaves, made here: refused after the step
    // has run, the sequence would be dropped. The prompt is this step's observed one, else the
    // earlier observed one, else the whole cache.
    const int64_t scored =
        s.mode() == xkv::v1::SEQUENCE_MODE_OBSERVE ? T
        : it != sequences_.end() && it->second.scores.has_value()
            ? it->second.scores->prompt_len
            : (known ? engine_->CacheLength(s.seq_id(), layer_begin()) : 0) + n_new;
    if (policy.kind != PolicyKind::kFull && scored > window) {
      RETURN_IF_ERROR(CheckBudgetsFit(s.seq_id(), s.compact(), scored, window, [&](int l) {
        return (known ? engine_->CacheLength(s.seq_id(), l) : 0) + n_new;
      }));
    }
  }
  return absl::OkStatus();
}

absl::Status StageExecutor::ValidateStep(const StepRequest& step) const {
  absl::flat_hash_set<uint64_t> ids;
  const bool scores_only = ScoresOnly(step.sequences(0));
  for (const StepSequence& s : step.sequences()) {
    if (!ids.insert(s.seq_id()).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("stage: sequence ", s.seq_id(), " twice in step ", step.step_id()));
    }
    if (ScoresOnly(s) != scores_only) {
      return absl::InvalidArgumentError(
          "stage: scores-only sequences cannot share a step with others");
    }
    RETURN_IF_ERROR(ValidateSequence(s));
  }
  return absl::OkStatus();
}

absl::StatusOr<BlockPlan> StageExecutor::PlanBlocks(const StepRequest& step) const {
  std::vector<BlockChange> changes;
  for (const StepSequence& s : step.sequences()) {
    if (ScoresOnly(s)) continue;  // no KV writes
    for (int l = layer_begin(); l < layer_end(); ++l) {
      for (int h = 0; h < head_tables(); ++h) {  // every head grows by the step's tokens
        changes.push_back({s.seq_id(), l, pool_.head_tokens(s.seq_id(), l, h) + NewTokens(s), h});
      }
    }
  }
  return pool_.Plan(changes);
}

}  // namespace xkv
