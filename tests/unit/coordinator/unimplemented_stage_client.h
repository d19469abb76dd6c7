// A StageClient whose calls all answer UNIMPLEMENTED: test fakes derive from it and override only
// the calls their test makes.
#ifndef XKV_TESTS_UNIT_COORDINATOR_UNIMPLEMENTED_STAGE_CLIENT_H_
#define XKV_TESTS_UNIT_COORDINATOR_UNIMPLEMENTED_STAGE_CLIENT_H_

#include <string>

#include "absl/status/status.h"
#include "coordinator/stage_client.h"

namespace xkv {

class UnimplementedStageClient : public StageClient {
 public:
  std::string address() const override { return "fake-stage"; }
  xkv::v1::LinkKind link_kind() const override { return xkv::v1::LINK_KIND_GRPC; }
  absl::StatusOr<xkv::v1::LoadStageResponse> LoadStage(const xkv::v1::LoadStageRequest&) override {
    return absl::UnimplementedError("not in this test");
  }
  absl::StatusOr<xkv::v1::StepResponse> Step(const xkv::v1::StepRequest&) override {
    return absl::UnimplementedError("not in this test");
  }
  absl::StatusOr<xkv::v1::CompactResponse> Compact(const xkv::v1::CompactRequest&) override {
    return absl::UnimplementedError("not in this test");
  }
  absl::StatusOr<xkv::v1::ReleaseResponse> Release(const xkv::v1::ReleaseRequest&) override {
    return absl::UnimplementedError("not in this test");
  }
  absl::StatusOr<xkv::v1::StatusResponse> Status() override {
    return absl::UnimplementedError("not in this test");
  }
};

}  // namespace xkv

#endif  // XKV_TESTS_UNIT_COORDINATOR_UNIMPLEMENTED_STAGE_CLIENT_H_
