// Drives the stages through StageClient (architecture.md §1): loads each stage's layer range,
// sends every stage the SAME step request (so they post matching receives on the data plane),
// gathers the per-stage answers into per-sequence results (the sampled token from the last stage,
// gain curves and cache sizes from every stage), and fans out Compact / Release.
//
// Steps are asynchronous (architecture.md §6): StartStep queues a step on every stage and returns
// at once, so several steps (micro-batches over disjoint sequences) are in flight together: while
// stage 1 runs step k, stage 0 already runs step k + 1. Ordering rule: every stage runs the steps
// in the order StartStep was called (one thread per stage takes them from a FIFO and calls its
// client one step at a time). So the data plane sees the same step order on both ends of every
// link: NCCL's ncclSend / ncclRecv between two ranks pair up in that order, and the mailboxes of
// the gRPC and in-process links, keyed by step id, hold at most micro-batches - 1 early steps.
// Compact and Release take the same queues, so they reach each stage after every step started
// before them (a sequence is never freed under a step that still has to run it); Load and Status
// go to the stages directly (Status must answer while a stage is busy). A stage whose step an
// earlier stage could not be reached for (UNAVAILABLE: it sent no rows) is not asked to run it.
#ifndef XKV_COORDINATOR_PIPELINE_DRIVER_H_
#define XKV_COORDINATOR_PIPELINE_DRIVER_H_

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "coordinator/kv_manager.h"
#include "coordinator/stage_client.h"
#include "coordinator/stage_planner.h"
#include "model/sampler.h"
#include "xkv/v1/worker.pb.h"

namespace xkv {

// What LoadStages sends every stage besides its range.
struct StageLoadSettings {
  std::string model_path;
  int block_tokens = 16;
  int64_t kv_capacity_blocks = 0;  // per layer of a stage (its pool: x its layers); 0 = default
  int window = 8;
  int pool_kernel = 7;
  bool query_head_scores = false;
  int64_t link_timeout_ms = 0;
  // Non-empty: the NCCL data plane. This ncclUniqueId (128 raw bytes, fresh per load) goes to
  // every stage with link_kind NCCL, nccl_rank = stage index and nccl_world_size = stages.
  // Empty: each client's own link_kind (gRPC between worker processes, in-process when embedded).
  std::string nccl_unique_id;
};

// One sequence's answer to a step, merged over the stages.
struct SequenceStepResult {
  uint64_t seq_id = 0;
  int32_t token = -1;  // sampled by the last stage (-1: not sampled)
  // The sampled token's logprobs, when asked (WorkerSampling.logprobs).
  std::optional<SampledLogprobs> logprobs;
  // Observed / scores-only: gain curves of every layer (from all stages), ordered by layer.
  std::optional<std::vector<xkv::v1::LayerGains>> gains;
  int64_t prompt_len = 0, prefix_len = 0;
  int window = 0;
  double profile_ms = 0;                   // max over stages
  std::vector<xkv::v1::LayerSize> layers;  // every layer's size after the step, by layer
};

struct StepOutcome {
  std::vector<SequenceStepResult> sequences;  // request order
  double max_stage_ms = 0;
  double max_compute_ms = 0;      // the largest StepTimings.compute_ms of the stages
  bool from_lookahead = false;    // a stage served it from its lookahead (async decode)
  bool lookahead_undone = false;  // a stage undid a step queued ahead before it
};

struct StageState {
  std::string address;
  int layer_begin = 0, layer_end = 0;
  int64_t weight_bytes = 0;
  int64_t capacity_blocks = 0;  // the stage's one KV pool, shared by its layers
  int64_t block_bytes = 0;      // one block (of one KV head's K and V with head tables)
  int head_tables = 1;          // block tables per layer: n_kv_heads where per-head budgets run
};

class PipelineDriver {
 public:
  struct PendingStep;
  // A started step (StartStep); Wait consumes its outcome (once).
  using StepHandle = std::shared_ptr<PendingStep>;

