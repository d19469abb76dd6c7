#include "model/engine_generator.h"

#include <algorithm>
#include <memory>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "model/kv_allocation.h"
#include "model/sampler.h"

namespace xkv {
namespace {

// Runs `tokens` (appended at `position`) through every layer; returns the last row's logits.
// The hidden rows stay inside the engine (StageEngine's resident path).
absl::StatusOr<std::vector<float>> Step(StageEngine& e, uint64_t id,
                                        absl::Span<const int32_t> tokens, int64_t position,
                                        bool observe, bool scores_only,
                                        const ImportanceOptions& importance,
                                        std::optional<CollectedScores>* scores) {
  RETURN_IF_ERROR(e.EmbedResident(tokens));
  EngineStep step;
  step.scores_only = scores_only;
  step.sequences.push_back({id, static_cast<int64_t>(tokens.size()), position, observe});
  std::vector<EngineObservation> obs;
  RETURN_IF_ERROR(e.RunLayersResident(step, importance, &obs));
  if (scores != nullptr && observe) *scores = std::move(obs[0].scores);
  if (scores_only) return std::vector<float>();
  const int64_t last = static_cast<int64_t>(tokens.size()) - 1;
  return e.LogitsResident({&last, 1});
}

// Prompt chunks of at most `chunk` tokens whose last one holds >= min_last tokens (or the whole
// prompt when it is shorter).
std::vector<std::pair<int64_t, int64_t>> Chunks(int64_t n, int64_t chunk, int64_t min_last) {
  std::vector<std::pair<int64_t, int64_t>> out;
  for (int64_t begin = 0; begin < n;) {
    int64_t len = std::min(chunk, n - begin);
    const int64_t rest = n - begin - len;
    if (rest > 0 && rest < min_last) len -= min_last - rest;  // leave the last chunk enough
    out.push_back({begin, len});
    begin += len;
  }
  return out;
}

AllocationReport EngineReport(const StageEngine& e, uint64_t id, const AllocationPlan& plan) {
  const int64_t per_token = e.kv_bytes_per_token();
  return MakeReport(
      plan,
      [&](int l) {
        const int64_t tokens = e.CacheLength(id, l);
        return std::pair<int64_t, int64_t>(tokens, tokens * per_token);
      },
      per_token);
}

// Prefill (and eviction); returns the logits of the last prompt token.
absl::StatusOr<std::vector<float>> Prefill(StageEngine& e, uint64_t id,
                                           const std::vector<int32_t>& prompt,
                                           const EngineGeneratorOptions& o,
                                           GenerationResult* result) {
  const int64_t T = prompt.size();
  const absl::Span<const int32_t> all(prompt);
  std::optional<CollectedScores> scores;
  const ImportanceOptions scoring = ScoringFor(o.kv, o.importance);
  const bool two_pass = o.kv.profile.kind != ProfileModeKind::kOnePass;
  if (o.compress && two_pass) {
    RETURN_IF_ERROR(Step(e, id, all, 0, true, true, scoring, &scores).status());
  }
  std::vector<float> logits;
  const auto chunks = Chunks(T, std::max<int64_t>(o.prefill_chunk, 1), o.importance.window);
  for (size_t c = 0; c < chunks.size(); ++c) {
    const bool observe = o.compress && !two_pass && c + 1 == chunks.size();
    ASSIGN_OR_RETURN(logits, Step(e, id, all.subspan(chunks[c].first, chunks[c].second),
                                  chunks[c].first, observe, false, scoring, &scores));
  }
  if (!o.compress) return logits;
  if (!scores.has_value()) {
    scores = MakeCollectedScores(e.config(), e.layer_begin(), e.layer_end(), T, scoring);
  }
  ASSIGN_OR_RETURN(AllocationPlan plan, PlanAllocation(*scores, e.config(), o.kv));
  if (plan.compress) {
    for (int l = plan.layer_begin; l < plan.layer_end; ++l) {
      RETURN_IF_ERROR(e.CompactLayer(id, l, T, plan.kept[l - plan.layer_begin]));
    }
  }
  result->allocation = EngineReport(e, id, plan);
  return logits;
}

absl::Status Validate(const StageEngine& e, const GenerationRequest& r,
                      const EngineGeneratorOptions& o) {
  if (e.layer_begin() != 0 || e.layer_end() != e.config().n_layers) {
    return absl::InvalidArgumentError("engine generate: the engine must hold every layer");
  }
  if (r.prompt.empty() || r.max_tokens < 0) {
    return absl::InvalidArgumentError("engine generate: empty prompt or negative max_tokens");
  }
  if (!r.stop.empty() && !o.token_bytes) {
    return absl::InvalidArgumentError("engine generate: stop strings need token_bytes");
  }
  return ValidateSamplingParams(r.sampling);
}

}  // namespace

absl::StatusOr<GenerationResult> EngineGenerate(StageEngine& engine, uint64_t id,
                                                const GenerationRequest& request,
                                                const EngineGeneratorOptions& options,
                                                const TokenCallback& on_token) {
  RETURN_IF_ERROR(Validate(engine, request, options));
  std::vector<int32_t> eos = options.eos_tokens;
  if (eos.empty()) eos.push_back(engine.config().eos_token);
  GenerationResult result;
  result.prompt_tokens = static_cast<int64_t>(request.prompt.size());
  absl::StatusOr<std::vector<float>> logits = Prefill(engine, id, request.prompt, options, &result);
  Sampler sampler(request.sampling);
  StopMatcher stop(request.stop);
  int64_t position = result.prompt_tokens;
  auto emit = [&](int32_t token, const std::string& bytes) {
    result.text += bytes;
    if (on_token) on_token(0, token, bytes);
  };
  while (logits.ok() && static_cast<int>(result.tokens.size()) < request.max_tokens) {
    const int32_t token = sampler.Sample(*logits);
    if (!request.ignore_eos && std::find(eos.begin(), eos.end(), token) != eos.end()) {
      result.finish = FinishReason::kEos;
      break;
    }
    result.tokens.push_back(token);
    bool stopped = false;
    emit(token, options.token_bytes ? stop.Push(options.token_bytes(token), &stopped) : "");
    if (stopped) {
      result.finish = FinishReason::kStop;
      break;
    }
    if (static_cast<int>(result.tokens.size()) == request.max_tokens) break;
    logits = Step(engine, id, {&token, 1}, position++, false, false, options.importance, nullptr);
  }
  if (result.finish != FinishReason::kStop && logits.ok()) emit(-1, stop.Flush());
  for (int l = engine.layer_begin(); l < engine.layer_end(); ++l) {
    result.kv_bytes_held +=
        std::max<int64_t>(engine.CacheLength(id, l), 0) * engine.kv_bytes_per_token();
  }
  engine.ReleaseSequence(id);
  if (!logits.ok()) return logits.status();
  return result;
}

}  // namespace xkv
