// The compute behind one pipeline stage, whatever the device: a contiguous layer range of a Llama
// model plus the per-layer KV caches of its sequences. worker/StageExecutor drives it (protocol,
// block accounting, sampling); CpuStageEngine (model/cpu_stage_engine.h) and CudaLlamaModel
// (model/cuda/cuda_llama_model.h) implement it.
//
// Hidden rows cross this interface as host fp32 [tokens, hidden] (what StageLink carries), except
// on the resident path: a stage that is both first and last runs EmbedResident → RunLayersResident
// → LogitsResident and the rows stay where the engine computes (device memory on a GPU).
// Sequences are named by the caller's ids; a sequence exists from its first RunLayers until
// ReleaseSequence. Layers of one sequence may hold different numbers of tokens (XKV eviction).
// Not thread-safe: the caller serialises every call.
#ifndef XKV_MODEL_STAGE_ENGINE_H_
#define XKV_MODEL_STAGE_ENGINE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/cpu/importance.h"
#include "model/importance_collector.h"
#include "model/kv_cache.h"
#include "model/model_config.h"

namespace xkv {

// One sequence's part of a step: n_new consecutive hidden rows after the previous sequences'.
struct EngineSequenceStep {
  uint64_t id = 0;
  int64_t n_new = 0;  // >= 1
  // Logical position of the first new token (prompt + generated before it), never the cache length.
  int64_t position = 0;
  // Score the observation window (architecture.md §3.1): this chunk must end the prompt, hold >= w
  // tokens when the prompt is longer than w.
  bool observe = false;
};

struct EngineStep {
  std::vector<EngineSequenceStep> sequences;
  // Mini-prefill: no KV kept (the caches are unchanged afterwards), hidden is not meaningful.
  bool scores_only = false;

  int64_t num_tokens() const;
  // Row index of each sequence's last new token.
  std::vector<int64_t> LastRows() const;
};

// What RunLayers reports per sequence of the step (request order).
struct EngineObservation {
  std::optional<CollectedScores> scores;  // observed sequences only
  double ms = 0.0;                        // time spent scoring (device time where measurable)
};

class StageEngine {
 public:
  virtual ~StageEngine() = default;

  virtual const ModelConfig& config() const = 0;
  virtual int layer_begin() const = 0;
  virtual int layer_end() const = 0;
  virtual int64_t weight_bytes() const = 0;
  // Bytes of K and V per cached token of one layer (fp32 on the CPU, bf16 on a GPU).
  virtual int64_t kv_bytes_per_token() const = 0;
  virtual std::string device() const = 0;  // "cpu", "cuda:0", ...

  virtual bool HasSequence(uint64_t id) const = 0;
  // Tokens held by the sequence in a layer; -1 for an unknown sequence or layer.
  virtual int64_t CacheLength(uint64_t id, int layer) const = 0;
  virtual void ReleaseSequence(uint64_t id) = 0;

  // tokens: int32 [n] (first stage only). Returns fp32 [n, hidden].
  virtual absl::StatusOr<std::vector<float>> Embed(absl::Span<const int32_t> tokens) = 0;
  // Runs the stage's layers over the step in place: hidden fp32 [step.num_tokens(), hidden].
  // Unknown sequences are created. observations (optional) receives one entry per sequence.
  // On error the step's sequences may be left half-written: the caller drops them.
  virtual absl::Status RunLayers(const EngineStep& step, const ImportanceOptions& importance,
                                 absl::Span<float> hidden,
                                 std::vector<EngineObservation>* observations) = 0;
  // Final norm + lm_head of the given rows of hidden (last stage). Returns fp32 [rows, vocab].
  virtual absl::StatusOr<std::vector<float>> Logits(absl::Span<const float> hidden,
                                                    absl::Span<const int64_t> rows) = 0;
  // Keeps, per KV head h, the slots kept[h] (strictly increasing, same count for every head) of
  // one layer whose cache holds exactly the prompt (prompt_len tokens) and frees the rest.
  virtual absl::Status CompactLayer(uint64_t id, int layer, int64_t prompt_len,
                                    absl::Span<const std::vector<int32_t>> kept) = 0;
  // An fp32 copy of the sequence's cache (null when unknown); tests and reports.
  virtual std::unique_ptr<KvCache> CacheCopy(uint64_t id) const = 0;
  // Makes `to` a new sequence holding the same slots of every layer (and the same logical
  // position) as `from`, in fresh memory: one prefill shared by several compactions (`xkv eval`).
  // NOT_FOUND for an unknown `from`, ALREADY_EXISTS for an existing `to`.
  virtual absl::Status CopySequence(uint64_t from, uint64_t to) = 0;

  // ---- resident hidden rows (a stage holding every layer) -----------------------------------
  // The same three calls with the step's hidden rows held by the engine in between: Embed's rows
  // feed the next RunLayersResident (same number of tokens), whose output rows feed
  // LogitsResident. The defaults keep them in a host buffer; the CUDA engine keeps them on the
  // device and copies only the logits out.
  virtual absl::Status EmbedResident(absl::Span<const int32_t> tokens);
  virtual absl::Status RunLayersResident(const EngineStep& step,
                                         const ImportanceOptions& importance,
                                         std::vector<EngineObservation>* observations);
  virtual absl::StatusOr<std::vector<float>> LogitsResident(absl::Span<const int64_t> rows);

 private:
  std::vector<float> resident_;  // the defaults' rows
};

}  // namespace xkv

#endif  // XKV_MODEL_STAGE_ENGINE_H_
