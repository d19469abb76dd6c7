#include "model/importance_collector.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace xkv {

bool CollectedScores::has_layer(int layer) const {
  if (layer < layer_begin || layer >= layer_end) return false;
  const int64_t want = static_cast<int64_t>(heads) * prefix_len();
  return want > 0 && static_cast<int64_t>(layers[layer - layer_begin].size()) == want;
}

bool CollectedScores::complete() const {
  if (prefix_len() == 0) return true;
  for (int l = layer_begin; l < layer_end; ++l) {
    if (!has_layer(l)) return false;
  }
  return true;
}

CollectedScores MakeCollectedScores(const ModelConfig& config, int layer_begin, int layer_end,
                                    int64_t prompt_len, const ImportanceOptions& options) {
  CollectedScores s;
  s.layer_begin = layer_begin;
  s.layer_end = layer_end;
  s.prompt_len = prompt_len;
  s.window = options.window;
  s.n_kv_heads = config.n_kv_heads;
  s.granularity = options.granularity;
  s.heads = options.granularity == ScoreGranularity::kKvHead ? config.n_kv_heads : config.n_heads;
  s.layers.resize(std::max(0, layer_end - layer_begin));
  return s;
}

ImportanceCollector::ImportanceCollector(const ModelConfig& config, int layer_begin, int layer_end,
                                         const ImportanceOptions& options)
    : config_(config), layer_begin_(layer_begin), layer_end_(layer_end), options_(options) {}

absl::Status ImportanceCollector::Expect(int key, int64_t prompt_len) {
  return Expect(key, prompt_len, options_);
}

absl::Status ImportanceCollector::Expect(int key, int64_t prompt_len,
                                         const ImportanceOptions& options) {
  if (prompt_len < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("importance collector: prompt length ", prompt_len, " must be >= 1"));
  }
  if (options.window < 1 || options.pool_kernel < 1 || options.pool_kernel % 2 == 0) {
    return absl::InvalidArgumentError(absl::StrCat("importance collector: window ", options.window,
                                                   " must be >= 1 and pool kernel ",
                                                   options.pool_kernel, " odd and >= 1"));
  }
  Entry& e = entries_[key];
  e.scores = MakeCollectedScores(config_, layer_begin_, layer_end_, prompt_len, options);
  e.options = options;
  e.ms = 0.0;
  return absl::OkStatus();
}

absl::Status ImportanceCollector::CheckObservation(const Entry& e,
                                                   const LayerObservation& obs) const {
  const CollectedScores& s = e.scores;
  if (obs.layer < layer_begin_ || obs.layer >= layer_end_) {
    return absl::InvalidArgumentError(absl::StrCat("importance collector: layer ", obs.layer,
                                                   " outside [", layer_begin_, ", ", layer_end_,
                                                   ")"));
  }
  if (obs.n_heads != config_.n_heads || obs.n_kv_heads != config_.n_kv_heads ||
      obs.head_dim != config_.head_dim) {
    return absl::InvalidArgumentError("importance collector: observation shape != model config");
  }
  if (obs.k_len != s.prompt_len) {
    return absl::FailedPreconditionError(absl::StrCat(
        "importance collector: observed keys end at ", obs.k_len, " but the prompt has ",
        s.prompt_len, " tokens; observe only the prompt's final chunk"));
  }
  if (obs.n_new < s.window) {
    return absl::FailedPreconditionError(
        absl::StrCat("importance collector: the prompt's final chunk has ", obs.n_new,
                     " tokens, fewer than the observation window w = ", s.window,
                     "; the last prefill chunk must hold at least w tokens"));
  }
  if (s.has_layer(obs.layer)) {
    return absl::FailedPreconditionError(
        absl::StrCat("importance collector: layer ", obs.layer, " observed twice"));
  }
  return absl::OkStatus();
}

absl::Status ImportanceCollector::Observe(int key, const LayerObservation& obs) {
  auto it = entries_.find(key);
  if (it == entries_.end()) {
    return absl::FailedPreconditionError(
        absl::StrCat("importance collector: observation for unregistered key ", key));
  }
  Entry& e = it->second;
  CollectedScores& s = e.scores;
  if (s.prefix_len() == 0) return absl::OkStatus();  // T <= w: nothing to score
  RETURN_IF_ERROR(CheckObservation(e, obs));
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t T = s.prompt_len, d = obs.head_dim;
  const int w = s.window;
  // The window queries are the last w rows of this (final) chunk.
  const float* q = obs.q + (obs.n_new - w) * int64_t{obs.n_heads} * d;
  const float* k = obs.k;
  if (obs.k_head_stride != T * d) {  // LaunchImportance wants [n_kv_heads, T, d] contiguous
    k_scratch_.resize(static_cast<size_t>(obs.n_kv_heads) * T * d);
    for (int g = 0; g < obs.n_kv_heads; ++g) {
      std::memcpy(k_scratch_.data() + g * T * d, obs.k + g * obs.k_head_stride,
                  T * d * sizeof(float));
    }
    k = k_scratch_.data();
  }
  std::vector<float>& out = s.layers[obs.layer - layer_begin_];
  out.assign(static_cast<size_t>(s.heads) * s.prefix_len(), 0.0f);
  const ImportanceShape shape{obs.n_heads, obs.n_kv_heads, obs.head_dim, T};
  RETURN_IF_ERROR(cpu::LaunchImportance(q, k, shape, e.options, out.data()));
  e.ms += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  return absl::OkStatus();
}

LayerObserver ImportanceCollector::ObserverFor(std::vector<int> keys) {
  return [this, keys = std::move(keys)](const LayerObservation& obs) -> absl::Status {
    if (obs.sequence < 0 || obs.sequence >= static_cast<int>(keys.size())) {
      return absl::InternalError(
          absl::StrCat("importance collector: observation of unknown sequence ", obs.sequence));
    }
    if (keys[obs.sequence] < 0) return absl::OkStatus();
    return Observe(keys[obs.sequence], obs);
  };
}

const CollectedScores* ImportanceCollector::scores(int key) const {
  auto it = entries_.find(key);
  return it == entries_.end() ? nullptr : &it->second.scores;
}

CollectedScores ImportanceCollector::Take(int key) {
  auto it = entries_.find(key);
  if (it == entries_.end()) return CollectedScores{};
  CollectedScores out = std::move(it->second.scores);
  it->second.scores =
      MakeCollectedScores(config_, layer_begin_, layer_end_, out.prompt_len, it->second.options);
  return out;
}

double ImportanceCollector::milliseconds(int key) const {
  auto it = entries_.find(key);
  return it == entries_.end() ? 0.0 : it->second.ms;
}

}  // namespace xkv
