// Per-(layer, KV head) budgets on CUDA stages (issue 12 part 5): the service takes `per_head`
// only where every stage's engine holds a count per KV head (StageEngine::supports_per_head_kv,
// the one capability check; the CUDA engine's head-blocks do). Two CUDA stages run a per-head
// request, as a request's policy and as the admin's default, and every pool returns to idle.
#include <filesystem>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "tests/gpu/gpu_test_util.h"
#include "tests/integration/pipeline_harness.h"
#include "worker/stage_engine_factory.h"

namespace xkv {
namespace {

using testing_pipeline::CollectingSink;
using testing_pipeline::ModelPath;
using testing_pipeline::Pipeline;
using testing_pipeline::PoolState;
using testing_pipeline::StartPipeline;

InProcessStageSettings GpuSettings() {
  InProcessStageSettings s;
  s.max_batched_tokens = 512;
  s.gpu_memory_utilization = 0.2;  // the stages of the test share one GPU
  return s;
}

KvPolicyOverride PerHead() {
  KvPolicyOverride k;
  k.policy = "xkv";
  k.profile_mode = "one_pass";
  k.budget_fraction = 0.2;
  k.floor = 0.2;
  k.per_head = true;
  return k;
}

GenerateParams Request(const KvPolicyOverride& kv) {
  GenerateParams p;
  for (int i = 0; i < 40; ++i) {
    p.prompt += "Entry " + std::to_string(i) + ": locker " + std::to_string(300 + 11 * i) +
                " holds the key " + std::to_string(7919 * (i + 5) % 10007) + ". ";
  }
  p.prompt += "Which key does locker 333 hold?";
  p.max_tokens = 4;
  p.ignore_eos = true;
  p.kv = kv;
  return p;
}

TEST(GpuPerHeadTest, CudaStagesRunPerHeadBudgetsAndReturnToIdle) {
  XKV_SKIP_WITHOUT_GPU();
  if (!std::filesystem::exists(ModelPath())) GTEST_SKIP() << "no model at " << ModelPath();
  {
    StageOptions o;
    o.model_path = ModelPath();
    o.device = "cuda:0";
    o.max_batched_tokens = 512;
    o.gpu_memory_utilization = 0.2;
    absl::StatusOr<std::unique_ptr<StageEngine>> engine = LoadStageEngine(o);
    ASSERT_TRUE(engine.ok()) << engine.status();
    ASSERT_TRUE((*engine)->supports_per_head_kv());  // head-blocks: one table per KV head
  }
  absl::StatusOr<Pipeline> p = StartPipeline(2, 1, nullptr, {"cuda:0"}, GpuSettings());
  ASSERT_TRUE(p.ok()) << p.status();
  const std::vector<std::pair<int64_t, int32_t>> idle = PoolState(*p);
  // A request's own per-head policy, then the same as the admin's default policy.
  for (bool admin : {false, true}) {
    KvPolicyOverride kv = PerHead();
    if (admin) {
      ASSERT_TRUE(p->coordinator->SetPolicy(PerHead()).ok());
      kv = KvPolicyOverride{};
    }
    auto sink = std::make_shared<CollectingSink>();
    absl::StatusOr<uint64_t> id = p->coordinator->Submit(Request(kv), sink);
    ASSERT_TRUE(id.ok()) << id.status();
    auto [tokens, status] = sink->Wait();
    EXPECT_TRUE(status.ok()) << status;
    EXPECT_EQ(tokens.size(), 4u);
    EXPECT_EQ(PoolState(*p), idle);
  }
}

}  // namespace
}  // namespace xkv
