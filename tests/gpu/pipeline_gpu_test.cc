// The overlapped pipeline on CUDA stages (architecture.md §6, issue 13's tests on the GPU): a
// Coordinator over 2 and 3 in-process CUDA stages on cuda:0 with 1..S micro-batches in flight
// gives every request the greedy tokens of one CUDA stage running one step at a time (device row
// hand-offs between the stages, device sampling), micro-batches really overlap, and cancelling
// requests mid-flight leaves every stage's pool at its idle count. NCCL between two GPUs is
// tests/gpu/nccl_link_test.cc (2 GPUs). Async decode on a CUDA stage gives the tokens of the option
// off.
#include <filesystem>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "coordinator/clock.h"
#include "gtest/gtest.h"
#include "tests/gpu/gpu_test_util.h"
#include "tests/integration/pipeline_harness.h"

namespace xkv {
namespace {

using testing_pipeline::CollectingSink;
using testing_pipeline::GenerateAll;
using testing_pipeline::MixedRequests;
using testing_pipeline::ModelPath;
using testing_pipeline::Pipeline;
using testing_pipeline::PoolState;
using testing_pipeline::StartPipeline;

const std::vector<std::string> kCuda0 = {"cuda:0"};

InProcessStageSettings GpuSettings() {
  InProcessStageSettings s;
  s.max_batched_tokens = 512;
  s.gpu_memory_utilization = 0.2;  // every stage of the test shares one GPU
  return s;
}

absl::StatusOr<Pipeline> StartGpuPipeline(int stages, int micro, const Clock* clock) {
  return StartPipeline(stages, micro, clock, kCuda0, GpuSettings());
}

class GpuPipelineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    XKV_SKIP_WITHOUT_GPU();
    if (!std::filesystem::exists(ModelPath())) GTEST_SKIP() << "no model at " << ModelPath();
  }
};

TEST_F(GpuPipelineTest, EveryStageAndMicroBatchCountGivesOneStagesTokens) {
  FakeClock clock;
  std::vector<std::vector<int32_t>> reference;
  {
    absl::StatusOr<Pipeline> one = StartGpuPipeline(1, 1, &clock);
    ASSERT_TRUE(one.ok()) << one.status();
    reference = GenerateAll(*one->coordinator, MixedRequests());
  }
  const std::vector<GenerateParams> requests = MixedRequests();
  ASSERT_EQ(reference.size(), requests.size());
  for (size_t i = 0; i < requests.size(); ++i) {
    ASSERT_EQ(static_cast<int64_t>(reference[i].size()), requests[i].max_tokens) << i;
  }
  testing_pipeline::ExpectEveryStageAndMicroBatchCountGives(
      2, 3, reference,
      [&](int stages, int micro) { return StartGpuPipeline(stages, micro, &clock); });
}

TEST_F(GpuPipelineTest, CancelInFlightLeavesEveryPoolIdle) {
  FakeClock clock;
  absl::StatusOr<Pipeline> p = StartGpuPipeline(2, 2, &clock);
  ASSERT_TRUE(p.ok()) << p.status();
  Coordinator& c = *p->coordinator;
  const std::vector<std::pair<int64_t, int32_t>> idle = PoolState(*p);
  std::vector<GenerateParams> requests = MixedRequests();
  std::vector<std::shared_ptr<CollectingSink>> sinks;
  std::vector<uint64_t> ids;
  for (GenerateParams& r : requests) {
    r.max_tokens = 200;  // far from done when cancelled
    sinks.push_back(std::make_shared<CollectingSink>());
    absl::StatusOr<uint64_t> id = c.Submit(r, sinks.back());
    ASSERT_TRUE(id.ok()) << id.status();
    ids.push_back(*id);
  }
  for (size_t i = 0; i < ids.size(); i += 2) c.Cancel(ids[i]);
  for (size_t i = 0; i < sinks.size(); ++i) {
    auto [tokens, status] = sinks[i]->Wait();
    if (i % 2 == 0) {
      EXPECT_EQ(status.code(), absl::StatusCode::kCancelled) << i << ": " << status;
      EXPECT_LT(tokens.size(), 200u) << i;
    } else {
      EXPECT_TRUE(status.ok()) << i << ": " << status;
      EXPECT_EQ(tokens.size(), 200u) << i;
    }
  }
  EXPECT_EQ(PoolState(*p), idle);
  EXPECT_EQ(p->log->stepped_after_release(), 0);
}

// Async decode on a CUDA stage (`xkv serve --async-decode`, on by default for one GPU stage): the
// stage queues each pure-decode batch's next step on the device (embedding, layers, device
// sampling with the seeded RNG's next offset and the penalties) before it answers, and the tokens
// are those of the option off, bit for bit, with admissions mid-decode, max_tokens, EOS, a cancel
// and xkv compactions (tests/integration/pipeline_harness.h); every pool idle after.
TEST_F(GpuPipelineTest, AsyncDecodeGivesTheTokensOfTheOptionOff) {
  FakeClock clock;
  auto start = [&](int stages, bool lookahead) {
    InProcessStageSettings settings = GpuSettings();
    settings.lookahead = lookahead;
    return StartPipeline(stages, 1, &clock, kCuda0, settings);
  };
  std::vector<std::vector<int32_t>> reference;
  {
    absl::StatusOr<Pipeline> one = start(1, false);
    ASSERT_TRUE(one.ok()) << one.status();
    reference = GenerateAll(*one->coordinator, MixedRequests());
  }
  testing_pipeline::ExpectAsyncDecodeGivesTheTokensOfTheOptionOff(2, reference, start);
}

}  // namespace
}  // namespace xkv
