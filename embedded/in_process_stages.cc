#include "embedded/in_process_stages.h"

#include <limits>
#include <mutex>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "worker/hidden_mailbox.h"
#include "worker/in_process_stage_link.h"
#include "worker/stage_engine_factory.h"
#include "worker/stage_executor.h"
#include "worker/worker_convert.h"

namespace xkv {
namespace {

// In-process stages take the coordinator's steps as they come (no network edge).
constexpr int64_t kUnboundedStepTokens = std::numeric_limits<int64_t>::max();

class InProcessStageClient final : public StageClient {
 public:
  InProcessStageClient(std::shared_ptr<HiddenMailbox> inbox, std::shared_ptr<HiddenMailbox> outbox,
                       std::string device, int num_threads, std::optional<Numerics> numerics)
      : inbox_(std::move(inbox)),
        outbox_(std::move(outbox)),
        device_(std::move(device)),
        num_threads_(num_threads),
        numerics_(numerics) {}

  std::string address() const override { return "in-process"; }
  xkv::v1::LinkKind link_kind() const override { return xkv::v1::LINK_KIND_IN_PROCESS; }

  absl::StatusOr<xkv::v1::LoadStageResponse> LoadStage(
      const xkv::v1::LoadStageRequest& request) override {
    ASSIGN_OR_RETURN(StageOptions options, StageOptionsFromProto(request, device_, num_threads_));
    if (numerics_.has_value()) options.numerics = *numerics_;
    {
      std::lock_guard<std::mutex> lock(mu_);
      stage_.reset();
    }
    ASSIGN_OR_RETURN(
        std::unique_ptr<StageExecutor> stage,
        StageExecutor::Load(options, std::make_unique<InProcessStageLink>(inbox_, outbox_)));
    xkv::v1::LoadStageResponse response;
    ModelInfoToProto(stage->config(), response.mutable_model());
    response.set_weight_bytes(stage->weight_bytes());
    int64_t capacity = 0;
    for (int64_t c : stage->layer_capacity_blocks()) {
      response.add_layer_capacity_blocks(c);
      capacity += c * stage->block_bytes();
    }
    response.set_kv_capacity_bytes(capacity);
    response.set_block_tokens(stage->block_tokens());
    response.set_block_bytes(stage->block_bytes());
    std::lock_guard<std::mutex> lock(mu_);
    stage_ = std::move(stage);
    return response;
  }

  absl::StatusOr<xkv::v1::StepResponse> Step(const xkv::v1::StepRequest& request) override {
    ASSIGN_OR_RETURN(std::shared_ptr<StageExecutor> stage, Loaded());
    ASSIGN_OR_RETURN(StageStep step,
                     StepFromProto(request, StepBoundsOf(*stage, kUnboundedStepTokens)));
    ASSIGN_OR_RETURN(StageStepResult result, stage->Step(step));
    xkv::v1::StepResponse response;
    StepResultToProto(result, &response);
    return response;
  }

  absl::StatusOr<xkv::v1::CompactResponse> Compact(
      const xkv::v1::CompactRequest& request) override {
    ASSIGN_OR_RETURN(std::shared_ptr<StageExecutor> stage, Loaded());
    ASSIGN_OR_RETURN(StageCompactSpec spec,
                     CompactSpecFromProto(request.compact(), stage->config().context_length));
    ASSIGN_OR_RETURN(StageCompactResult result, stage->Compact(request.seq_id(), spec));
    xkv::v1::CompactResponse response;
    for (const StageLayerSize& l : result.layers) LayerSizeToProto(l, response.add_layers());
    response.set_bytes_held(result.bytes_held);
    UsageToProto(result.usage, response.mutable_usage());
    return response;
  }

  absl::StatusOr<xkv::v1::ReleaseResponse> Release(
      const xkv::v1::ReleaseRequest& request) override {
    ASSIGN_OR_RETURN(std::shared_ptr<StageExecutor> stage, Loaded());
    std::vector<uint64_t> ids(request.seq_ids().begin(), request.seq_ids().end());
    xkv::v1::ReleaseResponse response;
    response.set_released(stage->Release(ids));
    UsageToProto(stage->status().usage, response.mutable_usage());
    return response;
  }

  absl::StatusOr<xkv::v1::StatusResponse> Status() override {
    xkv::v1::StatusResponse response;
    absl::StatusOr<std::shared_ptr<StageExecutor>> stage = Loaded();
    if (!stage.ok()) {
      response.set_health(xkv::v1::STAGE_HEALTH_NOT_LOADED);
      return response;
    }
    StatusToProto((*stage)->status(), &response);
    response.set_health(xkv::v1::STAGE_HEALTH_SERVING);
    return response;
  }

 private:
  absl::StatusOr<std::shared_ptr<StageExecutor>> Loaded() {
    std::lock_guard<std::mutex> lock(mu_);
    if (stage_ == nullptr) return absl::UnavailableError("stage not loaded");
    return stage_;
  }

  const std::shared_ptr<HiddenMailbox> inbox_, outbox_;
  const std::string device_;
  const int num_threads_;
  const std::optional<Numerics> numerics_;
  std::mutex mu_;
  std::shared_ptr<StageExecutor> stage_;
};

}  // namespace

absl::StatusOr<std::vector<std::unique_ptr<StageClient>>> MakeInProcessStages(
    const InProcessStagesOptions& o) {
  if (o.num_stages < 1) {
    return absl::InvalidArgumentError(absl::StrCat("stages: ", o.num_stages, " (must be >= 1)"));
  }
  if (o.devices.size() != 1 && static_cast<int>(o.devices.size()) != o.num_stages) {
    return absl::InvalidArgumentError(absl::StrCat("--device lists ", o.devices.size(),
                                                   " devices for ", o.num_stages, " stages"));
  }
  for (const std::string& d : o.devices) RETURN_IF_ERROR(ParseStageDevice(d).status());
  std::vector<std::shared_ptr<HiddenMailbox>> boxes;
  for (int s = 0; s + 1 < o.num_stages; ++s) boxes.push_back(std::make_shared<HiddenMailbox>());
  std::vector<std::unique_ptr<StageClient>> clients;
  for (int s = 0; s < o.num_stages; ++s) {
    clients.push_back(std::make_unique<InProcessStageClient>(
        s > 0 ? boxes[s - 1] : nullptr, s + 1 < o.num_stages ? boxes[s] : nullptr,
        o.devices[o.devices.size() == 1 ? 0 : s], std::max(1, o.threads_per_stage), o.numerics));
  }
  return clients;
}

}  // namespace xkv
