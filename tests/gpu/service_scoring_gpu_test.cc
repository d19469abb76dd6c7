// The service scores as `xkv eval` does on a CUDA stage (issue 12 part 5): a Coordinator over one
// in-process CUDA stage on cuda:0 takes requests of the default xkv (maxima, max pooling over 31)
// and of snapkv (sums, average pooling over 7), each carrying its own scoring to the stage
// (StepSequence.scoring); the test recomputes each the way the eval harness does on a CUDA engine
// of the same device (the whole prompt prefilled and observed with ScoringFor's scoring,
// PlanAllocation, compaction, greedy decoding) and checks the same tokens, log-probabilities
// (1e-3: one engine kind, the same step shapes) and kept tokens per layer. The default xkv keeps
// other tokens when scored as snapkv, so a stage scoring every request alike could not pass.
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "allocator/kv_spec.h"
#include "coordinator/coordinator.h"
#include "embedded/in_process_stage_client.h"
#include "gtest/gtest.h"
#include "model/kv_allocation.h"
#include "tests/gpu/gpu_test_util.h"
#include "tests/integration/eval_reference.h"
#include "tests/integration/pipeline_harness.h"
#include "worker/stage_engine_factory.h"

namespace xkv {
namespace {

constexpr int kMaxTokens = 6;
constexpr int64_t kStepTokens = 1024;       // the whole needle prompt in one step
constexpr int64_t kBudgetTokens = 30 * 24;  // kept prefix tokens over the 30 layers

using testing_eval::LogprobSink;
using testing_pipeline::ModelPath;

KvPolicyOverride Layers(const std::string& policy) {
  return testing_eval::BudgetOverride(policy, "one_pass", kBudgetTokens);
}

InProcessStageSettings GpuSettings() {
  InProcessStageSettings s;
  s.max_batched_tokens = kStepTokens;
  s.gpu_memory_utilization = 0.2;  // the reference engine shares the GPU
  return s;
}

struct Expected {
  std::vector<int32_t> tokens;
  std::vector<float> logprobs;
  std::vector<int64_t> layer_tokens;                    // per layer after decoding
  std::vector<std::vector<std::vector<int32_t>>> kept;  // [layer][KV head]
};

// The eval harness's steps on a CUDA engine, the window scored with `scoring`.
Expected Reference(const std::vector<int32_t>& prompt, const KvSettings& spec,
                   const ImportanceOptions& scoring) {
  StageOptions so;
  so.model_path = ModelPath();
  so.device = "cuda:0";
  so.kv_capacity_blocks = 64;
  so.gpu_memory_utilization = 0.2;
  auto engine = LoadStageEngine(so);
  EXPECT_TRUE(engine.ok()) << engine.status();
  if (!engine.ok()) return {};
  StageEngine& e = **engine;
  auto run = testing_eval::RunAsEval(e, 1, prompt, spec, scoring, kMaxTokens);
  EXPECT_TRUE(run.ok()) << run.status();
  if (!run.ok()) return {};
  Expected x{run->tokens, run->logprobs, {}, run->kept};
  for (int l = 0; l < e.config().n_layers; ++l) x.layer_tokens.push_back(e.CacheLength(1, l));
  return x;
}

TEST(GpuServiceScoringTest, DefaultXkvAndSnapKvMatchTheEvalHarnessOnACudaStage) {
  XKV_SKIP_WITHOUT_GPU();
  if (!std::filesystem::exists(ModelPath())) GTEST_SKIP() << "no model at " << ModelPath();
  auto needle = testing_eval::LoadNeedlePrompt(ModelPath());
  ASSERT_TRUE(needle.ok()) << needle.status();
  const std::vector<int32_t>& prompt = needle->ids;
  const CoordinatorOptions co = testing_eval::ServiceOptions(ModelPath(), kStepTokens, 64);
  const ImportanceOptions base{co.window, co.pool_kernel};
  std::vector<std::pair<KvPolicyOverride, Expected>> cases;
  for (const char* policy : {"xkv", "snapkv"}) {
    auto spec = ApplyOverride(co.kv, Layers(policy));
    ASSERT_TRUE(spec.ok()) << spec.status();
    cases.emplace_back(Layers(policy), Reference(prompt, *spec, ScoringFor(*spec, base)));
    if (std::string(policy) == "xkv") {
      EXPECT_NE(cases.back().second.kept, Reference(prompt, *spec, base).kept)
          << "xkv scored as snapkv keeps the same tokens: the test could not tell them apart";
    }
  }
  auto clients = MakeInProcessStages(1, {"cuda:0"}, GpuSettings());
  ASSERT_TRUE(clients.ok()) << clients.status();
  auto coordinator = Coordinator::Start(co, std::move(*clients));
  ASSERT_TRUE(coordinator.ok()) << coordinator.status();
  for (const auto& [kv, want] : cases) {
    SCOPED_TRACE(kv.policy);
    GenerateParams p;
    p.prompt_ids = prompt;
    p.max_tokens = kMaxTokens;
    p.ignore_eos = true;
    p.logprobs = 0;
    p.kv = kv;
    auto sink = std::make_shared<LogprobSink>();
    ASSERT_TRUE((*coordinator)->Submit(std::move(p), sink).ok());
    ASSERT_TRUE(sink->Wait().ok()) << sink->Wait();
    EXPECT_EQ(sink->tokens_, want.tokens);
    ASSERT_EQ(sink->logprobs_.size(), want.logprobs.size());
    for (size_t t = 0; t < want.logprobs.size(); ++t) {
      EXPECT_NEAR(sink->logprobs_[t], want.logprobs[t], 1e-3) << "token " << t;
    }
    ASSERT_EQ(sink->usage_.layers_size(), static_cast<int>(want.layer_tokens.size()));
    for (int l = 0; l < sink->usage_.layers_size(); ++l) {
      EXPECT_EQ(sink->usage_.layers(l).kept_tokens(), want.layer_tokens[l]) << "layer " << l;
    }
  }
}

}  // namespace
}  // namespace xkv
