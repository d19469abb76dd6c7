// The device-row hand-off plumbing without a GPU (architecture.md §1): StageExecutors over an
// engine that says its rows live on a "device" (host memory standing in for it) hand their rows
// over InProcessStageLink as DeviceRows once the next stage accepts them, and compute exactly what
// the host-row pipeline computes; a stage that does not take device rows gets host rows.
#include <cstring>
#include <memory>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "tests/unit/worker/forwarding_engine.h"
#include "tests/unit/worker/worker_test_util.h"
#include "worker/stage_engine_factory.h"

namespace xkv {
namespace {

// A StageEngine whose resident rows "live on a device": DeviceRows over a host buffer.
class FakeDeviceEngine final : public testing::ForwardingEngine {
 public:
  using ForwardingEngine::ForwardingEngine;

  int exports = 0, device_loads = 0, host_loads = 0;

  absl::Status LoadResident(std::vector<float> rows) override {
    ++host_loads;
    return inner().LoadResident(std::move(rows));
  }
  bool device_resident() const override { return true; }
  absl::StatusOr<DeviceRows> ExportResident(RowDtype dtype) override {
    EXPECT_EQ(dtype, RowDtype::kF32);  // in-process links hand fp32 rows
    absl::StatusOr<absl::Span<const float>> rows = inner().ResidentHost();
    if (!rows.ok()) return rows.status();
    auto copy = std::make_shared<std::vector<float>>(rows->begin(), rows->end());
    DeviceRows out;
    out.data = std::shared_ptr<void>(copy, copy->data());
    out.device = 0;
    out.width = config().hidden;
    out.rows = static_cast<int64_t>(copy->size()) / out.width;
    ++exports;
    return out;
  }
  absl::Status LoadResidentDevice(const DeviceRows& rows) override {
    ++device_loads;
    const float* p = static_cast<const float*>(rows.data.get());
    return inner().LoadResident(std::vector<float>(p, p + rows.rows * rows.width));
  }
};

struct Pipeline {
  std::vector<std::unique_ptr<StageExecutor>> stages;
  std::vector<FakeDeviceEngine*> engines;  // null for plain CPU stages
};

// Two stages over layers [0, 2) and [2, 4); `fake[i]`: stage i's engine is a FakeDeviceEngine.
Pipeline MakeTwoStages(std::vector<bool> fake) {
  std::vector<std::unique_ptr<StageLink>> links = MakeInProcessLinks(2);
  Pipeline p;
  for (int i = 0; i < 2; ++i) {
    StageOptions o;
    o.model_path = testing::WorkerModelPath();
    o.numerics = Numerics::kExact;
    o.layer_begin = 2 * i;
    o.layer_end = 2 * i + 2;
    o.stage_index = i;
    o.device_sampling = false;  // the fake samples on the host
    absl::StatusOr<std::unique_ptr<StageEngine>> engine = LoadStageEngine(o);
    EXPECT_TRUE(engine.ok()) << engine.status();
    if (!engine.ok()) return {};
    FakeDeviceEngine* f = nullptr;
    if (fake[i]) {
      auto wrapped = std::make_unique<FakeDeviceEngine>(*std::move(engine));
      f = wrapped.get();
      engine = std::unique_ptr<StageEngine>(std::move(wrapped));
    }
    absl::StatusOr<std::unique_ptr<StageExecutor>> s =
        StageExecutor::Create(*std::move(engine), o, std::move(links[i]));
    EXPECT_TRUE(s.ok()) << s.status();
    if (!s.ok()) return {};
    p.stages.push_back(*std::move(s));
    p.engines.push_back(f);
  }
  return p;
}

// Greedy tokens of two sequences: a batched prefill, then 6 decode steps.
std::vector<std::vector<int32_t>> Greedy(Pipeline& p) {
  const std::vector<std::vector<int32_t>> prompts = {testing::RandomTokens(12, 1),
                                                     testing::RandomTokens(7, 2)};
  std::vector<std::vector<int32_t>> out(prompts.size());
  xkv::v1::StepRequest step;
  step.set_step_id(1);
  for (size_t i = 0; i < prompts.size(); ++i) {
    *step.add_sequences() = testing::PrefillSequence(i + 1, prompts[i]);
    step.mutable_sequences(i)->set_return_logits(false);
  }
  for (int t = 0; t < 7; ++t) {
    std::vector<absl::StatusOr<xkv::v1::StepResponse>> r = testing::RunPipelineStep(p.stages, step);
    for (const auto& x : r) EXPECT_TRUE(x.ok()) << x.status();
    if (!r.back().ok()) return out;
    xkv::v1::StepRequest next;
    next.set_step_id(step.step_id() + 1);
    for (size_t i = 0; i < prompts.size(); ++i) {
      out[i].push_back(r.back()->sequences(i).token());
      *next.add_sequences() = testing::DecodeSequence(i + 1, out[i].back(),
                                                      static_cast<int64_t>(prompts[i].size()) + t);
    }
    step = std::move(next);
  }
  return out;
}

TEST(DeviceRowsLink, DeviceHandOffComputesWhatHostRowsCompute) {
  Pipeline host = MakeTwoStages({false, false});
  Pipeline device = MakeTwoStages({true, true});
  ASSERT_EQ(host.stages.size(), 2u);
  ASSERT_EQ(device.stages.size(), 2u);
  const std::vector<std::vector<int32_t>> want = Greedy(host);
  EXPECT_EQ(Greedy(device), want);
  EXPECT_EQ(device.engines[0]->exports, 7);  // every step's rows left as device rows
  EXPECT_EQ(device.engines[1]->device_loads, 7);
  EXPECT_EQ(device.engines[1]->host_loads, 0);
}

TEST(DeviceRowsLink, AStageThatTakesOnlyHostRowsGetsHostRows) {
  Pipeline mixed = MakeTwoStages({true, false});  // device-resident first stage, CPU second
  Pipeline host = MakeTwoStages({false, false});
  ASSERT_EQ(mixed.stages.size(), 2u);
  EXPECT_EQ(Greedy(mixed), Greedy(host));
  EXPECT_EQ(mixed.engines[0]->exports, 0);
}

}  // namespace
}  // namespace xkv
