// Test helpers for the worker: a tiny synthetic GGUF model on disk, a whole-model LlamaModel
// reference, and pipelines of StageExecutors over in-process links driven one thread per stage.
#ifndef XKV_TESTS_UNIT_WORKER_WORKER_TEST_UTIL_H_
#define XKV_TESTS_UNIT_WORKER_WORKER_TEST_UTIL_H_

#include <unistd.h>

#include <memory>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "model/gguf.h"
#include "model/llama_model.h"
#include "model/model_config.h"
#include "model/synthetic_model.h"
#include "worker/in_process_stage_link.h"
#include "worker/stage_executor.h"

namespace xkv::testing {

inline SyntheticModelOptions WorkerModelOptions() {
  SyntheticModelOptions o;
  o.n_layers = 4;
  o.hidden = 64;
  o.ffn = 96;
  o.n_heads = 4;
  o.n_kv_heads = 2;
  o.vocab_size = 320;
  o.seed = 7;
  o.weight_scale = 0.08f;
  return o;
}

// A new sequence's whole prompt in one step, logits returned.
inline xkv::v1::StepSequence PrefillSequence(
    uint64_t id, const std::vector<int32_t>& prompt,
    xkv::v1::SequenceMode mode = xkv::v1::SEQUENCE_MODE_NORMAL) {
  xkv::v1::StepSequence s;
  s.set_seq_id(id);
  s.mutable_tokens()->Add(prompt.begin(), prompt.end());
  s.set_n_new(static_cast<int64_t>(prompt.size()));
  s.set_new_sequence(true);
  s.set_mode(mode);
  s.set_return_logits(true);
  return s;
}

// One decode step of a sequence: `token` at `position`, logits returned.
inline xkv::v1::StepSequence DecodeSequence(uint64_t id, int32_t token, int64_t position) {
  xkv::v1::StepSequence s;
  s.set_seq_id(id);
  s.add_tokens(token);
  s.set_n_new(1);
  s.set_position(position);
  s.set_return_logits(true);
  return s;
}

inline xkv::v1::StepRequest MakeStep(uint64_t step_id,
                                     const std::vector<xkv::v1::StepSequence>& sequences) {
  xkv::v1::StepRequest r;
  r.set_step_id(step_id);
  for (const xkv::v1::StepSequence& s : sequences) *r.add_sequences() = s;
  return r;
}

inline xkv::v1::ReleaseRequest MakeRelease(const std::vector<uint64_t>& ids) {
  xkv::v1::ReleaseRequest r;
  r.mutable_seq_ids()->Add(ids.begin(), ids.end());
  return r;
}

inline std::vector<float> LogitsOf(const xkv::v1::SequenceResult& r) {
  return {r.logits().begin(), r.logits().end()};
}

// Written once per test binary.
inline const std::string& WorkerModelPath() {
  static const std::string* path = [] {
    // One file per process: ctest runs tests in parallel processes, and rewriting a file another
    // process has mapped would fault there (SIGBUS).
    auto* p = new std::string(::testing::TempDir() + "/xkv_worker_test_model." +
                              std::to_string(getpid()) + ".gguf");
    const absl::Status s = WriteSyntheticModel(WorkerModelOptions(), *p);
    EXPECT_TRUE(s.ok()) << s;
    return p;
  }();
  return *path;
}

// The whole model in one LlamaModel.
inline std::unique_ptr<LlamaModel> LoadWholeModel() {
  auto file = GgufFile::Open(WorkerModelPath());
  EXPECT_TRUE(file.ok()) << file.status();
  auto config = ReadModelConfig(**file);
  EXPECT_TRUE(config.ok()) << config.status();
  auto weights = LoadLlamaWeights(**file, *config, {});
  EXPECT_TRUE(weights.ok()) << weights.status();
  auto model = LlamaModel::Create(std::make_shared<const LlamaWeights>(*std::move(weights)), {});
  EXPECT_TRUE(model.ok()) << model.status();
  return *std::move(model);
}

inline std::vector<int32_t> RandomTokens(int n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> t(n);
  for (int32_t& x : t) x = 3 + static_cast<int32_t>(rng() % 250);
  return t;
}

// Stages for the layer boundaries {0, b1, ..., n_layers}, chained with in-process links.
// blocks_per_layer[i] (when given): stage i's KV capacity in blocks per layer.
inline std::vector<std::unique_ptr<StageExecutor>> MakePipeline(
    const std::vector<int>& bounds, StageOptions base = {},
    const std::vector<int64_t>& blocks_per_layer = {}) {
  std::vector<std::unique_ptr<StageLink>> links = MakeInProcessLinks(bounds.size() - 1);
  std::vector<std::unique_ptr<StageExecutor>> stages;
  for (size_t i = 0; i + 1 < bounds.size(); ++i) {
    StageOptions o = base;
    o.numerics = Numerics::kExact;  // compared against fp32 LlamaModel references
    o.model_path = WorkerModelPath();
    o.layer_begin = bounds[i];
    o.layer_end = bounds[i + 1];
    o.stage_index = static_cast<int>(i);
    if (i < blocks_per_layer.size()) o.kv_capacity_blocks = blocks_per_layer[i];
    auto stage = StageExecutor::Load(o, std::move(links[i]));
    EXPECT_TRUE(stage.ok()) << stage.status();
    if (!stage.ok()) return {};
    stages.push_back(*std::move(stage));
  }
  return stages;
}

// Runs one step on every stage concurrently (as the coordinator does); results per stage.
inline std::vector<absl::StatusOr<xkv::v1::StepResponse>> RunPipelineStep(
    std::vector<std::unique_ptr<StageExecutor>>& stages, const xkv::v1::StepRequest& step) {
  std::vector<absl::StatusOr<xkv::v1::StepResponse>> results(stages.size(),
                                                             absl::UnknownError("not run"));
  std::vector<std::thread> threads;
  for (size_t i = 0; i < stages.size(); ++i) {
    threads.emplace_back([&, i] { results[i] = stages[i]->Step(step); });
  }
  for (std::thread& t : threads) t.join();
  return results;
}

}  // namespace xkv::testing

#endif  // XKV_TESTS_UNIT_WORKER_WORKER_TEST_UTIL_H_
