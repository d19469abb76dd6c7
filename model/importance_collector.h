// XKV importance scores collected in a prefill (architecture.md §3.1): a LayerObserver that, for
// each observed sequence and layer, takes the prompt's last w queries (the observation window)
// and the layer's keys, runs cpu::LaunchImportance and keeps the pooled scores [heads, P].
//
// Chunked prompts: only the prompt's FINAL chunk may be observed, and it must hold >= w tokens
// (the window queries are the last w rows of that chunk; earlier chunks' queries are gone). The
// collector checks both (the observed keys must end at the prompt's last token) and answers
// FAILED_PRECONDITION otherwise; the scheduler plans a prompt's chunks so the last one has >= w
// tokens (coordinator/scheduler.h).
#ifndef XKV_MODEL_IMPORTANCE_COLLECTOR_H_
#define XKV_MODEL_IMPORTANCE_COLLECTOR_H_

#include <cstdint>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "kernels/cpu/importance.h"
#include "model/llama_model.h"
#include "model/model_config.h"

namespace xkv {

// One prompt's importance scores for the layers [layer_begin, layer_end).
struct CollectedScores {
  int layer_begin = 0;
  int layer_end = 0;
  int64_t prompt_len = 0;  // T
  int window = 0;          // w (ImportanceOptions::window)
  int heads = 0;           // rows per layer: KV heads (kKvHead) or query heads (kQueryHead)
  int n_kv_heads = 0;
  ScoreGranularity granularity = ScoreGranularity::kKvHead;
  // [layer - layer_begin]: fp32 [heads, prefix_len()] pooled scores; empty until observed.
  std::vector<std::vector<float>> layers;

  int num_layers() const { return layer_end - layer_begin; }
  // P = T - w evictable prompt positions (0 when T <= w: nothing to score or evict).
  int64_t prefix_len() const { return prompt_len > window ? prompt_len - window : 0; }
  bool has_layer(int layer) const;
  // Every layer observed (trivially true when prefix_len() == 0).
  bool complete() const;
  // fp32 [heads, prefix_len()] of a model layer (empty when not observed).
  const std::vector<float>& layer(int layer) const { return layers[layer - layer_begin]; }
};

// Metadata-only scores (no layer observed yet) for a prompt of prompt_len tokens.
CollectedScores MakeCollectedScores(const ModelConfig& config, int layer_begin, int layer_end,
                                    int64_t prompt_len, const ImportanceOptions& options);

// Not thread-safe (the model calls observers from one thread).
class ImportanceCollector {
 public:
  ImportanceCollector(const ModelConfig& config, int layer_begin, int layer_end,
                      const ImportanceOptions& options);

  // Registers `key` (the caller's request index) as a prompt of prompt_len tokens. Prompts with
  // prompt_len <= window have nothing to score: their observations are ignored.
  absl::Status Expect(int key, int64_t prompt_len);
  // The same, scored with `options` instead of the collector's (one request's own scoring).
  absl::Status Expect(int key, int64_t prompt_len, const ImportanceOptions& options);

  // Scores one layer of `key`'s prompt. obs must be the prompt's final chunk: obs.k_len equals the
  // prompt length and obs.n_new >= window (else FAILED_PRECONDITION); each layer once.
  absl::Status Observe(int key, const LayerObservation& obs);

  // An observer for one BatchStep: sequence s reports as keys[s] (keys[s] < 0: ignored).
  LayerObserver ObserverFor(std::vector<int> keys);

  // nullptr for an unknown key.
  const CollectedScores* scores(int key) const;
  // Moves the scores out (the key stays registered with empty layers).
  CollectedScores Take(int key);
  // Milliseconds spent computing `key`'s scores so far.
  double milliseconds(int key) const;

 private:
  struct Entry {
    CollectedScores scores;
    ImportanceOptions options;
    double ms = 0.0;
  };
  absl::Status CheckObservation(const Entry& e, const LayerObservation& obs) const;

  ModelConfig config_;
  int layer_begin_, layer_end_;
  ImportanceOptions options_;
  absl::flat_hash_map<int, Entry> entries_;
  std::vector<float> k_scratch_;  // fp32 [n_kv_heads][T][head_dim] when the keys are strided
};

}  // namespace xkv

#endif  // XKV_MODEL_IMPORTANCE_COLLECTOR_H_
