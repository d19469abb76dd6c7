#include "worker/stage_calls.h"

#include <vector>

#include "base/status_macros.h"
#include "worker/worker_convert.h"

namespace xkv {

void DescribeLoadedStage(const StageExecutor& stage, xkv::v1::LoadStageResponse* response) {
  ModelInfoToProto(stage.config(), response->mutable_model());
  response->set_weight_bytes(stage.weight_bytes());
  response->set_stage_capacity_blocks(stage.capacity_blocks());
  response->set_kv_capacity_bytes(stage.capacity_blocks() * stage.block_bytes());
  response->set_block_tokens(stage.block_tokens());
  response->set_block_bytes(stage.block_bytes());
}

absl::Status StepStage(StageExecutor& stage, const xkv::v1::StepRequest& request,
                       int64_t max_step_tokens, xkv::v1::StepResponse* response) {
  ASSIGN_OR_RETURN(StageStep step, StepFromProto(request, StepBoundsOf(stage, max_step_tokens)));
  ASSIGN_OR_RETURN(StageStepResult result, stage.Step(step));
  StepResultToProto(result, response);
  return absl::OkStatus();
}

absl::Status CompactOnStage(StageExecutor& stage, const xkv::v1::CompactRequest& request,
                            xkv::v1::CompactResponse* response) {
  ASSIGN_OR_RETURN(StageCompactSpec spec,
                   CompactSpecFromProto(request.compact(), stage.config().context_length));
  ASSIGN_OR_RETURN(StageCompactResult result, stage.Compact(request.seq_id(), spec));
  for (const StageLayerSize& l : result.layers) LayerSizeToProto(l, response->add_layers());
  response->set_bytes_held(result.bytes_held);
  UsageToProto(result.usage, response->mutable_usage());
  return absl::OkStatus();
}

void ReleaseOnStage(StageExecutor& stage, const xkv::v1::ReleaseRequest& request,
                    xkv::v1::ReleaseResponse* response) {
  std::vector<uint64_t> ids(request.seq_ids().begin(), request.seq_ids().end());
  response->set_released(stage.Release(ids));
  UsageToProto(stage.status().usage, response->mutable_usage());
}

void ServingStatus(const StageExecutor& stage, xkv::v1::StatusResponse* response) {
  StatusToProto(stage.status(), response);
  response->set_health(xkv::v1::STAGE_HEALTH_SERVING);
}

}  // namespace xkv
