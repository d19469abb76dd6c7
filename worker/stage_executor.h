// One pipeline stage's core (no gRPC): a contiguous layer range [layer_begin, layer_end) of a
// Llama model, the KV caches of its sequences for those layers, the block-pool accounting, and the
// execution of batch steps (the protocol is described in proto/xkv/v1/worker.proto). Its calls take
// and answer worker.proto's messages themselves (the Worker contract has one definition):
// WorkerService and embedded/InProcessStageClient hand them through unchanged.
//
// Per step, in order: check every field (INVALID_ARGUMENT naming it, its value and the allowed
// range; nothing else happens) → validate against the stage's state (nothing changes on error) →
// plan KV blocks (RESOURCE_EXHAUSTED when they do not fit) → input rows: Embed (first stage) or the
// previous stage's rows from the StageLink (waits up to the step's link timeout) → commit the
// blocks → RunLayers over the batch, scoring the observation window of observed sequences → next
// stage: Send; last stage: Logits of each sequence's last new token and sampling (per-sequence
// Sampler, seeded at its first sample) → compaction requested by the step → block accounting synced
// to the caches. The rows stay inside the engine from input to output (StageEngine's resident
// path): on a GPU they enter as device rows when the previous stage is a GPU stage on a device
// link, leave as device rows when the next one is, and the last stage samples on the device: only
// token ids come back (plus the logits of sequences that ask for logprobs or logits, sampled on the
// host). Errors before compute leave the stage unchanged and are forwarded to the next stage
// (StageLink::SendError) so it stops waiting; errors during compute drop the step's sequences
// from this stage (their ids become unknown; the coordinator must Release them everywhere).
// With StageOptions::lookahead a stage that is both first and last queues a pure-decode step's
// successor before it answers, and answers that step from it (worker/stage_lookahead.cc).
//
// Accounting: one BlockPool per stage shared by all its layers (architecture.md §5); layer l of a
// sequence owns ceil(tokens_l / block_tokens) blocks of it, tokens_l being its cache length (after
// compaction b_l + w + decoded); with per-head tables (head_tables()) a block holds one KV head's
// tokens and a layer owns sum_h ceil(tokens_lh / block_tokens). block_bytes counts one layer's K
// and V at the engine's element size (fp32 on the CPU, bf16 on a GPU, whose physical pool is sized
// from the same capacity). Thread-safe: steps, compactions and releases are serialised; status()
// never waits for a running step.
#ifndef XKV_WORKER_STAGE_EXECUTOR_H_
#define XKV_WORKER_STAGE_EXECUTOR_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "allocator/kv_policy.h"
#include "model/importance_collector.h"
#include "model/kv_cache.h"
#include "model/llama_model.h"
#include "model/reconstruct_scorer.h"
#include "model/sampler.h"
#include "model/stage_engine.h"
#include "worker/block_pool.h"
#include "worker/stage_link.h"
#include "worker/stage_options.h"
#include "xkv/v1/worker.pb.h"

namespace xkv {

// Decode steps a stage queued ahead (StageOptions::lookahead), answered from that work, or undone.
struct LookaheadCounts {
  int64_t queued = 0, adopted = 0, discarded = 0;
};

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
  // Block tables per layer: n_kv_heads when the stage takes per-(layer, KV head) budgets
  // (StageOptions::per_head_tables on an engine that supports them), else 1.
  int head_tables() const { return head_tables_; }
  const StageOptions& options() const { return options_; }

