// StageEngine on the CPU: LlamaModel (kernels/cpu, OpenBLAS) over the loaded layer range and one
// fp32 KvCache per sequence. Importance scores come from ImportanceCollector
// (cpu::LaunchImportance) on the observed sequences' window queries and keys.
#ifndef XKV_MODEL_CPU_STAGE_ENGINE_H_
#define XKV_MODEL_CPU_STAGE_ENGINE_H_

#include <memory>

#include "absl/container/flat_hash_map.h"
#include "model/llama_model.h"
#include "model/stage_engine.h"

namespace xkv {

class CpuStageEngine : public StageEngine {
 public:
  // The weights must hold the stage's layer range (and the embedding / head where needed).
  static absl::StatusOr<std::unique_ptr<CpuStageEngine>> Create(
      std::shared_ptr<const LlamaWeights> weights, const LlamaModelOptions& options);

  const ModelConfig& config() const override { return model_->config(); }
  int layer_begin() const override { return model_->layer_begin(); }
  int layer_end() const override { return model_->layer_end(); }
  int64_t weight_bytes() const override { return model_->weights().Bytes(); }
  int64_t kv_bytes_per_token() const override;
  std::string device() const override { return "cpu"; }

  bool HasSequence(uint64_t id) const override { return caches_.contains(id); }
  int64_t CacheLength(uint64_t id, int layer) const override;
  int64_t HeadCacheLength(uint64_t id, int layer, int head) const override;
  bool supports_per_head_kv() const override { return true; }  // KvCache keeps per-head lengths
  void ReleaseSequence(uint64_t id) override { caches_.erase(id); }

  absl::StatusOr<std::vector<float>> Embed(absl::Span<const int32_t> tokens) override;
  absl::Status RunLayers(const EngineStep& step, const ImportanceOptions& importance,
                         absl::Span<float> hidden,
                         std::vector<EngineObservation>* observations) override;
  absl::StatusOr<std::vector<float>> Logits(absl::Span<const float> hidden,
                                            absl::Span<const int64_t> rows) override;
  absl::Status CompactLayer(uint64_t id, int layer, int64_t prompt_len,
                            absl::Span<const std::vector<int32_t>> kept) override;
  std::unique_ptr<KvCache> CacheCopy(uint64_t id) const override;
  absl::Status CopySequence(uint64_t from, uint64_t to) override;
  absl::Status UndoDecode(absl::Span<const uint64_t> ids) override;

 private:
  explicit CpuStageEngine(std::unique_ptr<LlamaModel> model) : model_(std::move(model)) {}

  std::unique_ptr<LlamaModel> model_;
  absl::flat_hash_map<uint64_t, std::unique_ptr<KvCache>> caches_;
};

}  // namespace xkv

#endif  // XKV_MODEL_CPU_STAGE_ENGINE_H_
