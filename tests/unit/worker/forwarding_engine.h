// A StageEngine that hands every call to another one (the CPU engine): the base of the worker
// tests' stand-ins for a GPU engine, which override only what they fake (device rows, device
// sampling). Header-only; test code.
#ifndef XKV_TESTS_UNIT_WORKER_FORWARDING_ENGINE_H_
#define XKV_TESTS_UNIT_WORKER_FORWARDING_ENGINE_H_

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "model/stage_engine.h"

namespace xkv::testing {

class ForwardingEngine : public StageEngine {
 public:
  explicit ForwardingEngine(std::unique_ptr<StageEngine> inner) : inner_(std::move(inner)) {}

  const ModelConfig& config() const override { return inner_->config(); }
  int layer_begin() const override { return inner_->layer_begin(); }
  int layer_end() const override { return inner_->layer_end(); }
  int64_t weight_bytes() const override { return inner_->weight_bytes(); }
  int64_t kv_bytes_per_token() const override { return inner_->kv_bytes_per_token(); }
  std::string device() const override { return "fake-device"; }
  bool HasSequence(uint64_t id) const override { return inner_->HasSequence(id); }
  int64_t CacheLength(uint64_t id, int layer) const override {
    return inner_->CacheLength(id, layer);
  }
  void ReleaseSequence(uint64_t id) override { inner_->ReleaseSequence(id); }
  absl::StatusOr<std::vector<float>> Embed(absl::Span<const int32_t> tokens) override {
    return inner_->Embed(tokens);
  }
  absl::Status RunLayers(const EngineStep& step, const ImportanceOptions& importance,
                         absl::Span<float> hidden,
                         std::vector<EngineObservation>* observations) override {
    return inner_->RunLayers(step, importance, hidden, observations);
  }
  absl::StatusOr<std::vector<float>> Logits(absl::Span<const float> hidden,
                                            absl::Span<const int64_t> rows) override {
    return inner_->Logits(hidden, rows);
  }
  absl::Status CompactLayer(uint64_t id, int layer, int64_t prompt_len,
                            absl::Span<const std::vector<int32_t>> kept) override {
    return inner_->CompactLayer(id, layer, prompt_len, kept);
  }
  std::unique_ptr<KvCache> CacheCopy(uint64_t id) const override { return inner_->CacheCopy(id); }
  absl::Status CopySequence(uint64_t from, uint64_t to) override {
    return inner_->CopySequence(from, to);
  }
  absl::Status EmbedResident(absl::Span<const int32_t> tokens) override {
    return inner_->EmbedResident(tokens);
  }
  absl::Status RunLayersResident(const EngineStep& step, const ImportanceOptions& importance,
                                 std::vector<EngineObservation>* observations) override {
    return inner_->RunLayersResident(step, importance, observations);
  }
  absl::StatusOr<std::vector<float>> LogitsResident(absl::Span<const int64_t> rows) override {
    return inner_->LogitsResident(rows);
  }
  absl::Status LoadResident(std::vector<float> rows) override {
    return inner_->LoadResident(std::move(rows));
  }
  absl::StatusOr<absl::Span<const float>> ResidentHost() override { return inner_->ResidentHost(); }
  absl::Status UndoDecode(absl::Span<const uint64_t> ids) override {
    return inner_->UndoDecode(ids);
  }

 protected:
  StageEngine& inner() { return *inner_; }

 private:
  std::unique_ptr<StageEngine> inner_;
};

}  // namespace xkv::testing

#endif  // XKV_TESTS_UNIT_WORKER_FORWARDING_ENGINE_H_
