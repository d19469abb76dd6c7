// Drives the stages through StageClient (architecture.md §1): loads each stage's layer range,
// sends every stage the SAME step request concurrently (so they post matching receives on the
// data plane), gathers the per-stage answers into per-sequence results (the sampled token from the
// last stage, gain curves and cache sizes from every stage), and fans out Compact / Release.
#ifndef XKV_COORDINATOR_PIPELINE_DRIVER_H_
#define XKV_COORDINATOR_PIPELINE_DRIVER_H_

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
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
};

struct StageState {
  std::string address;
  int layer_begin = 0, layer_end = 0;
  int64_t weight_bytes = 0;
  int64_t capacity_blocks = 0;  // the stage's one KV pool, shared by its layers
  int64_t block_bytes = 0;
};

class PipelineDriver {
 public:
  explicit PipelineDriver(std::vector<std::unique_ptr<StageClient>> stages);

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

  // Sends `request` to every stage concurrently and merges the answers. On a failure returns the
  // root cause: the lowest-index stage's error (later stages only see the forwarded failure).
  absl::StatusOr<StepOutcome> Step(const xkv::v1::StepRequest& request);
  // Compacts one sequence on every stage (the spec carries all layers' budgets). Returns the
  // layer sizes of every layer after the compaction.
  absl::StatusOr<std::vector<xkv::v1::LayerSize>> Compact(uint64_t seq_id,
                                                          const xkv::v1::CompactSpec& spec);
  // Frees the sequences on every stage (best effort: every stage is asked; first error returned).
  absl::Status Release(absl::Span<const uint64_t> seq_ids);
  // Every stage's status; an unreachable stage yields its error in place.
  std::vector<absl::StatusOr<xkv::v1::StatusResponse>> Status();

 private:
  template <typename T, typename F>
  std::vector<absl::StatusOr<T>> FanOut(F call);

  std::vector<std::unique_ptr<StageClient>> stages_;
  mutable std::mutex mu_;
  std::vector<StageState> states_;  // guarded by mu_
};

}  // namespace xkv

#endif  // XKV_COORDINATOR_PIPELINE_DRIVER_H_
