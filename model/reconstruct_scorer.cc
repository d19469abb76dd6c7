#include "model/reconstruct_scorer.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "kernels/cpu/reconstruct_importance.h"

namespace xkv {
namespace {

// The re-reading input of the chunk [b, e) of `prompt`.
std::vector<int32_t> RereadInput(absl::Span<const int32_t> prompt, int64_t b, int64_t e,
                                 const RepeatPrompt& repeat, int overlap) {
  std::vector<int32_t> in = b == 0 ? repeat.first : repeat.next;
  if (b > 0)
    in.insert(in.end(), prompt.begin() + std::max<int64_t>(0, b - overlap), prompt.begin() + b);
  in.insert(in.end(), repeat.suffix.begin(), repeat.suffix.end());
  in.insert(in.end(), prompt.begin() + b, prompt.begin() + e);
  return in;
}

absl::Status CheckInputs(const LlamaModel& model, const KvCache& cache, int64_t T,
                         const ReconstructOptions& o) {
  if (T < 1 || o.chunk_tokens < 1 || o.overlap < 0 || o.sinks < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("reconstruct: prompt length ", T, " and chunk_tokens ", o.chunk_tokens,
                     " must be >= 1, overlap ", o.overlap, " and sinks ", o.sinks, " >= 0"));
  }
  for (int l = model.layer_begin(); l < model.layer_end(); ++l) {
    if (cache.length(l) != T) {
      return absl::InvalidArgumentError(absl::StrCat("reconstruct: layer ", l, " caches ",
                                                     cache.length(l), " tokens, not the prompt's ",
                                                     T, "; score before compacting"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ReconstructScores> ScoreByReconstruction(LlamaModel* model, KvCache* cache,
                                                        absl::Span<const int32_t> prompt,
                                                        const RepeatPrompt& repeat,
                                                        const ReconstructOptions& options) {
  const ModelConfig& c = model->config();
  const int64_t T = static_cast<int64_t>(prompt.size());
  RETURN_IF_ERROR(CheckInputs(*model, *cache, T, options));
  ReconstructScores out;
  out.layer_begin = model->layer_begin();
  out.n_kv_heads = c.n_kv_heads;
  out.prompt_len = T;
  out.layers.resize(model->layer_end() - model->layer_begin());
  for (std::vector<float>& l : out.layers) {
    l.assign(static_cast<size_t>(c.n_kv_heads) * T, 0.0f);
    for (int g = 0; g < c.n_kv_heads; ++g) {  // sinks score 1 (always worth keeping)
      std::fill_n(l.begin() + g * T, std::min<int64_t>(options.sinks, T), 1.0f);
    }
  }
  std::vector<float> chunk_scores;
  for (int64_t b = 0; b < T; b += options.chunk_tokens) {
    const int64_t e = std::min(T, b + options.chunk_tokens);
    const std::vector<int32_t> input = RereadInput(prompt, b, e, repeat, options.overlap);
    const int64_t R = static_cast<int64_t>(input.size());
    if (c.context_length > 0 && T + R > c.context_length) {
      return absl::InvalidArgumentError(absl::StrCat(
          "reconstruct: re-reading ", R, " tokens after the prompt's ", T,
          " passes the model's context of ", c.context_length, "; use smaller chunks"));
    }
    BatchStep step;
    step.scores_only = true;
    step.sequences.push_back({cache, R, T, true});
    step.observer = [&](const LayerObservation& obs) -> absl::Status {
      ReconstructShape shape{obs.n_heads, obs.n_kv_heads, obs.head_dim, obs.n_new, T, b,
                             e,           options.sinks};
      if (obs.k_len != T + R || obs.n_new != R) {
        return absl::InternalError("reconstruct: observation does not follow the prompt");
      }
      chunk_scores.assign(static_cast<size_t>(obs.n_kv_heads) * (e - b), 0.0f);
      RETURN_IF_ERROR(cpu::LaunchReconstructScores(obs.q, obs.k, obs.k_head_stride, shape,
                                                   chunk_scores.data()));
      std::vector<float>& layer = out.layers[obs.layer - out.layer_begin];
      for (int g = 0; g < obs.n_kv_heads; ++g) {
        for (int64_t j = b; j < e; ++j) {
          float& dst = layer[g * T + j];
          dst = std::max(dst, chunk_scores[g * (e - b) + (j - b)]);
        }
      }
      return absl::OkStatus();
    };
    RETURN_IF_ERROR(model->Forward(input, step).status());
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
