// Embedded mode's StageClient (architecture.md §1): the coordinator's Worker calls go straight to a
// StageExecutor of this process, answered by the same core as the gRPC WorkerService
// (worker/stage_calls.h), and the stages hand hidden rows over through in-process links
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
#include "model/llama_model.h"
#include "worker/hidden_mailbox.h"
#include "worker/stage_executor.h"

namespace xkv {

class InProcessStageClient final : public StageClient {
 public:
  // inbox: rows from the previous stage (null for the first); outbox: the next stage's inbox
  // (null for the last). device: "cpu" or "cuda:N"; num_threads: CPU threads of the stage;
  // numerics: the CPU engine's arithmetic (unset: the worker contract's default, kGgml).
  InProcessStageClient(std::shared_ptr<HiddenMailbox> inbox, std::shared_ptr<HiddenMailbox> outbox,
                       std::string device, int num_threads,
                       std::optional<Numerics> numerics = std::nullopt);

  std::string address() const override { return "in-process"; }
  xkv::v1::LinkKind link_kind() const override { return xkv::v1::LINK_KIND_IN_PROCESS; }
  absl::StatusOr<xkv::v1::LoadStageResponse> LoadStage(
      const xkv::v1::LoadStageRequest& request) override;
  absl::StatusOr<xkv::v1::StepResponse> Step(const xkv::v1::StepRequest& request) override;
  absl::StatusOr<xkv::v1::CompactResponse> Compact(const xkv::v1::CompactRequest& request) override;
  absl::StatusOr<xkv::v1::ReleaseResponse> Release(const xkv::v1::ReleaseRequest& request) override;
  absl::StatusOr<xkv::v1::StatusResponse> Status() override;

 private:
  absl::StatusOr<std::shared_ptr<StageExecutor>> Loaded();

  const std::shared_ptr<HiddenMailbox> inbox_, outbox_;
  const std::string device_;
  const int num_threads_;
  const std::optional<Numerics> numerics_;
  std::mutex mu_;
  std::shared_ptr<StageExecutor> stage_;  // guarded by mu_
};

// A chain of in-process stages, stage s on devices[s] (one device: all on it), each with
// num_threads CPU threads, linked by mailboxes. INVALID_ARGUMENT for no stage or a device count
// that is neither 1 nor the number of stages.
absl::StatusOr<std::vector<std::unique_ptr<StageClient>>> MakeInProcessStages(
    int num_stages, const std::vector<std::string>& devices, int num_threads,
    std::optional<Numerics> numerics = std::nullopt);

}  // namespace xkv

#endif  // XKV_EMBEDDED_IN_PROCESS_STAGE_CLIENT_H_
