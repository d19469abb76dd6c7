// ProbeStages asks every stage its device and step limit before loading (xkv coordinator's GPU
// or CPU defaults and its step budget follow from them); AnyGpuDevice is the rule.
#include "coordinator/stage_probe.h"

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "tests/unit/coordinator/unimplemented_stage_client.h"

namespace xkv {
namespace {

// Answers Status with a device and step limit, or with an error.
class DeviceStageClient final : public UnimplementedStageClient {
 public:
  DeviceStageClient(std::string device, int64_t max_step_tokens = 0,
                    absl::Status error = absl::OkStatus())
      : device_(std::move(device)), max_step_tokens_(max_step_tokens), error_(std::move(error)) {}

  std::string address() const override { return "worker-" + device_; }
  absl::StatusOr<xkv::v1::StatusResponse> Status() override {
    if (!error_.ok()) return error_;
    xkv::v1::StatusResponse r;
    r.set_health(xkv::v1::STAGE_HEALTH_NOT_LOADED);  // asked before LoadStage
    r.set_device(device_);
    r.set_max_step_tokens(max_step_tokens_);
    return r;
  }

 private:
  std::string device_;
  int64_t max_step_tokens_;
  absl::Status error_;
};

std::vector<std::unique_ptr<StageClient>> Stages(std::vector<std::string> devices,
                                                 std::vector<int64_t> limits = {}) {
  std::vector<std::unique_ptr<StageClient>> stages;
  for (size_t i = 0; i < devices.size(); ++i) {
    stages.push_back(
        std::make_unique<DeviceStageClient>(devices[i], i < limits.size() ? limits[i] : 0));
  }
  return stages;
}

TEST(StageProbeTest, EveryStageIsAskedInOrder) {
  absl::StatusOr<StageProbe> p = ProbeStages(Stages({"cuda:1", "", "cpu"}, {16384, 4096, 8192}));
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->devices, (std::vector<std::string>{"cuda:1", "cpu", "cpu"}));  // none: cpu
  EXPECT_EQ(p->max_step_tokens, 4096);  // the smallest limit, and whose it is
  EXPECT_EQ(p->limiting_stage, 1);
}

TEST(StageProbeTest, StagesThatReportNoLimitSetNone) {
  absl::StatusOr<StageProbe> p = ProbeStages(Stages({"cpu", "cpu"}, {0, 512}));
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->max_step_tokens, 512);
  EXPECT_EQ(p->limiting_stage, 1);
  p = ProbeStages(Stages({"cpu"}));
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->max_step_tokens, 0);
  EXPECT_EQ(p->limiting_stage, -1);
}

TEST(StageProbeTest, AnUnreachableStageKeepsItsCodeAndIsNamed) {
  std::vector<std::unique_ptr<StageClient>> stages = Stages({"cuda:0"});
  stages.push_back(
      std::make_unique<DeviceStageClient>("late", 0, absl::UnavailableError("connection refused")));
  absl::StatusOr<StageProbe> p = ProbeStages(stages);
  ASSERT_EQ(p.status().code(), absl::StatusCode::kUnavailable);  // the caller retries on it
  EXPECT_EQ(p.status().message(), "stage 1 (worker-late): connection refused");
}

TEST(StageProbeTest, AStageThatTakesFewerTokensThanAStepIsRefused) {
  xkv::v1::StatusResponse status;
  EXPECT_TRUE(CheckStepLimit(status, 0, "w0:1", 512).ok());  // no limit reported
  status.set_max_step_tokens(512);
  EXPECT_TRUE(CheckStepLimit(status, 0, "w0:1", 512).ok());  // exactly enough
  EXPECT_TRUE(CheckStepLimit(status, 0, "w0:1", 256).ok());
  absl::Status s = CheckStepLimit(status, 1, "w1:2", 2048);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);  // down until the worker is restarted
  EXPECT_EQ(s.message(),
            "pipeline stage 1 (w1:2) takes at most 512 tokens per step (its --max-batched-tokens), "
            "below the coordinator's 2048; restart the worker with --max-batched-tokens 2048 or "
            "more (or the coordinator with 512 or less)");
}

TEST(StageProbeTest, AnyGpuDeviceTakesTheGpuDefaults) {
  EXPECT_FALSE(AnyGpuDevice({}));
  EXPECT_FALSE(AnyGpuDevice({"cpu", "cpu"}));
  EXPECT_FALSE(AnyGpuDevice({"cudax", "gpu:0"}));  // not a CUDA device name
  EXPECT_TRUE(AnyGpuDevice({"cuda:0"}));
  EXPECT_TRUE(AnyGpuDevice({"cpu", "cuda"}));  // a mixed pipeline too, as `xkv serve --device`
}

}  // namespace
}  // namespace xkv
