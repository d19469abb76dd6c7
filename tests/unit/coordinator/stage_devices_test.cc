// StageDevices asks every stage its device before loading (xkv coordinator's GPU or CPU
// defaults follow from them); AnyGpuDevice is the rule.
#include "coordinator/stage_devices.h"

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"

namespace xkv {
namespace {

// Answers Status with a device, or with an error; counts the calls.
class DeviceStageClient final : public StageClient {
 public:
  DeviceStageClient(std::string device, absl::Status error = absl::OkStatus())
      : device_(std::move(device)), error_(std::move(error)) {}

  std::string address() const override { return "worker-" + device_; }
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
    ++calls;
    if (!error_.ok()) return error_;
    xkv::v1::StatusResponse r;
    r.set_health(xkv::v1::STAGE_HEALTH_NOT_LOADED);  // asked before LoadStage
    r.set_device(device_);
    return r;
  }
  int calls = 0;

 private:
  std::string device_;
  absl::Status error_;
};

std::vector<std::unique_ptr<StageClient>> Stages(std::vector<std::string> devices) {
  std::vector<std::unique_ptr<StageClient>> stages;
  for (std::string& d : devices) stages.push_back(std::make_unique<DeviceStageClient>(d));
  return stages;
}

TEST(StageDevicesTest, EveryStageIsAskedInOrder) {
  absl::StatusOr<std::vector<std::string>> d = StageDevices(Stages({"cuda:1", "", "cpu"}));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(*d, (std::vector<std::string>{"cuda:1", "cpu", "cpu"}));  // none reported: cpu
}

TEST(StageDevicesTest, AnUnreachableStageKeepsItsCodeAndIsNamed) {
  std::vector<std::unique_ptr<StageClient>> stages = Stages({"cuda:0"});
  stages.push_back(
      std::make_unique<DeviceStageClient>("late", absl::UnavailableError("connection refused")));
  absl::StatusOr<std::vector<std::string>> d = StageDevices(stages);
  ASSERT_EQ(d.status().code(), absl::StatusCode::kUnavailable);  // the caller retries on it
  EXPECT_EQ(d.status().message(), "stage 1 (worker-late): connection refused");
}

TEST(StageDevicesTest, AnyGpuDeviceTakesTheGpuDefaults) {
  EXPECT_FALSE(AnyGpuDevice({}));
  EXPECT_FALSE(AnyGpuDevice({"cpu", "cpu"}));
  EXPECT_FALSE(AnyGpuDevice({"cudax", "gpu:0"}));  // not a CUDA device name
  EXPECT_TRUE(AnyGpuDevice({"cuda:0"}));
  EXPECT_TRUE(AnyGpuDevice({"cpu", "cuda"}));  // a mixed pipeline too, as `xkv serve --device`
}

}  // namespace
}  // namespace xkv
