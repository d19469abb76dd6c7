// The compute behind one pipeline stage, whatever the device: a contiguous layer range of a Llama
// model plus the per-layer KV caches of its sequences. worker/StageExecutor drives it (protocol,
// block accounting, sampling); CpuStageEngine (model/cpu_stage_engine.h) and CudaLlamaModel
// (model/cuda/cuda_llama_model.h) implement it.
//
// Hidden rows cross this interface as host fp32 [tokens, hidden], or stay inside the engine on the
// resident path (what StageExecutor uses): the step's rows enter with EmbedResident (first
// stage), LoadResident (host rows from the previous stage) or LoadResidentDevice (device rows
// from a previous stage on a GPU), RunLayersResident runs the layers in place, and they leave
// with ResidentHost (host fp32 for a host link), ExportResident (device rows for a device link)
// or, on the last stage, LogitsResident / SampleResident. On a GPU the rows stay in device memory
// from the embedding to the sampled token ids (architecture.md §1).
// Sequences are named by the caller's ids; a sequence exists from its first RunLayers until
// ReleaseSequence. Layers of one sequence may hold different numbers of tokens (XKV eviction).
// Not thread-safe: the caller serialises every call.
#ifndef XKV_MODEL_STAGE_ENGINE_H_
#define XKV_MODEL_STAGE_ENGINE_H_

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/cpu/importance.h"
#include "model/importance_collector.h"
#include "model/kv_cache.h"
#include "model/model_config.h"
#include "model/sampler.h"

namespace xkv {

// Element type of device-resident rows handed between stages.
enum class RowDtype { kF32, kBf16 };

// Hidden rows [rows, width] in a device's memory, handed from one GPU stage to the next without
// host staging. `data` owns (or borrows, with a no-op deleter) the buffer; the producer has
// finished writing it when the handle is passed on (its stream synchronised). Opaque here: the
// CUDA engine and the NCCL link allocate and read it.
struct DeviceRows {
  std::shared_ptr<void> data;
  int device = -1;  // CUDA ordinal
  int64_t rows = 0, width = 0;
  RowDtype dtype = RowDtype::kF32;
  int64_t bytes() const { return rows * width * (dtype == RowDtype::kF32 ? 4 : 2); }
};

// How the last stage turns one row of the step into a token on the device (SampleResident).
struct RowSampling {
  int64_t row = 0;           // row of the step's hidden rows
  bool sample = true;        // false: no token (logits only)
  bool want_logits = false;  // copy this row's raw fp32 logits to the host
  SamplingParams params;     // logprobs ignored (the host path reports them)
  uint64_t draws = 0;        // tokens this sequence sampled before (the RNG's offset)
  // Presence/frequency penalties already summed per token: logit[id] -= delta.
  std::vector<std::pair<int32_t, float>> penalties;
};

struct SampledRows {
  std::vector<int32_t> tokens;  // [rows]: the token, -1 where sample was false
  std::vector<float> logits;    // fp32 [rows with want_logits, vocab], in row order
};

// A re-reading step of the `reconstruct` profile (model/reconstruct_scorer.h): the sequence's cache
// holds exactly its prompt (`position` tokens), the step is scores-only, and its input re-reads the
// prompt's span [chunk_begin, chunk_end) (kernels/cpu/reconstruct_importance.h).
struct RereadSpan {
  int64_t chunk_begin = 0, chunk_end = 0;  // 0 <= chunk_begin < chunk_end <= position
  int sinks = 4;                           // keys [0, min(sinks, chunk_begin)) join every softmax
};

// One sequence's part of a step: n_new consecutive hidden rows after the previous sequences'.
struct EngineSequenceStep {
  uint64_t id = 0;
  int64_t n_new = 0;  // >= 1
  // Logical position of the first new token (prompt + generated before it), never the cache length.
  int64_t position = 0;
  // Score the observation window (architecture.md §3.1): this chunk must end the prompt, hold >= w
  // tokens when the prompt is longer than w.
  bool observe = false;
  // Scores-only steps: re-read this span and report its reconstruction scores (not with observe).
  std::optional<RereadSpan> reread;
  // observe: this sequence's scoring (its request's policy: ScoringFor, model/kv_allocation.h);
  // unset: the step's (RunLayers' `importance`).
  std::optional<ImportanceOptions> scoring;
  // The last rows replay decodes (SequenceStep::replayed_decodes, model/llama_model.h); engines
  // whose arithmetic cannot follow it run them as any chunk.
  int64_t replayed_decodes = 0;
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
  // Re-reading sequences only: per stage layer, fp32 [n_kv_heads, chunk_end - chunk_begin], each
  // key's largest probability over the input's queries and its GQA group.
  std::vector<std::vector<float>> reread;
  double ms = 0.0;  // time spent scoring (device time where measurable)
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
  // Blocks of a physical KV pool the engine sized itself (from the device's memory), shared by
  // all its layers; 0: none (the caller's capacities rule).
  virtual int64_t kv_pool_blocks() const { return 0; }

