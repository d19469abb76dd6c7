// Wire (xkv.v1 Worker messages) <-> StageExecutor structs. INVALID_ARGUMENT naming the field for
// a request that cannot be converted; the executor validates the rest.
#ifndef XKV_WORKER_WORKER_CONVERT_H_
#define XKV_WORKER_WORKER_CONVERT_H_

#include "absl/status/statusor.h"
#include "worker/stage_executor.h"
#include "worker/worker_limits.h"
#include "xkv/v1/worker.pb.h"

namespace xkv {

// The stage's options (model_path, range, capacity, importance, timeouts), every field bounded
// (block_tokens <= kMaxBlockTokens, capacities >= 0, link_timeout_ms <= kMaxLinkTimeout, ...).
// device and threads come from the worker process; request.device, when set, must be the
// worker's device. model_path is taken as it is (`xkv serve`, in-process).
absl::StatusOr<StageOptions> StageOptionsFromProto(const xkv::v1::LoadStageRequest& request,
                                                   const std::string& device, int num_threads);
// For a LoadStage that came over the network: model_path must lie inside limits.model_dir
// (ResolveModelPath; replaced by its canonical path) and the KV pool within limits.max_kv_bytes
// (0: the host's memory; CheckStageKvPool) -- all before the worker drops its current stage.
absl::Status ApplyWorkerLimits(const WorkerLimits& limits, StageOptions* options);
// kept_prefix and sink_tokens in [0, context_length].
absl::StatusOr<StageCompactSpec> CompactSpecFromProto(const xkv::v1::CompactSpec& spec,
                                                      int64_t context_length);
// link_timeout_ms in [0, kMaxLinkTimeout]; per sequence n_new in [1, context_length] and
// position + n_new <= context_length; at most bounds.max_step_tokens new tokens in all.
absl::StatusOr<StageStep> StepFromProto(const xkv::v1::StepRequest& request,
                                        const StepBounds& bounds);
StepBounds StepBoundsOf(const StageExecutor& stage, int64_t max_step_tokens);

void ModelInfoToProto(const ModelConfig& config, xkv::v1::ModelInfo* out);
void UsageToProto(const StageUsage& usage, xkv::v1::BlockUsage* out);
void LayerSizeToProto(const StageLayerSize& size, xkv::v1::LayerSize* out);
void StepResultToProto(const StageStepResult& result, xkv::v1::StepResponse* out);
void StatusToProto(const StageStatus& status, xkv::v1::StatusResponse* out);

}  // namespace xkv

#endif  // XKV_WORKER_WORKER_CONVERT_H_
