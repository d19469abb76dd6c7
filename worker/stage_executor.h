// One pipeline stage's core (no gRPC): a contiguous layer range [layer_begin, layer_end) of a
// Llama model, the KV caches of its sequences for those layers, the block-pool accounting, and the
// execution of batch steps (the protocol is described in proto/xkv/v1/worker.proto).
//
// Per step, in order: validate (nothing changes on error) → plan KV blocks (RESOURCE_EXHAUSTED
// when they do not fit) → input rows: Embed (first stage) or the previous stage's rows from the
// StageLink (waits up to the step's link timeout) → commit the blocks → RunLayers over the batch,
// scoring the observation window of observed sequences → next stage: Send; last stage: Logits of
// each sequence's last new token and sampling (per-sequence Sampler, seeded at its first sample)
// → compaction requested by the step → block accounting synced to the caches.
// The rows stay inside the engine from input to output (StageEngine's resident path): on a GPU
// they enter as device rows when the previous stage is a GPU stage on a device link, leave as
// device rows when the next one is, and the last stage samples on the device: only token ids
// come back (plus the logits of sequences that ask for logprobs or logits, sampled on the host).
// Errors before compute leave the stage unchanged and are forwarded to the next stage
// (StageLink::SendError) so it stops waiting; errors during compute drop the step's sequences
// from this stage (their ids become unknown; the coordinator must Release them everywhere).
//
// Accounting: one BlockPool per stage shared by all its layers (architecture.md §5); layer l of a
// sequence owns ceil(tokens_l / block_tokens) blocks of it, tokens_l being its cache length (after
// compaction b_l + w + decoded). block_bytes counts one layer's K and V at the engine's element
// size (fp32 on the CPU, bf16 on a GPU, whose physical pool is sized from the same capacity).
// Thread-safe: steps, compactions and releases are serialised; status() never waits for a running
// step.
#ifndef XKV_WORKER_STAGE_EXECUTOR_H_
#define XKV_WORKER_STAGE_EXECUTOR_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "allocator/kv_policy.h"
#include "kernels/cpu/importance.h"
#include "model/gpu_memory_budget.h"
#include "model/importance_collector.h"
#include "model/kv_cache.h"
#include "model/llama_model.h"
#include "model/reconstruct_scorer.h"
#include "model/sampler.h"
#include "model/stage_engine.h"
#include "worker/block_pool.h"
#include "worker/stage_link.h"

