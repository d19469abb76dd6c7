#include "model/cpu_stage_engine.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "kernels/cpu/reconstruct_importance.h"
#include "model/kv_allocation.h"

namespace xkv {

absl::StatusOr<std::unique_ptr<CpuStageEngine>> CpuStageEngine::Create(
    std::shared_ptr<const LlamaWeights> weights, const LlamaModelOptions& options) {
  ASSIGN_OR_RETURN(std::unique_ptr<LlamaModel> model,
                   LlamaModel::Create(std::move(weights), options));
  return std::unique_ptr<CpuStageEngine>(new CpuStageEngine(std::move(model)));
}

int64_t CpuStageEngine::kv_bytes_per_token() const {
  return config().KvBytesPerTokenPerLayer(sizeof(float));
}

int64_t CpuStageEngine::CacheLength(uint64_t id, int layer) const {
  auto it = caches_.find(id);
  if (it == caches_.end() || layer < layer_begin() || layer >= layer_end()) return -1;
  return it->second->length(layer);
}

int64_t CpuStageEngine::HeadCacheLength(uint64_t id, int layer, int head) const {
  if (head < 0 || head >= config().n_kv_heads || CacheLength(id, layer) < 0) return -1;
  return caches_.at(id)->head_length(layer, head);
}

absl::StatusOr<std::vector<float>> CpuStageEngine::Embed(absl::Span<const int32_t> tokens) {
  return model_->Embed(tokens);
}

absl::Status CpuStageEngine::RunLayers(const EngineStep& step, const ImportanceOptions& importance,
                                       absl::Span<float> hidden,
                                       std::vector<EngineObservation>* observations) {
  BatchStep batch;
  batch.scores_only = step.scores_only;
  std::unique_ptr<ImportanceCollector> collector;
  std::vector<int> keys;
  std::vector<EngineObservation> local;
  std::vector<EngineObservation>& out = observations != nullptr ? *observations : local;
  out.assign(step.sequences.size(), EngineObservation{});
  for (size_t i = 0; i < step.sequences.size(); ++i) {
    const EngineSequenceStep& s = step.sequences[i];
    if (s.reread.has_value() && (!step.scores_only || s.observe)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "cpu engine: sequence ", s.id, " re-reads outside a scores-only step or also observes"));
    }
    std::unique_ptr<KvCache>& cache = caches_[s.id];
    if (cache == nullptr) cache = model_->NewCache();
    batch.sequences.push_back(
        {cache.get(), s.n_new, s.position, s.observe || s.reread, s.replayed_decodes});
    keys.push_back(s.observe ? static_cast<int>(i) : -1);
    if (s.reread) out[i].reread.resize(layer_end() - layer_begin());
    if (!s.observe) continue;
    if (collector == nullptr) {
      collector =
          std::make_unique<ImportanceCollector>(config(), layer_begin(), layer_end(), importance);
    }
    RETURN_IF_ERROR(collector->Expect(static_cast<int>(i), s.position + s.n_new,
                                      s.scoring.value_or(importance)));
  }
  LayerObserver observe = collector != nullptr ? collector->ObserverFor(keys) : nullptr;
  batch.observer = [&](const LayerObservation& obs) -> absl::Status {
    const EngineSequenceStep& s = step.sequences[obs.sequence];
    if (!s.reread) return observe != nullptr ? observe(obs) : absl::OkStatus();
    const ReconstructShape shape{obs.n_heads,         obs.n_kv_heads, obs.head_dim,
                                 obs.n_new,           s.position,     s.reread->chunk_begin,
                                 s.reread->chunk_end, s.reread->sinks};
    std::vector<float>& scores = out[obs.sequence].reread[obs.layer - layer_begin()];
    scores.assign(static_cast<size_t>(obs.n_kv_heads) * (shape.chunk_end - shape.chunk_begin), 0.f);
    return cpu::LaunchReconstructScores(obs.q, obs.k, obs.k_head_stride, shape, scores.data());
  };
  RETURN_IF_ERROR(model_->RunLayers(layer_begin(), layer_end(), batch, hidden));
  for (size_t i = 0; i < step.sequences.size(); ++i) {
    if (!step.sequences[i].observe) continue;
    out[i].scores = collector->Take(static_cast<int>(i));
    out[i].ms = collector->milliseconds(static_cast<int>(i));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<float>> CpuStageEngine::Logits(absl::Span<const float> hidden,
                                                          absl::Span<const int64_t> rows) {
  return model_->Logits(hidden, rows);
}

absl::Status CpuStageEngine::CompactLayer(uint64_t id, int layer, int64_t prompt_len,
                                          absl::Span<const std::vector<int32_t>> kept) {
  auto it = caches_.find(id);
  if (it == caches_.end()) {
    return absl::NotFoundError(absl::StrCat("cpu engine: sequence ", id, " is unknown"));
  }
  return xkv::CompactLayer(*it->second, layer, prompt_len, kept);
}

std::unique_ptr<KvCache> CpuStageEngine::CacheCopy(uint64_t id) const {
  auto it = caches_.find(id);
  if (it == caches_.end()) return nullptr;
  return std::make_unique<KvCache>(*it->second);
}

absl::Status CpuStageEngine::UndoDecode(absl::Span<const uint64_t> ids) {
  for (uint64_t id : ids) {  // all checked first: nothing changes on error
    auto it = caches_.find(id);
    for (int l = layer_begin(); l < layer_end(); ++l) {
      for (int h = 0; h < config().n_kv_heads; ++h) {
        if (it == caches_.end() || it->second->head_length(l, h) < 1) {
          return absl::InvalidArgumentError(
              absl::StrCat("cpu engine: sequence ", id, " has no decoded token to undo"));
        }
      }
    }
  }
  for (uint64_t id : ids) {
    for (int l = layer_begin(); l < layer_end(); ++l) {
      RETURN_IF_ERROR(caches_.at(id)->DropNewest(l, 1));
    }
  }
  return absl::OkStatus();
}

absl::Status CpuStageEngine::CopySequence(uint64_t from, uint64_t to) {
  auto it = caches_.find(from);
  if (it == caches_.end()) {
    return absl::NotFoundError(absl::StrCat("cpu engine: sequence ", from, " is unknown"));
  }
  if (caches_.contains(to)) {
    return absl::AlreadyExistsError(absl::StrCat("cpu engine: sequence ", to, " exists"));
  }
  caches_[to] = std::make_unique<KvCache>(*it->second);
  return absl::OkStatus();
}

}  // namespace xkv
