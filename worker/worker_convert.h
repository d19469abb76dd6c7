// Wire (xkv.v1 Worker messages) <-> StageExecutor structs. INVALID_ARGUMENT naming the field for
// a request that cannot be converted; the executor validates the rest.
#ifndef XKV_WORKER_WORKER_CONVERT_H_
#define XKV_WORKER_WORKER_CONVERT_H_

#include "absl/status/statusor.h"
#include "worker/stage_executor.h"
#include "xkv/v1/worker.pb.h"

namespace xkv {

// The stage's options (model_path, range, capacity, importance, timeouts). device and threads
// come from the worker process; request.device, when set, must be the worker's device.
absl::StatusOr<StageOptions> StageOptionsFromProto(const xkv::v1::LoadStageRequest& request,
                                                   const std::string& device, int num_threads);
absl::StatusOr<StageCompactSpec> CompactSpecFromProto(const xkv::v1::CompactSpec& spec);
absl::StatusOr<StageStep> StepFromProto(const xkv::v1::StepRequest& request);

void ModelInfoToProto(const ModelConfig& config, xkv::v1::ModelInfo* out);
void UsageToProto(const StageUsage& usage, xkv::v1::BlockUsage* out);
void LayerSizeToProto(const StageLayerSize& size, xkv::v1::LayerSize* out);
void StepResultToProto(const StageStepResult& result, xkv::v1::StepResponse* out);
void StatusToProto(const StageStatus& status, xkv::v1::StatusResponse* out);

}  // namespace xkv

#endif  // XKV_WORKER_WORKER_CONVERT_H_