namespace xkv {

inline constexpr int64_t kDefaultBlocksPerLayer = 4096;

struct StageOptions {
  std::string model_path;  // GGUF (Load only)
  int layer_begin = 0;
  int layer_end = -1;  // exclusive; -1 = n_layers
  int stage_index = 0;
  std::string device = "cpu";  // "cpu" or "cuda:N" (needs a CUDA build; block_tokens 16)
  int num_threads = 1;
  // kGgml: the same numerics as `xkv generate` (and llama.cpp) on a GGUF; kExact for fp32 tests.
  Numerics numerics = Numerics::kGgml;
  int block_tokens = 16;
  // The stage's ONE KV pool, shared by all its layers, in blocks of one layer's block_tokens
  // tokens; the first that is set: the sum of layer_capacity_blocks, kv_capacity_blocks per layer
  // of the stage, kv_capacity_bytes / block bytes; none: kDefaultBlocksPerLayer per layer.
  std::vector<int64_t> layer_capacity_blocks;
  int64_t kv_capacity_blocks = 0;
  int64_t kv_capacity_bytes = 0;
  // Bound on the pool (all layers, bytes; 0: none): RESOURCE_EXHAUSTED for a larger capacity.
  int64_t max_kv_bytes = 0;
  ImportanceOptions importance;
  absl::Duration link_timeout = absl::Seconds(30);  // default wait for the previous stage
  // GPU stages (model/gpu_memory_budget.h): tokens of one step, all sequences together (the step
  // scratch; 0: the model's context length + 256), and the fraction of the device's free memory
  // the stage may use (its KV pool gets what weights and scratch leave, unless a capacity above
  // is set), of which `gpu_memory_share` (stages sharing one device in one process).
  int64_t max_batched_tokens = 0;
  double gpu_memory_utilization = kDefaultGpuMemoryUtilization;
  double gpu_memory_share = 1.0;
  // Last stage on a GPU: sample on the device (only token ids come back). Off: the logits come
  // to the host and the CPU Sampler picks (tests compare the two).
  bool device_sampling = true;
};

enum class SequenceMode {
  kNormal,
  kScoresOnly,  // mini-prefill: no KV writes, no blocks; all sequences of the step must share it
  kObserve,     // prefill that also scores the observation window
  // The reconstruct profile: scores-only re-reading of `reread` over the cached prompt (position =
  // its length); the stage max-accumulates the spans' scores and, after the last one, reports
  // them (max-merged with the window's scores of its observed prefill) like kObserve.
  kReread,
};

// No KV kept: the step's sequences must all be scores-only or all not.
inline bool ScoresOnly(SequenceMode m) {
  return m == SequenceMode::kScoresOnly || m == SequenceMode::kReread;
}

struct LayerBudgetEntry {
  int layer = 0;            // model layer index
  int64_t kept_prefix = 0;  // b_l
};

// Eviction of one sequence's stage layers right after its prompt was written.
struct StageCompactSpec {
  std::vector<LayerBudgetEntry> budgets;  // must cover every layer of the stage (others ignored)
  PolicyOptions policy;                   // kind (selection rule) and sink_tokens
};

struct StageSequence {
  uint64_t seq_id = 0;
  std::vector<int32_t> tokens;  // first stage: int32 [n_new] token ids
  int64_t n_new = 0;            // >= 1
  int64_t position = 0;         // logical position of the first new token
  bool new_sequence = false;    // may create the sequence (INVALID_ARGUMENT if it holds tokens)
  SequenceMode mode = SequenceMode::kNormal;
  SamplingParams sampling;  // last stage: used at the sequence's first sample
  bool sample = true;       // last stage: sample a token (false: e.g. a non-final prompt chunk)
  bool return_logits = false;
  bool return_scores = false;               // observed: also return the raw pooled scores
  std::optional<StageCompactSpec> compact;  // compact right after this step
  RereadSpan reread;                        // kReread: the prompt span re-read
  bool reread_last = false;                 // kReread: the last span (report the scores)
};

struct StageStep {
  uint64_t step_id = 0;
  std::vector<StageSequence> sequences;
  absl::Duration link_timeout = absl::ZeroDuration();  // zero: StageOptions::link_timeout
  bool dry_run = false;                                // only plan the blocks
};

struct LayerGainCurve {
  int layer = 0;
  std::vector<double> gains;  // [P] non-increasing (LayerProfile::gain)
  double total_mass = 0.0;    // S_l
  int heads = 0;
  std::vector<float> scores;  // fp32 [heads, P], when return_scores
};

struct ObservedProfile {
  int64_t prompt_len = 0;
  int64_t prefix_len = 0;
  int window = 0;
  std::vector<LayerGainCurve> layers;  // the stage's layers; empty when prefix_len == 0
  double profile_ms = 0.0;
};

struct StageLayerSize {
  int layer = 0;
  int64_t tokens = 0;  // per KV head (KvCache length)
  int64_t blocks = 0;
  int64_t bytes = 0;  // blocks * block_bytes
};

struct StageSequenceResult {
  uint64_t seq_id = 0;
  int32_t token = -1;         // last stage, when sampled
  std::vector<float> logits;  // fp32 [vocab], when return_logits on the last stage
  std::optional<ObservedProfile> observed;
  std::vector<StageLayerSize> layers;  // after the step (scores-only steps: unchanged)
  // Last stage, with SamplingParams::logprobs >= 0: the sampled token's logprobs.
  std::optional<SampledLogprobs> logprobs;
};

struct StageTimings {
  double wait_ms = 0.0, compute_ms = 0.0, send_ms = 0.0, compact_ms = 0.0, total_ms = 0.0;
};

struct StageUsage {
  int64_t blocks_used = 0;
  int64_t blocks_free = 0;
  int64_t kv_bytes_used = 0;
  int64_t kv_bytes_capacity = 0;
};

struct StageStepResult {
  uint64_t step_id = 0;
  std::vector<StageSequenceResult> sequences;  // request order
  StageTimings timings;
  StageUsage usage;
};

struct StageCompactResult {
  std::vector<StageLayerSize> layers;
  int64_t bytes_held = 0;  // sum of the layers' bytes
  StageUsage usage;
};

struct LayerBlockUsage {
  int layer = 0;
  int64_t used = 0;  // blocks this layer's tables hold
  int64_t free = 0;  // the stage's free blocks (one pool shared by every layer)
};

struct StageStatus {
  int layer_begin = 0, layer_end = 0;
  bool is_first = false, is_last = false;
  int64_t weight_bytes = 0;
  StageUsage usage;
  std::vector<LayerBlockUsage> layers;
  int sequences = 0;
  std::string device;
  std::string model_path;
};

// The stage pool's blocks for `options` (StageOptions' capacity fields): INVALID_ARGUMENT for a
// negative one, RESOURCE_EXHAUSTED when they exceed options.max_kv_bytes.
absl::StatusOr<int64_t> KvPoolCapacity(const StageOptions& options, int num_layers,
                                       int64_t block_bytes);

class StageExecutor {
 public:
  // Loads layers [layer_begin, layer_end) (plus the embedding for the first stage, the final norm
  // and lm_head for the last) from options.model_path. `link` may be null for a single stage.
  static absl::StatusOr<std::unique_ptr<StageExecutor>> Load(const StageOptions& options,
                                                             std::unique_ptr<StageLink> link);
  // The same from weights in memory (must hold exactly the stage's range; tests).
  static absl::StatusOr<std::unique_ptr<StageExecutor>> Create(
      std::shared_ptr<const LlamaWeights> weights, const StageOptions& options,
      std::unique_ptr<StageLink> link);
  // The same over any engine (its layer range is the stage's).
  static absl::StatusOr<std::unique_ptr<StageExecutor>> Create(std::unique_ptr<StageEngine> engine,
                                                               const StageOptions& options,
                                                               std::unique_ptr<StageLink> link);
  ~StageExecutor();

