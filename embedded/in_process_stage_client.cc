#include "embedded/in_process_stage_client.h"

#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "worker/in_process_stage_link.h"
#include "worker/stage_engine_factory.h"
#include "worker/stage_options.h"

namespace xkv {

InProcessStageClient::InProcessStageClient(std::shared_ptr<InProcessHandoff> inbox,
                                           std::shared_ptr<InProcessHandoff> outbox,
                                           std::string device, InProcessStageSettings settings,
                                           double gpu_memory_share)
    : inbox_(std::move(inbox)),
      outbox_(std::move(outbox)),
      device_(std::move(device)),
      settings_(std::move(settings)),
      gpu_memory_share_(gpu_memory_share) {}

absl::StatusOr<std::shared_ptr<StageExecutor>> InProcessStageClient::Loaded() {
  std::lock_guard<std::mutex> lock(mu_);
  if (stage_ == nullptr) return absl::UnavailableError("stage not loaded");
  return stage_;
}

absl::StatusOr<xkv::v1::LoadStageResponse> InProcessStageClient::LoadStage(
    const xkv::v1::LoadStageRequest& request) {
  ASSIGN_OR_RETURN(StageOptions options,
                   StageOptionsFromRequest(request, device_, settings_.num_threads));
  if (settings_.numerics.has_value()) options.numerics = *settings_.numerics;
  options.max_batched_tokens = settings_.max_batched_tokens;
  options.gpu_memory_utilization = settings_.gpu_memory_utilization;
  options.gpu_memory_share = gpu_memory_share_;
  options.lookahead = settings_.lookahead.value_or(absl::StartsWith(device_, "cuda"));
  {
    std::lock_guard<std::mutex> lock(mu_);
    stage_.reset();
  }
  ASSIGN_OR_RETURN(
      std::unique_ptr<StageExecutor> stage,
      StageExecutor::Load(options, std::make_unique<InProcessStageLink>(inbox_, outbox_)));
  xkv::v1::LoadStageResponse response = stage->Description();
  std::lock_guard<std::mutex> lock(mu_);
  stage_ = std::move(stage);
  return response;
}

absl::StatusOr<LookaheadCounts> InProcessStageClient::lookahead_counts() {
  ASSIGN_OR_RETURN(std::shared_ptr<StageExecutor> stage, Loaded());
  return stage->lookahead_counts();
}

absl::StatusOr<xkv::v1::StepResponse> InProcessStageClient::Step(
    const xkv::v1::StepRequest& request) {
  ASSIGN_OR_RETURN(std::shared_ptr<StageExecutor> stage, Loaded());
  return stage->Step(request);
}

absl::StatusOr<xkv::v1::CompactResponse> InProcessStageClient::Compact(
    const xkv::v1::CompactRequest& request) {
  ASSIGN_OR_RETURN(std::shared_ptr<StageExecutor> stage, Loaded());
  return stage->Compact(request);
}

absl::StatusOr<xkv::v1::ReleaseResponse> InProcessStageClient::Release(
    const xkv::v1::ReleaseRequest& request) {
  ASSIGN_OR_RETURN(std::shared_ptr<StageExecutor> stage, Loaded());
  return stage->Release(request);
}

absl::StatusOr<xkv::v1::StatusResponse> InProcessStageClient::Status() {
  absl::StatusOr<std::shared_ptr<StageExecutor>> stage = Loaded();
  if (stage.ok()) return (*stage)->status();
  xkv::v1::StatusResponse response;
  response.set_health(xkv::v1::STAGE_HEALTH_NOT_LOADED);
  return response;
}

absl::StatusOr<std::vector<std::unique_ptr<StageClient>>> MakeInProcessStages(
    int num_stages, const std::vector<std::string>& devices,
    const InProcessStageSettings& settings) {
  if (num_stages < 1) {
    return absl::InvalidArgumentError(absl::StrCat("stages must be >= 1 (got ", num_stages, ")"));
  }
  if (devices.size() != 1 && static_cast<int>(devices.size()) != num_stages) {
    return absl::InvalidArgumentError(absl::StrCat("in-process stages: ", devices.size(),
                                                   " devices for ", num_stages,
                                                   " stages (give one device, or one per stage)"));
  }
  for (const std::string& d : devices) RETURN_IF_ERROR(ParseStageDevice(d).status());
  auto device_of = [&](int s) { return devices[devices.size() == 1 ? 0 : s]; };
  std::vector<std::shared_ptr<InProcessHandoff>> boxes;
  for (int s = 0; s + 1 < num_stages; ++s) boxes.push_back(std::make_shared<InProcessHandoff>());
  std::vector<std::unique_ptr<StageClient>> clients;
  for (int s = 0; s < num_stages; ++s) {
    int on_device = 0;  // stages of this process on the same device
    for (int t = 0; t < num_stages; ++t) on_device += device_of(t) == device_of(s) ? 1 : 0;
    clients.push_back(std::make_unique<InProcessStageClient>(
        s > 0 ? boxes[s - 1] : nullptr, s + 1 < num_stages ? boxes[s] : nullptr, device_of(s),
        settings, 1.0 / on_device));
  }
  return clients;
}

}  // namespace xkv
