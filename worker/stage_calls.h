// The Worker calls on a loaded stage, as one core for both ways of reaching a stage: proto request
// → StageExecutor structs (worker_convert.h) → the executor's call → proto response. WorkerService
// (gRPC, worker/worker_service.cc) and the embedded InProcessStageClient
// (embedded/in_process_stage_client.cc) both answer through these, so every response is built in
// one place. Errors are the conversion's INVALID_ARGUMENT or the executor's own status.
#ifndef XKV_WORKER_STAGE_CALLS_H_
#define XKV_WORKER_STAGE_CALLS_H_

#include <cstdint>

#include "absl/status/status.h"
#include "worker/stage_executor.h"
#include "xkv/v1/worker.pb.h"

namespace xkv {

// LoadStage's answer for a stage that just loaded: model, weights, per-layer KV capacity, blocks.
void DescribeLoadedStage(const StageExecutor& stage, xkv::v1::LoadStageResponse* response);
// Runs one step of at most max_step_tokens new tokens.
absl::Status StepStage(StageExecutor& stage, const xkv::v1::StepRequest& request,
                       int64_t max_step_tokens, xkv::v1::StepResponse* response);
absl::Status CompactOnStage(StageExecutor& stage, const xkv::v1::CompactRequest& request,
                            xkv::v1::CompactResponse* response);
void ReleaseOnStage(StageExecutor& stage, const xkv::v1::ReleaseRequest& request,
                    xkv::v1::ReleaseResponse* response);
// The stage's status, health SERVING (the caller reports a broken link over it).
void ServingStatus(const StageExecutor& stage, xkv::v1::StatusResponse* response);

}  // namespace xkv

#endif  // XKV_WORKER_STAGE_CALLS_H_