  // Starts one thread per stage (the step queues).
  explicit PipelineDriver(std::vector<std::unique_ptr<StageClient>> stages);
  // Lets every started step finish (each stage call is bounded by its client's deadline).
  ~PipelineDriver();
  PipelineDriver(const PipelineDriver&) = delete;
  PipelineDriver& operator=(const PipelineDriver&) = delete;

  int num_stages() const { return static_cast<int>(stages_.size()); }
  std::string address(size_t stage) const { return stages_[stage]->address(); }
  // Loads (or reloads) every stage with `plan`'s ranges, concurrently (all LoadStage calls are in
  // flight together: with NCCL, creating the communicator is collective and would deadlock if the
  // stages were loaded one after another). All stages' sequences are dropped. The first error
  // (lowest stage index) is returned.
  absl::Status LoadStages(const StagePlan& plan, const StageLoadSettings& settings);
  // A copy: admin calls read it while the loop thread may reload the stages.
  std::vector<StageState> stage_states() const;
  // Per stage: its layers and KV pool, as the loaded stages reported them (the KV ledger's pools).
  std::vector<KvStage> KvStages() const;

  // Queues `request` on every stage behind the steps started before it and returns at once.
  StepHandle StartStep(xkv::v1::StepRequest request);
  // Waits until every stage answered the step and merges the answers. On a failure returns the
  // root cause: the lowest-index stage's error (later stages only see the forwarded failure).
  // Steps complete in the order they were started.
  absl::StatusOr<StepOutcome> Wait(const StepHandle& step);
  // StartStep + Wait.
  absl::StatusOr<StepOutcome> Step(const xkv::v1::StepRequest& request);
  // Compacts one sequence on every stage (the spec carries all layers' budgets). Returns the
  // layer sizes of every layer after the compaction.
  absl::StatusOr<std::vector<xkv::v1::LayerSize>> Compact(uint64_t seq_id,
                                                          const xkv::v1::CompactSpec& spec);
  // Compact in two halves: StartCompact queues it on every stage (behind the calls queued before
  // it, ahead of those queued after) and returns at once; CompactDone says whether every stage
  // answered; WaitCompact waits for the answers and merges them (once).
  struct PendingCompact;
  using CompactHandle = std::shared_ptr<PendingCompact>;
  CompactHandle StartCompact(uint64_t seq_id, const xkv::v1::CompactSpec& spec);
  static bool CompactDone(const CompactHandle& compact);
  absl::StatusOr<std::vector<xkv::v1::LayerSize>> WaitCompact(const CompactHandle& compact);
  // Frees the sequences on every stage (best effort: every stage is asked; first error returned).
  absl::Status Release(absl::Span<const uint64_t> seq_ids);
  // Every stage's status; an unreachable stage yields its error in place.
  std::vector<absl::StatusOr<xkv::v1::StatusResponse>> Status();

 private:
  // call(s, client) on every stage concurrently, each from a thread of its own.
  template <typename T, typename F>
  std::vector<absl::StatusOr<T>> FanOut(F call);
  // The same through the stages' queues: on each stage after the calls queued before it.
  template <typename T, typename F>
  std::vector<absl::StatusOr<T>> FanOutInOrder(F call);
  // FanOutInOrder's first half: queues the calls and returns their answers to come.
  template <typename T, typename F>
  std::vector<std::future<absl::StatusOr<T>>> QueueInOrder(F call);
  // Stage s's thread: runs its queued calls in order until the driver is destroyed.
  void RunStageQueue(size_t s);

  std::vector<std::unique_ptr<StageClient>> stages_;
  std::mutex queue_mu_;
  std::condition_variable queue_cv_;
  // Guarded by queue_mu_; [stage], oldest first: steps, compactions and releases.
  std::vector<std::deque<std::function<void()>>> queues_;
  bool closing_ = false;  // guarded by queue_mu_
  std::vector<std::thread> stage_threads_;
  mutable std::mutex mu_;
  std::vector<StageState> states_;  // guarded by mu_
};

}  // namespace xkv

#endif  // XKV_COORDINATOR_PIPELINE_DRIVER_H_