  virtual bool HasSequence(uint64_t id) const = 0;
  // Tokens held by the sequence in a layer (its largest KV head's count after a per-head
  // compaction); -1 for an unknown sequence or layer.
  virtual int64_t CacheLength(uint64_t id, int layer) const = 0;
  // Tokens held by one KV head of a layer; -1 for an unknown sequence, layer or head. The default
  // (an engine whose heads always hold the layer's count) is CacheLength.
  virtual int64_t HeadCacheLength(uint64_t id, int layer, int head) const;
  // True when CompactLayer takes different counts per KV head of a layer (per-(layer, KV head)
  // budgets, `per_head=1`): the one capability check of the service (StageExecutor reports it at
  // load and refuses per-head steps and compactions otherwise). Decoding then appends one token
  // to every head.
  virtual bool supports_per_head_kv() const { return false; }
  virtual void ReleaseSequence(uint64_t id) = 0;

  // tokens: int32 [n] (first stage only). Returns fp32 [n, hidden].
  virtual absl::StatusOr<std::vector<float>> Embed(absl::Span<const int32_t> tokens) = 0;
  // Runs the stage's layers over the step in place: hidden fp32 [step.num_tokens(), hidden].
  // Unknown sequences are created. observations (optional) receives one entry per sequence.
  // Observed sequences are scored with `importance` unless they carry their own scoring.
  // On error the step's sequences may be left half-written: the caller drops them.
  virtual absl::Status RunLayers(const EngineStep& step, const ImportanceOptions& importance,
                                 absl::Span<float> hidden,
                                 std::vector<EngineObservation>* observations) = 0;
  // Final norm + lm_head of the given rows of hidden (last stage). Returns fp32 [rows, vocab].
  virtual absl::StatusOr<std::vector<float>> Logits(absl::Span<const float> hidden,
                                                    absl::Span<const int64_t> rows) = 0;
  // Keeps, per KV head h, the slots kept[h] (strictly increasing) of one layer whose cache holds
  // exactly the prompt (prompt_len tokens) and frees the rest. Heads may keep different counts
  // when supports_per_head_kv() (each head then holds, and frees, its own rows); otherwise every
  // head must keep the same count (the caller checks).
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
  // Host fp32 rows [rows, hidden] become the resident rows (a stage after the first).
  virtual absl::Status LoadResident(std::vector<float> rows);
  // The resident rows as host fp32 [rows, hidden] (valid until the next call on the engine).
  virtual absl::StatusOr<absl::Span<const float>> ResidentHost();

  // ---- device-resident hand-offs and sampling (engines whose rows live on a device) -----------
  // True when ExportResident / LoadResidentDevice / SampleResident work (the CUDA engine).
  virtual bool device_resident() const { return false; }
  // A copy of the resident rows in a fresh device buffer of `dtype` (the producer's stream is
  // synchronised before it returns).
  virtual absl::StatusOr<DeviceRows> ExportResident(RowDtype dtype);
  // Device rows (any device, fp32 or bf16) become the resident rows (fp32).
  virtual absl::Status LoadResidentDevice(const DeviceRows& rows);
  // Final norm, lm_head, penalties and sampling of the given resident rows on the device; only
  // the token ids (and the asked-for logits) come back.
  virtual absl::StatusOr<SampledRows> SampleResident(absl::Span<const RowSampling> rows);

  // ---- lookahead (StageExecutor's async decode, StageOptions::lookahead) --------------------
  // SampleResident in two halves: Start queues the work and may return before the device ran it
  // (the CUDA engine: nothing waits until Finish); Finish waits for the oldest outstanding one and
  // answers it. Up to two outstanding; the defaults sample at once inside Start.
  virtual absl::Status StartSampleResident(absl::Span<const RowSampling> rows);
  virtual absl::StatusOr<SampledRows> FinishSampleResident();
  // EmbedResident of the tokens the newest outstanding Start draws (every row must sample), read
  // where they are: on a GPU the next step's input never comes back to the host first.
  virtual absl::Status EmbedResidentSampled();
  // Takes the newest token out of every layer and KV head of each sequence (and, where the engine
  // keeps one, its position one back): undoes a one-token decode step that the caller ran ahead
  // and then discards. INVALID_ARGUMENT for an unknown or empty sequence (nothing changes).
  virtual absl::Status UndoDecode(absl::Span<const uint64_t> ids);

 private:
  std::vector<float> resident_;                              // the defaults' rows
  std::deque<absl::StatusOr<SampledRows>> pending_samples_;  // the default Start's answers
};

}  // namespace xkv

#endif  // XKV_MODEL_STAGE_ENGINE_H_
