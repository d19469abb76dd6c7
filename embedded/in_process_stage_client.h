// Embedded mode's StageClient (architecture.md §1): the coordinator's Worker calls go straight to a
// StageExecutor of this process, which takes and answers the Worker messages themselves as it does
// for the gRPC WorkerService, and the stages hand hidden rows over through in-process links
// (worker/in_process_stage_link.h). It lives in embedded/, above both coordinator/ and worker/,
// because it implements the coordinator's interface on the worker's executor.
#ifndef XKV_EMBEDDED_IN_PROCESS_STAGE_CLIENT_H_
#define XKV_EMBEDDED_IN_PROCESS_STAGE_CLIENT_H_

#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "coordinator/stage_client.h"
#include "model/gpu_memory_budget.h"
#include "model/llama_model.h"
#include "worker/in_process_stage_link.h"
#include "worker/stage_executor.h"

namespace xkv {

// What a stage of this process takes beyond LoadStage's fields (flags of `xkv serve` / generate).
struct InProcessStageSettings {
  int num_threads = 1;               // CPU threads of the stage
  std::optional<Numerics> numerics;  // the CPU engine's arithmetic; unset: kGgml (the contract's)
  int64_t max_batched_tokens = 0;    // a GPU stage's step scratch; 0: the engine's default
  double gpu_memory_utilization = kDefaultGpuMemoryUtilization;
  // StageOptions::lookahead (`xkv serve --async-decode`); unset: on for a GPU stage.
  std::optional<bool> lookahead;
};

class InProcessStageClient final : public StageClient {
 public:
  // inbox: the boundary with the previous stage (null for the first); outbox: with the next
  // (null for the last). device: "cpu" or "cuda:N"; gpu_memory_share: this stage's part of its
  // device's memory (1 / the stages of this process on it).
  InProcessStageClient(std::shared_ptr<InProcessHandoff> inbox,
                       std::shared_ptr<InProcessHandoff> outbox, std::string device,
                       InProcessStageSettings settings, double gpu_memory_share = 1.0);

  std::string address() const override { return "in-process"; }
  xkv::v1::LinkKind link_kind() const override { return xkv::v1::LINK_KIND_IN_PROCESS; }
  absl::StatusOr<xkv::v1::LoadStageResponse> LoadStage(
      const xkv::v1::LoadStageRequest& request) override;
  absl::StatusOr<xkv::v1::StepResponse> Step(const xkv::v1::StepRequest& request) override;
  absl::StatusOr<xkv::v1::CompactResponse> Compact(const xkv::v1::CompactRequest& request) override;
  absl::StatusOr<xkv::v1::ReleaseResponse> Release(const xkv::v1::ReleaseRequest& request) override;
  absl::StatusOr<xkv::v1::StatusResponse> Status() override;
  // The loaded stage's async-decode counts (StageOptions::lookahead); tests.
  absl::StatusOr<LookaheadCounts> lookahead_counts();

 private:
  absl::StatusOr<std::shared_ptr<StageExecutor>> Loaded();

  const std::shared_ptr<InProcessHandoff> inbox_, outbox_;
  const std::string device_;
  const InProcessStageSettings settings_;
  const double gpu_memory_share_;
  std::mutex mu_;
  std::shared_ptr<StageExecutor> stage_;  // guarded by mu_
};

// A chain of in-process stages, stage s on devices[s] (one device: all on it), linked by
// in-process hand-offs; stages sharing a GPU split its memory equally. INVALID_ARGUMENT for no
// stage, a device count that is neither 1 nor the number of stages, or a bad device name.
absl::StatusOr<std::vector<std::unique_ptr<StageClient>>> MakeInProcessStages(
    int num_stages, const std::vector<std::string>& devices,
    const InProcessStageSettings& settings);

}  // namespace xkv

#endif  // XKV_EMBEDDED_IN_PROCESS_STAGE_CLIENT_H_