  const ModelConfig& config() const { return engine_->config(); }
  int layer_begin() const { return engine_->layer_begin(); }
  int layer_end() const { return engine_->layer_end(); }
  bool is_first() const { return layer_begin() == 0; }
  bool is_last() const { return layer_end() == config().n_layers; }
  int64_t weight_bytes() const { return weight_bytes_; }
  int block_tokens() const { return options_.block_tokens; }
  int64_t block_bytes() const { return block_bytes_; }
  int64_t capacity_blocks() const { return capacity_blocks_; }  // the stage's shared pool
  const StageOptions& options() const { return options_; }

  absl::StatusOr<StageStepResult> Step(const StageStep& step);
  // Evicts one sequence's stage layers to their budgets (right after its prompt was written; the
  // kept slots come from the scores stored by its last observed step, which top-score policies
  // need). NOT_FOUND for an unknown sequence.
  absl::StatusOr<StageCompactResult> Compact(uint64_t seq_id, const StageCompactSpec& spec);
  // Frees the sequences' blocks, caches and stored state; returns how many were known.
  int Release(absl::Span<const uint64_t> seq_ids);
  void ReleaseAll();

  StageStatus status() const;
  // Tokens the sequence's cache holds in a layer (-1 when unknown); tests and reports.
  int64_t CacheLength(uint64_t seq_id, int layer) const;
  // A copy of the sequence's cache (null when unknown); tests.
  std::unique_ptr<KvCache> CacheCopy(uint64_t seq_id) const;

 private:
  struct Sequence {                    // its KV cache lives in the engine
    std::unique_ptr<Sampler> sampler;  // host sampling (CPU engines, logprobs, repetition penalty)
    // Last stage, with a repetition penalty: the prompt tokens seen before the first sample (they
    // go to the Sampler's context when it is made).
    std::vector<int32_t> context;
    // Device sampling: the request's parameters from its first sample, tokens drawn so far (the
    // RNG offset) and the penalties' counts of the generated tokens.
    std::optional<SamplingParams> device_params;
    uint64_t draws = 0;
    absl::flat_hash_map<int32_t, int32_t> counts;
    std::optional<CollectedScores> scores;    // from the last observed step, until compaction
    std::optional<ReconstructScores> reread;  // kReread spans so far, until the last one
    bool compacted = false;                   // evicted once; never again
  };
  struct Run;  // one step in flight

  StageExecutor(const StageOptions& options, std::unique_ptr<StageEngine> engine,
                std::unique_ptr<StageLink> link, BlockPool pool);

  absl::Status ValidateStep(const StageStep& step) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status ValidateSequence(const StageSequence& s) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status ValidateCompact(const StageCompactSpec& spec) const;
  absl::StatusOr<BlockPlan> PlanBlocks(const StageStep& step) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status InputRows(const StageStep& step, Run& run) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status SendRows(const StageStep& step) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SampleOnHost(const StageSequence& s, absl::Span<const float> row, Sequence& q,
                    StageSequenceResult& r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status SampleOnDevice(const StageStep& step, Run& run) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Compute(const StageStep& step, Run& run) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Output(const StageStep& step, Run& run) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Sample(const StageStep& step, Run& run) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Observe(const StageStep& step, Run& run) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Accumulates a kReread step's span; after the last span, its scores (else nullopt).
  absl::StatusOr<std::optional<CollectedScores>> Reread(const StageSequence& s,
                                                        EngineObservation& observation)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status CompactSequence(uint64_t seq_id, Sequence& seq, const StageCompactSpec& spec)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status SyncBlocks(uint64_t seq_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::vector<StageLayerSize> LayerSizes(uint64_t seq_id) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Drop(uint64_t seq_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status FailBeforeCompute(const StageStep& step, absl::Status error, bool received)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  StageUsage Usage() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RefreshStatus() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const StageOptions options_;
  const std::unique_ptr<StageEngine> engine_;
  const std::unique_ptr<StageLink> link_;
  const int64_t weight_bytes_;
  const int64_t block_bytes_;
  const int64_t capacity_blocks_;  // the stage's shared pool

  mutable absl::Mutex mu_;
  BlockPool pool_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, Sequence> sequences_ ABSL_GUARDED_BY(mu_);

  mutable absl::Mutex status_mu_;
  StageStatus status_ ABSL_GUARDED_BY(status_mu_);
};

}  // namespace xkv

#endif  // XKV_WORKER_STAGE_EXECUTOR_H_
