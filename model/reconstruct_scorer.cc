#include "model/reconstruct_scorer.h"

#include <algorithm>
#include <string>
#include <string_view>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace xkv {
namespace {

absl::Status CheckInputs(const StageEngine& engine, uint64_t id, int64_t T,
                         const ReconstructOptions& o) {
  if (T < 1 || o.chunk_tokens < 1 || o.overlap < 0 || o.sinks < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("reconstruct: prompt length ", T, " and chunk_tokens ", o.chunk_tokens,
                     " must be >= 1, overlap ", o.overlap, " and sinks ", o.sinks, " >= 0"));
  }
  if (!engine.HasSequence(id)) {
    return absl::NotFoundError(absl::StrCat("reconstruct: no sequence ", id));
  }
  if (engine.layer_begin() != 0 || engine.layer_end() != engine.config().n_layers) {
    return absl::FailedPreconditionError("reconstruct: the engine must hold every layer");
  }
  for (int l = engine.layer_begin(); l < engine.layer_end(); ++l) {
    if (engine.CacheLength(id, l) != T) {
      return absl::InvalidArgumentError(
          absl::StrCat("reconstruct: layer ", l, " caches ", engine.CacheLength(id, l),
                       " tokens, not the prompt's ", T, "; score before compacting"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<RepeatPrompt> MakeRepeatPrompt(const Tokenizer& tok, const ChatTemplate& chat) {
  constexpr std::string_view kMark = "@@XKV@@";
  const ChatMessage msg{"user", std::string(kMark)};
  ASSIGN_OR_RETURN(const std::string turn,
                   chat.Apply(absl::MakeConstSpan(&msg, 1), /*add_generation_prompt=*/true));
  const size_t mark = turn.find(kMark);
  if (mark == std::string::npos) return absl::InternalError("the chat template lost the user turn");
  RepeatPrompt r;
  auto encode = [&tok](std::string_view text) {
    return tok.Encode(text, /*parse_special=*/true, /*add_special=*/false);
  };
  ASSIGN_OR_RETURN(r.first, encode("\n\nRepeat the previous context exactly."));
  ASSIGN_OR_RETURN(r.next,
                   encode("\n\nRepeat the part of the previous context exactly, starting with"));
  ASSIGN_OR_RETURN(r.suffix, encode(turn.substr(mark + kMark.size())));
  return r;
}

std::vector<int32_t> RereadInput(absl::Span<const int32_t> prompt, int64_t b, int64_t e,
                                 const RepeatPrompt& repeat, int overlap) {
  std::vector<int32_t> in = b == 0 ? repeat.first : repeat.next;
  if (b > 0)
    in.insert(in.end(), prompt.begin() + std::max<int64_t>(0, b - overlap), prompt.begin() + b);
  in.insert(in.end(), repeat.suffix.begin(), repeat.suffix.end());
  in.insert(in.end(), prompt.begin() + b, prompt.begin() + e);
  return in;
}

absl::Status ValidateRereadChunk(int64_t chunk, absl::string_view name) {
  if (chunk < kMinRereadChunk || chunk > kMaxRereadChunk) {
    return absl::InvalidArgumentError(absl::StrCat(name, " ", chunk, " is out of range [",
                                                   kMinRereadChunk, ", ", kMaxRereadChunk, "]"));
  }
  return absl::OkStatus();
}

absl::StatusOr<int64_t> RereadChunkFromFlag(int64_t asked, bool gpu, absl::string_view name) {
  if (asked == 0) return DefaultRereadChunk(gpu);
  RETURN_IF_ERROR(ValidateRereadChunk(asked, name));
  return asked;
}

int64_t RereadChunkTokens(const RepeatPrompt& repeat, const ReconstructOptions& options,
                          int64_t step_tokens) {
  const int64_t overhead = static_cast<int64_t>(
      std::max(repeat.first.size(), repeat.next.size() + options.overlap) + repeat.suffix.size());
  return std::min(options.chunk_tokens, step_tokens - overhead);
}

ReconstructScores EmptyReconstructScores(int layer_begin, int layer_end, int n_kv_heads, int64_t T,
                                         int sinks) {
  ReconstructScores out;
  out.layer_begin = layer_begin;
  out.n_kv_heads = n_kv_heads;
  out.prompt_len = T;
  out.layers.resize(std::max(0, layer_end - layer_begin));
  for (std::vector<float>& l : out.layers) {
    l.assign(static_cast<size_t>(n_kv_heads) * T, 0.0f);
    for (int g = 0; g < n_kv_heads; ++g) {  // sinks score 1 (always worth keeping)
      std::fill_n(l.begin() + g * T, std::min<int64_t>(std::max(sinks, 0), T), 1.0f);
    }
  }
  return out;
}

absl::Status AccumulateReread(const std::vector<std::vector<float>>& chunk, const RereadSpan& span,
                              ReconstructScores* out) {
  const int64_t T = out->prompt_len, n = span.chunk_end - span.chunk_begin;
  if (span.chunk_begin < 0 || n < 1 || span.chunk_end > T || chunk.size() != out->layers.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "reconstruct: re-read span [", span.chunk_begin, ", ", span.chunk_end, ") of ",
        chunk.size(), " layers does not fit a ", T, "-token prompt of ", out->layers.size()));
  }
  for (size_t l = 0; l < chunk.size(); ++l) {
    if (chunk[l].size() != static_cast<size_t>(out->n_kv_heads * n)) {
      return absl::InvalidArgumentError(absl::StrCat("reconstruct: layer ", out->layer_begin + l,
                                                     " has ", chunk[l].size(), " scores, want ",
                                                     out->n_kv_heads * n));
    }
    for (int g = 0; g < out->n_kv_heads; ++g) {
      float* dst = out->layers[l].data() + g * T + span.chunk_begin;
      const float* src = chunk[l].data() + g * n;
      for (int64_t j = 0; j < n; ++j) dst[j] = std::max(dst[j], src[j]);
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<ReconstructScores> ScoreByReconstruction(StageEngine* engine, uint64_t id,
                                                        absl::Span<const int32_t> prompt,
                                                        const RepeatPrompt& repeat,
                                                        const ReconstructOptions& options) {
  const ModelConfig& c = engine->config();
  const int64_t T = static_cast<int64_t>(prompt.size());
  RETURN_IF_ERROR(CheckInputs(*engine, id, T, options));
  ReconstructScores out = EmptyReconstructScores(engine->layer_begin(), engine->layer_end(),
                                                 c.n_kv_heads, T, options.sinks);
  std::vector<EngineObservation> observations;
  for (int64_t b = 0; b < T; b += options.chunk_tokens) {
    const int64_t e = std::min(T, b + options.chunk_tokens);
    const std::vector<int32_t> input = RereadInput(prompt, b, e, repeat, options.overlap);
    const int64_t R = static_cast<int64_t>(input.size());
    if (c.context_length > 0 && T + R > c.context_length) {
      return absl::InvalidArgumentError(absl::StrCat(
          "reconstruct: re-reading ", R, " tokens after the prompt's ", T,
          " passes the model's context of ", c.context_length, "; use smaller chunks"));
    }
    const RereadSpan span{b, e, options.sinks};
    EngineStep step;
    step.scores_only = true;
    step.sequences.push_back({id, R, T, false, span});
    RETURN_IF_ERROR(engine->EmbedResident(input));
    RETURN_IF_ERROR(engine->RunLayersResident(step, ImportanceOptions{}, &observations));
    if (observations.size() != 1) return absl::InternalError("reconstruct: no observation");
    RETURN_IF_ERROR(AccumulateReread(observations[0].reread, span, &out));
  }
  return out;
}

absl::StatusOr<CollectedScores> ReconstructCollectedScores(const ReconstructScores& raw,
                                                           int64_t prompt_len,
                                                           const ModelConfig& config,
                                                           const ImportanceOptions& scoring) {
  if (prompt_len < raw.prompt_len || scoring.granularity != ScoreGranularity::kKvHead ||
      scoring.pool_kernel < 1 || scoring.pool_kernel % 2 == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "reconstruct: a prompt of ", prompt_len, " tokens cannot take the scores of ",
        raw.prompt_len, " re-read tokens (needs >=), or the scoring is not per KV head with an ",
        "odd pool kernel (", scoring.pool_kernel, ")"));
  }
  const int layer_end = raw.layer_begin + static_cast<int>(raw.layers.size());
  CollectedScores s = MakeCollectedScores(config, raw.layer_begin, layer_end, prompt_len, scoring);
  const int64_t P = s.prefix_len(), T = raw.prompt_len;
  std::vector<float> row(P);
  for (size_t l = 0; l < raw.layers.size(); ++l) {
    s.layers[l].assign(static_cast<size_t>(s.heads) * P, 0.0f);
    for (int g = 0; g < s.heads; ++g) {
      const float* src = raw.layers[l].data() + g * T;
      for (int64_t j = 0; j < P; ++j) row[j] = j < T ? src[j] : 1.0f;
      cpu::PoolScores(row.data(), P, scoring.pool_kernel, scoring.pool, s.layers[l].data() + g * P);
    }
  }
  return s;
}

absl::Status MaxMergeScores(const CollectedScores& other, CollectedScores* scores) {
  if (other.layer_begin != scores->layer_begin || other.layer_end != scores->layer_end ||
      other.prompt_len != scores->prompt_len || other.window != scores->window ||
      other.heads != scores->heads) {
    return absl::InvalidArgumentError(
        absl::StrCat("max merge: scores of a ", other.prompt_len, "-token prompt (window ",
                     other.window, ") cannot merge into those of a ", scores->prompt_len,
                     "-token prompt (window ", scores->window, ")"));
  }
  for (int l = other.layer_begin; l < other.layer_end; ++l) {
    if (!other.has_layer(l) || !scores->has_layer(l)) continue;
    std::vector<float>& dst = scores->layers[l - scores->layer_begin];
    const std::vector<float>& src = other.layer(l);
    for (size_t j = 0; j < dst.size(); ++j) dst[j] = std::max(dst[j], src[j]);
  }
  return absl::OkStatus();
}

}  // namespace xkv
