// The coordinator's view of one pipeline stage: the Worker control-plane calls
// (proto/xkv/v1/worker.proto) behind an interface, so the same driver runs stages in other
// processes (GrpcStageClient) or, in embedded mode, direct calls into a StageExecutor in this
// process (embedded/in_process_stage_client.h). Implementations must be safe to call from
// several threads: the driver calls every stage concurrently, each stage's steps from that
// stage's thread one at a time, and Compact / Release / Status from other threads meanwhile.
#ifndef XKV_COORDINATOR_STAGE_CLIENT_H_
#define XKV_COORDINATOR_STAGE_CLIENT_H_

#include <string>

#include "absl/status/statusor.h"
#include "xkv/v1/worker.pb.h"

namespace xkv {

class StageClient {
 public:
  virtual ~StageClient() = default;
  // "host:port", or "in-process" in embedded mode.
  virtual std::string address() const = 0;
  // The link kind this client's stages use between each other.
  virtual xkv::v1::LinkKind link_kind() const = 0;
  virtual absl::StatusOr<xkv::v1::LoadStageResponse> LoadStage(
      const xkv::v1::LoadStageRequest& request) = 0;
  virtual absl::StatusOr<xkv::v1::StepResponse> Step(const xkv::v1::StepRequest& request) = 0;
  virtual absl::StatusOr<xkv::v1::CompactResponse> Compact(
      const xkv::v1::CompactRequest& request) = 0;
  virtual absl::StatusOr<xkv::v1::ReleaseResponse> Release(
      const xkv::v1::ReleaseRequest& request) = 0;
  virtual absl::StatusOr<xkv::v1::StatusResponse> Status() = 0;
};

}  // namespace xkv

#endif  // XKV_COORDINATOR_STAGE_CLIENT_H_