  // LoadStage's answer for this stage: model, weights, the stage's pool and its blocks.
  xkv::v1::LoadStageResponse Description() const;
  // One step (worker.proto's protocol). First every field is checked, and nothing else happens
  // when one is out of range: link_timeout_ms in [0, kMaxLinkTimeout]; 1 to
  // options().max_step_tokens sequences carrying at most that many new tokens in all; per
  // sequence tokens size, n_new (0: the tokens' count) and position + n_new within the context
  // length; a known mode; a compact spec's budgets and sink_tokens in [0, context_length] and a
  // known policy ("" is xkv). Then the step is validated against the stage's state, a
  // compaction it carries included (CheckBudgetsFit on the cache the step will leave), so that a
  // refusal changes nothing.
  absl::StatusOr<xkv::v1::StepResponse> Step(const xkv::v1::StepRequest& request);
  // Evicts one sequence's stage layers to their budgets (right after its prompt was written; the
  // kept slots come from the scores stored by its last observed step, which top-score policies
  // need). The spec's fields are checked as in Step; NOT_FOUND for an unknown sequence.
  absl::StatusOr<xkv::v1::CompactResponse> Compact(const xkv::v1::CompactRequest& request);
  // Frees the sequences' blocks, caches and stored state; `released`: how many were known.
  xkv::v1::ReleaseResponse Release(const xkv::v1::ReleaseRequest& request);
  void ReleaseAll();

  LookaheadCounts lookahead_counts() const;

