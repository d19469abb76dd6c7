// The GPU serving path through StageExecutor on the real model ($XKV_MODEL, else models/ of this
// checkout), device cuda:0:
// - device sampling: greedy tokens (with and without presence/frequency penalties) equal the
//   host path's (the same engine's fp32 logits copied out and sampled by the CPU Sampler): both
//   take the argmax of the same logits, penalized by the same float sums; a request with logprobs
//   is sampled on the host (its logprobs come back); seeded sampling (temperature, top-k, top-p,
//   min-p, penalties) repeats exactly with the same seed and changes with another; min_p = 1 and
//   top_k = 1 leave only the argmax;
// - device-resident hand-offs: two CUDA stages in one process hand over device rows (a device
//   copy, fp32) and give the same greedy tokens as one stage; so does the host hand-off;
// - sizing: --max-batched-tokens above what the device holds is refused at load with the limit;
//   without a capacity, the KV pool comes from --gpu-memory-utilization.
#include <sys/stat.h>

#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/loaded_model.h"
#include "tests/gpu/gpu_test_util.h"
#include "worker/in_process_stage_link.h"
#include "worker/stage_engine_factory.h"
#include "worker/stage_executor.h"

namespace xkv {
namespace {

using ::testing::HasSubstr;

constexpr int kDecodeSteps = 40;

std::string ModelPath() { return gpu_test::RealModelPath(); }

#define SKIP_WITHOUT_MODEL()                                 \
  XKV_SKIP_WITHOUT_GPU();                                    \
  if (struct stat st; stat(ModelPath().c_str(), &st) != 0) { \
    GTEST_SKIP() << "no model at " << ModelPath();           \
  }

const char* const kPrompts[] = {
    "Once upon a time, in a small village at the edge of a great forest, there lived",
    "Question: what is the capital of France, and why is it famous? Answer:",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "The three most important inventions of the twentieth century are",
};

StageOptions Options(int begin, int end) {
  StageOptions o;
  o.model_path = ModelPath();
  o.device = "cuda:0";
  o.layer_begin = begin;
  o.layer_end = end;
  o.kv_capacity_blocks = 256;
  o.max_batched_tokens = 1024;
  return o;
}

std::vector<std::vector<int32_t>> Prompts() {
  absl::StatusOr<LoadedModel> loaded = LoadModel(ModelPath(), 1, Numerics::kExact);
  EXPECT_TRUE(loaded.ok()) << loaded.status();
  std::vector<std::vector<int32_t>> out;
  for (const char* p : kPrompts) {
    absl::StatusOr<std::vector<int32_t>> t = loaded->tokenizer->Encode(p, false);
    EXPECT_TRUE(t.ok());
    out.push_back(*t);
  }
  return out;
}

// The Worker contract's form of `p`.
xkv::v1::WorkerSampling WireSampling(const SamplingParams& p) {
  xkv::v1::WorkerSampling w;
  w.set_temperature(p.temperature);
  w.set_top_k(p.top_k);
  w.set_top_p(p.top_p);
  w.set_seed(p.seed);
  w.set_min_p(p.min_p);
  w.set_presence_penalty(p.presence_penalty);
  w.set_frequency_penalty(p.frequency_penalty);
  if (p.logprobs >= 0) w.set_logprobs(p.logprobs);
  if (p.repetition_penalty != 1.f) w.set_repetition_penalty(p.repetition_penalty);
  return w;
}

// Runs one step on every stage concurrently (as the coordinator does); the last stage's result.
absl::StatusOr<xkv::v1::StepResponse> RunStep(std::vector<std::unique_ptr<StageExecutor>>& stages,
                                              const xkv::v1::StepRequest& step) {
  std::vector<absl::StatusOr<xkv::v1::StepResponse>> r(stages.size(),
                                                       absl::UnknownError("not run"));
  std::vector<std::thread> threads;
  for (size_t i = 0; i < stages.size(); ++i) {
    threads.emplace_back([&, i] { r[i] = stages[i]->Step(step); });
  }
  for (std::thread& t : threads) t.join();
  for (auto& x : r) {
    if (!x.ok()) return x.status();
  }
  return r.back();
}

// Prefill of every prompt in one step, then kDecodeSteps batched decode steps; the tokens of each
// sequence (ids base + i) and, when logprobs are asked, whether each sample reported them.
struct Generated {
  std::vector<std::vector<int32_t>> tokens;
  bool all_logprobs = true;
};

Generated Generate(std::vector<std::unique_ptr<StageExecutor>>& stages,
                   const std::vector<std::vector<int32_t>>& prompts,
                   const std::vector<SamplingParams>& params, uint64_t base) {
  Generated g;
  g.tokens.resize(prompts.size());
  xkv::v1::StepRequest step;
  step.set_step_id(base * 1000);
  for (size_t i = 0; i < prompts.size(); ++i) {
    xkv::v1::StepSequence* s = step.add_sequences();
    s->set_seq_id(base + i);
    s->mutable_tokens()->Add(prompts[i].begin(), prompts[i].end());
    s->set_n_new(static_cast<int64_t>(prompts[i].size()));
    s->set_new_sequence(true);
    *s->mutable_sampling() = WireSampling(params[i]);
  }
  for (int t = 0; t <= kDecodeSteps; ++t) {
    absl::StatusOr<xkv::v1::StepResponse> r = RunStep(stages, step);
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) return g;
    for (size_t i = 0; i < prompts.size(); ++i) {
      const xkv::v1::SequenceResult& got = r->sequences(i);
      g.tokens[i].push_back(got.token());
      if (params[i].logprobs >= 0) {
        g.all_logprobs = g.all_logprobs && got.has_logprob() &&
                         got.top_ids_size() == params[i].logprobs &&
                         got.top_logprobs_size() == params[i].logprobs &&
                         (params[i].logprobs == 0 || got.logprob() <= got.top_logprobs(0));
      }
    }
    xkv::v1::StepRequest next;
    next.set_step_id(step.step_id() + 1);
    for (size_t i = 0; i < prompts.size(); ++i) {
      xkv::v1::StepSequence* s = next.add_sequences();
      s->set_seq_id(base + i);
      s->add_tokens(g.tokens[i].back());
      s->set_n_new(1);
      s->set_position(static_cast<int64_t>(prompts[i].size()) + t);
    }
    step = std::move(next);
  }
  xkv::v1::ReleaseRequest release;
  for (size_t i = 0; i < prompts.size(); ++i) release.add_seq_ids(base + i);
  for (auto& s : stages) s->Release(release);
  return g;
}

std::vector<std::unique_ptr<StageExecutor>> OneStage(bool device_sampling) {
  absl::StatusOr<LoadedModel> loaded = LoadModel(ModelPath(), 1, Numerics::kExact);
  StageOptions o = Options(0, loaded->config.n_layers);
  o.device_sampling = device_sampling;
  absl::StatusOr<std::unique_ptr<StageExecutor>> s = StageExecutor::Load(o, nullptr);
  EXPECT_TRUE(s.ok()) << s.status();
  std::vector<std::unique_ptr<StageExecutor>> out;
  if (s.ok()) out.push_back(*std::move(s));
  return out;
}

TEST(DeviceSampling, GreedyEqualsTheHostPath) {
  SKIP_WITHOUT_MODEL();
  const std::vector<std::vector<int32_t>> prompts = Prompts();
  std::vector<SamplingParams> params(prompts.size());  // greedy
  params[1].presence_penalty = 0.7f;
  params[2].frequency_penalty = 0.4f;
  params[3].presence_penalty = -0.3f;
  params[3].frequency_penalty = 1.1f;
  std::vector<std::unique_ptr<StageExecutor>> host = OneStage(false), device = OneStage(true);
  ASSERT_EQ(host.size(), 1u);
  ASSERT_EQ(device.size(), 1u);
  const Generated want = Generate(host, prompts, params, 100);
  const Generated got = Generate(device, prompts, params, 100);
  for (size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_EQ(got.tokens[i], want.tokens[i]) << "sequence " << i;
  }
  // A request with logprobs is sampled on the host: its logprobs come back, the tokens agree.
  params[0].logprobs = 3;
  const Generated logprobs = Generate(device, prompts, params, 200);
  EXPECT_TRUE(logprobs.all_logprobs);
  EXPECT_EQ(logprobs.tokens[0], want.tokens[0]);
}

TEST(DeviceSampling, SeededSamplingRepeatsAndTruncationsHold) {
  SKIP_WITHOUT_MODEL();
  const std::vector<std::vector<int32_t>> prompts = Prompts();
  std::vector<std::unique_ptr<StageExecutor>> stage = OneStage(true);
  ASSERT_EQ(stage.size(), 1u);
  std::vector<SamplingParams> params(prompts.size());
  for (size_t i = 0; i < params.size(); ++i) {
    params[i].temperature = 1.0f;
    params[i].top_k = i == 0 ? 0 : 50;
    params[i].top_p = i == 1 ? 1.f : 0.95f;
    params[i].min_p = i == 2 ? 0.f : 0.02f;
    params[i].presence_penalty = i == 3 ? 0.5f : 0.f;
    params[i].seed = 7 + i;
  }
  const Generated a = Generate(stage, prompts, params, 300);
  const Generated b = Generate(stage, prompts, params, 400);
  EXPECT_EQ(a.tokens, b.tokens);  // same seeds, same tokens
  for (SamplingParams& p : params) p.seed += 1000;
  const Generated c = Generate(stage, prompts, params, 500);
  EXPECT_NE(a.tokens, c.tokens);  // 4 x 41 draws at temperature 1
  // min_p = 1 and top_k = 1 keep only the argmax: greedy, whatever the temperature and seed.
  std::vector<SamplingParams> greedy(prompts.size());
  const Generated want = Generate(stage, prompts, greedy, 600);
  for (size_t i = 0; i < params.size(); ++i) {
    params[i] = SamplingParams();
    params[i].temperature = 1.5f;
    params[i].seed = 99 + i;
    if (i % 2 == 0) params[i].min_p = 1.f;
    if (i % 2 == 1) params[i].top_k = 1;
  }
  const Generated truncated = Generate(stage, prompts, params, 700);
  EXPECT_EQ(truncated.tokens, want.tokens);
}

// Two CUDA stages on cuda:0 in one process: device rows from stage 0 to stage 1 (a device copy),
// the same greedy tokens as one stage; the host hand-off gives them too.
TEST(DeviceHandOff, TwoStagesInOneProcessEqualOneStage) {
  SKIP_WITHOUT_MODEL();
  const std::vector<std::vector<int32_t>> prompts = Prompts();
  const std::vector<SamplingParams> params(prompts.size());
  std::vector<std::unique_ptr<StageExecutor>> one = OneStage(true);
  ASSERT_EQ(one.size(), 1u);
  const Generated want = Generate(one, prompts, params, 100);
  one.clear();
  absl::StatusOr<LoadedModel> loaded = LoadModel(ModelPath(), 1, Numerics::kExact);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  const int L = loaded->config.n_layers;
  for (bool device_rows : {true, false}) {
    std::vector<std::unique_ptr<StageLink>> links = MakeInProcessLinks(2);
    StageLink* first_link = links[0].get();
    StageLink* second_link = links[1].get();
    std::vector<std::unique_ptr<StageExecutor>> stages;
    for (int i = 0; i < 2; ++i) {
      StageOptions o = Options(i == 0 ? 0 : L / 2, i == 0 ? L / 2 : L);
      o.stage_index = i;
      absl::StatusOr<std::unique_ptr<StageExecutor>> s =
          StageExecutor::Load(o, std::move(links[i]));
      ASSERT_TRUE(s.ok()) << s.status();
      stages.push_back(*std::move(s));
    }
    ASSERT_TRUE(first_link->SendsDeviceRows()) << "stage 1 should take device rows";
    if (!device_rows) second_link->AcceptDeviceRows(false);
    EXPECT_EQ(first_link->SendsDeviceRows(), device_rows);
    const Generated got = Generate(stages, prompts, params, 100);
    for (size_t i = 0; i < prompts.size(); ++i) {
      EXPECT_EQ(got.tokens[i], want.tokens[i])
          << "sequence " << i << " device rows " << device_rows;
    }
  }
}

TEST(GpuSizing, MaxBatchedTokensAboveTheDeviceIsRefusedWithTheLimit) {
  SKIP_WITHOUT_MODEL();
  StageOptions o = Options(0, -1);
  o.kv_capacity_blocks = 0;  // sized from memory: the check applies
  o.max_batched_tokens = int64_t{1} << 36;
  absl::StatusOr<std::unique_ptr<StageExecutor>> s = StageExecutor::Load(o, nullptr);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(s.status().message(), HasSubstr("--max-batched-tokens 68719476736"));
  EXPECT_THAT(s.status().message(), HasSubstr("at most"));
  EXPECT_EQ(std::string(s.status().message()).find('\n'), std::string::npos);
}

TEST(GpuSizing, KvPoolComesFromTheMemoryUtilization) {
  SKIP_WITHOUT_MODEL();
  int64_t blocks[2] = {0, 0};
  for (int i = 0; i < 2; ++i) {
    StageOptions o = Options(0, -1);
    o.kv_capacity_blocks = 0;
    o.gpu_memory_utilization = i == 0 ? 0.2 : 0.4;
    absl::StatusOr<std::unique_ptr<StageExecutor>> s = StageExecutor::Load(o, nullptr);
    ASSERT_TRUE(s.ok()) << s.status();
    blocks[i] = (*s)->capacity_blocks();  // the stage's one pool
    std::printf("gpu-memory-utilization %.1f: %lld blocks\n", o.gpu_memory_utilization,
                static_cast<long long>(blocks[i]));
  }
  EXPECT_GT(blocks[0], 1000);
  // Twice the budget, a bit more than twice the pool (weights and scratch are paid once).
  EXPECT_GE(blocks[1], 2 * blocks[0]);
}

}  // namespace
}  // namespace xkv