  // Health SERVING (WorkerService reports a broken link over it).
  xkv::v1::StatusResponse status() const;
  // Tokens the sequence's cache holds in a layer (-1 when unknown; a decode step queued ahead
  // not counted); tests and reports.
  int64_t CacheLength(uint64_t seq_id, int layer) const;
  // A copy of the sequence's cache (null when unknown; with a decode step queued ahead, its token
  // too); tests.
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
    std::optional<ReconstructScores> reread;  // re-read spans so far, until the last one
    bool compacted = false;                   // evicted once; never again
  };
  struct Run;  // one step in flight
  // The next decode step, queued on the engine ahead of its request (StageOptions::lookahead).
  struct Ahead {
    // The predicted StepRequest, serialized without step_id, link_timeout_ms and tokens, and the
    // tokens it was fed (once they reached the host: a step queued from the device's sample gets
    // them when that sample is finished).
    std::string key;
    std::vector<int32_t> input;
    std::vector<uint64_t> ids;  // its sequences, in order
    bool device = false;        // sampled on the device: FinishSampleResident has the tokens
    // Host sampling: the tokens drawn, with each sequence's Sampler after its draw (its own
    // Sampler stays as it was until the step is adopted).
    std::vector<int32_t> tokens;
    std::vector<std::unique_ptr<Sampler>> samplers;
    double queue_ms = 0;  // host time to queue it
  };

  StageExecutor(const StageOptions& options, std::unique_ptr<StageEngine> engine,
                std::unique_ptr<StageLink> link, BlockPool pool);

  // The field checks of Step and Compact (no state).
  absl::Status CheckFields(const xkv::v1::StepRequest& request) const;
  absl::Status CheckFields(const xkv::v1::CompactSpec& spec) const;
  // INVALID_ARGUMENT naming `field` unless the stage takes per-(layer, KV head) budgets.
  absl::Status CheckPerHead(absl::string_view field) const;
  absl::Status ValidateStep(const xkv::v1::StepRequest& step) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status ValidateSequence(const xkv::v1::StepSequence& s) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Compaction's preconditions on the cache it will see, `length(l)` tokens in layer l: each of
  // the stage's layers holds the whole T-token prompt (before decoding) and its budget is at most
  // the prefix T - window (FAILED_PRECONDITION otherwise). For every policy but full, T > window.
  absl::Status CheckBudgetsFit(uint64_t seq_id, const xkv::v1::CompactSpec& spec, int64_t T,
                               int window, absl::FunctionRef<int64_t(int)> length) const;
  // The spec's selection rule, once it names a budget for each of the stage's layers (policy
  // full needs none).
  absl::StatusOr<PolicyOptions> CompactSelection(const xkv::v1::CompactSpec& spec) const;
  absl::StatusOr<BlockPlan> PlanBlocks(const xkv::v1::StepRequest& step) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status InputRows(const xkv::v1::StepRequest& step, Run& run)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status SendRows(const xkv::v1::StepRequest& step) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SampleOnHost(const xkv::v1::StepSequence& s, absl::Span<const float> row, Sequence& q,
                    xkv::v1::SequenceResult& r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status SampleOnDevice(const xkv::v1::StepRequest& step, Run& run)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Compute(const xkv::v1::StepRequest& step, Run& run)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Output(const xkv::v1::StepRequest& step, Run& run)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Sample(const xkv::v1::StepRequest& step, Run& run)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Accumulates a re-reading step's span; after the last span, its scores (else nullopt).
  absl::StatusOr<std::optional<CollectedScores>> Reread(const xkv::v1::StepSequence& s,
                                                        EngineObservation& observation)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Observe(const xkv::v1::StepRequest& step, Run& run)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status CompactSequence(uint64_t seq_id, Sequence& seq, const xkv::v1::CompactSpec& spec)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status SyncBlocks(uint64_t seq_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The sequence's layers of this stage (tokens, blocks, bytes) appended to `out`.
  void LayerSizes(uint64_t seq_id,
                  google::protobuf::RepeatedPtrField<xkv::v1::LayerSize>* out) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Drop(uint64_t seq_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Lookahead (StageOptions::lookahead). QueueAhead queues the decode step that follows `base`
  // (whose answer `sizes` holds its sizes) when every sequence of it decoded and sampled one
  // token: `fed` holds base's tokens when the host has them, null when they are the device's
  // newest sample; `prev`: the queued step that base is, adopted but not yet applied to the
  // sequences (its draw and Sampler still pending). AheadMatches: `step` is exactly the queued
  // step; AdoptAhead answers it from the queued work (queueing the next one before it waits);
  // DiscardAhead undoes it (before any other call changes the stage; `replaced_by`: the step that
  // arrived instead, null for a release, compaction or reset); RestoreAfterAhead: after a
  // queueing that failed part-way, each sequence back to the lengths `sizes` reports, or dropped.
  void QueueAhead(const xkv::v1::StepRequest& base, const std::vector<int32_t>* fed,
                  const Ahead* prev, const xkv::v1::StepResponse& sizes)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool AheadMatches(const xkv::v1::StepRequest& step) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<xkv::v1::StepResponse> AdoptAhead(const xkv::v1::StepRequest& step)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void DiscardAhead(const xkv::v1::StepRequest* replaced_by = nullptr)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RestoreAfterAhead(const xkv::v1::StepResponse& sizes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Device sampling of q's next token: its parameters, RNG offset and penalties into r; then the
  // token drawn moves the offset and the penalties' counts on.
  static void FillDeviceDraw(const Sequence& q, RowSampling& r);
  static void CountDeviceDraw(Sequence& q, int32_t token);
  static void SetLogprobs(const std::optional<SampledLogprobs>& logprobs,
                          xkv::v1::SequenceResult& r);
  absl::Status FailBeforeCompute(const xkv::v1::StepRequest& step, absl::Status error,
                                 bool received) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  xkv::v1::BlockUsage Usage() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RefreshStatus() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const StageOptions options_;
  const std::unique_ptr<StageEngine> engine_;
  const std::unique_ptr<StageLink> link_;
  const int64_t weight_bytes_;
  const int64_t block_bytes_;
  const int64_t capacity_blocks_;  // the stage's shared pool
  const int head_tables_;

  mutable absl::Mutex mu_;
  BlockPool pool_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, Sequence> sequences_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<Ahead> ahead_ ABSL_GUARDED_BY(mu_);
  LookaheadCounts lookahead_counts_ ABSL_GUARDED_BY(mu_);
  // Queued steps undone in a row by plain decodes of other sequences, and the chances to queue one
  // still to let pass: after two such misses in a row (e.g. micro-batches alternating on one
  // stage) the stage queues only every 2^(misses - 1)-th chance, at most every 64th, until one is
  // adopted again.
  int ahead_misses_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t ahead_skips_ ABSL_GUARDED_BY(mu_) = 0;

  mutable absl::Mutex status_mu_;
  xkv::v1::StatusResponse status_ ABSL_GUARDED_BY(status_mu_);
};

}  // namespace xkv

#endif  // XKV_WORKER_STAGE_EXECUTOR_H_
