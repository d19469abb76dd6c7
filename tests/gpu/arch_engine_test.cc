// The CUDA engine against the CPU engine on the random-weight GGUF of each supported architecture
// and hook (tests/parity/arch_cases.h: llama with Q/K/V biases, rope_freqs and linear RoPE scaling,
// qwen2's biases, qwen3's QK-norm; tied and untied heads). The CPU engine runs Numerics::kBf16, the
// CUDA engine's rounding, so the bound is the one of tests/gpu/real_model_test.cc: max |gpu - cpu|
// <= 3% of the CPU logit range at the last prompt position and at every teacher-forced decode step
// (prefill through the tensor-core kernel, decode through the GEMV path), and >= 90% of the
// argmaxes equal. Skips without a device.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/qkv_hooks.h"
#include "kernels/cpu/rope.h"
#include "kernels/cuda/qkv_hooks.cuh"
#include "kernels/cuda/rope.cuh"
#include "model/cuda/cuda_llama_model.h"
#include "model/gguf.h"
#include "model/llama_model.h"
#include "model/llama_weights.h"
#include "model/model_config.h"
#include "model/sampler.h"
#include "model/synthetic_model.h"
#include "tests/gpu/gpu_test_util.h"
#include "tests/parity/arch_cases.h"

namespace xkv {
namespace {

using gpu_test::AllClose;
using gpu_test::DeviceBuffer;
using gpu_test::RandomVector;
using gpu_test::RelDiff;
using gpu_test::SmallEngineOptions;

constexpr int kPrompt = 40;
constexpr int kSteps = 12;
constexpr double kRelTol = 0.03;

// The hook kernel against its CPU reference: bias only, QK-norm only, both; a padded row stride.
TEST(QkvHooksGpuTest, MatchesCpuReference) {
  XKV_SKIP_WITHOUT_GPU();
  const cpu::QkvHookShape shape{8, 2, 64, 1e-6f};
  const int64_t qkv_dim = (8 + 2 * 2) * 64, stride = qkv_dim + 16, n = 37;
  const std::vector<float> x = RandomVector(n * stride, 1, -3.f, 3.f);
  const std::vector<float> bias = RandomVector(qkv_dim, 2);
  const std::vector<float> q_norm = RandomVector(64, 3, 0.5f, 1.5f);
  const std::vector<float> k_norm = RandomVector(64, 4, 0.5f, 1.5f);
  DeviceBuffer<float> d_bias(bias), d_q(q_norm), d_k(k_norm);
  for (int mode = 0; mode < 3; ++mode) {
    const bool with_bias = mode != 1, with_norm = mode != 0;
    std::vector<float> want = x;
    XKV_ASSERT_OK(cpu::LaunchQkvHooks(
        shape, want.data(), stride, n, with_bias ? bias.data() : nullptr,
        with_norm ? q_norm.data() : nullptr, with_norm ? k_norm.data() : nullptr));
    DeviceBuffer<float> d_x(x);
    XKV_ASSERT_OK(cuda::LaunchQkvHooks(
        shape, d_x.get(), stride, n, with_bias ? d_bias.get() : nullptr,
        with_norm ? d_q.get() : nullptr, with_norm ? d_k.get() : nullptr, nullptr));
    EXPECT_TRUE(AllClose(d_x.Download(), want, 1e-6f, 1e-5f)) << "mode " << mode;
  }
}

// RoPE angles with llama 3.1 frequency factors and linear scaling against the CPU reference.
TEST(RopeScalingGpuTest, MatchesCpuReference) {
  XKV_SKIP_WITHOUT_GPU();
  const int dims = 64;
  const int64_t n = 50;
  std::vector<int64_t> pos(n);
  for (int64_t i = 0; i < n; ++i) pos[i] = 1000 * i + 7;
  const std::vector<float> factors = RandomVector(dims / 2, 5, 1.f, 8.f);
  std::vector<float> want(n * dims);
  XKV_ASSERT_OK(
      cpu::LaunchRopeCache(pos.data(), n, dims, 500000.f, want.data(), {0.25f, factors.data()}));
  DeviceBuffer<int64_t> d_pos(pos);
  DeviceBuffer<float> d_factors(factors), d_cs(n * dims);
  XKV_ASSERT_OK(cuda::LaunchRopeCache(d_pos.get(), n, dims, 500000.f, d_cs.get(), nullptr,
                                      {0.25f, d_factors.get()}));
  EXPECT_TRUE(AllClose(d_cs.Download(), want, 1e-6f, 1e-6f));
}

class ArchEngineTest : public ::testing::TestWithParam<ArchCase> {};

TEST_P(ArchEngineTest, GpuEngineMatchesCpuEngine) {
  XKV_SKIP_WITHOUT_GPU();
  const ArchCase& c = GetParam();
  const std::string dir = UniqueTestDir();
  const std::string path = dir + c.name + ".gguf";
  XKV_ASSERT_OK(WriteSyntheticModel(c.options, path));
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  absl::StatusOr<ModelConfig> config = ReadModelConfig(**file);
  ASSERT_TRUE(config.ok()) << config.status();
  absl::StatusOr<LlamaWeights> weights = LoadLlamaWeights(**file, *config, LlamaWeightsOptions{});
  ASSERT_TRUE(weights.ok()) << weights.status();
  LlamaModelOptions cpu_options;
  cpu_options.numerics = Numerics::kBf16;
  absl::StatusOr<std::unique_ptr<LlamaModel>> cpu =
      LlamaModel::Create(std::make_shared<const LlamaWeights>(*std::move(weights)), cpu_options);
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  const int64_t vocab = config->vocab_size;

  std::mt19937 rng(static_cast<uint32_t>(c.options.seed));
  std::vector<int32_t> prompt(kPrompt);
  for (int32_t& id : prompt) id = 3 + static_cast<int32_t>(rng() % (vocab - 3));

  // CPU: greedy tokens and the logits that chose them.
  std::vector<int32_t> tokens;
  std::vector<std::vector<float>> cpu_logits;
  std::unique_ptr<KvCache> cache = (*cpu)->NewCache();
  BatchStep step;
  step.sequences.push_back({cache.get(), kPrompt, 0});
  absl::StatusOr<std::vector<float>> logits = (*cpu)->Forward(prompt, step);
  for (int t = 0; t < kSteps; ++t) {
    ASSERT_TRUE(logits.ok()) << logits.status();
    cpu_logits.push_back(*logits);
    tokens.push_back(Argmax(*logits));
    step.sequences[0] = {cache.get(), 1, kPrompt + t};
    logits = (*cpu)->Forward({tokens.back()}, step);
  }

  const CudaEngineOptions options = SmallEngineOptions(256);
  absl::StatusOr<std::unique_ptr<CudaLlamaModel>> gpu = CudaLlamaModel::Load(**file, options);
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  std::vector<CudaTokenStep> steps = {{1, prompt}};
  std::vector<int32_t> next;
  std::vector<float> gpu_logits;
  double worst = 0;
  int agree = 0;
  for (int t = 0; t < kSteps; ++t) {
    XKV_ASSERT_OK((*gpu)->Forward(steps, &next, &gpu_logits));
    ASSERT_EQ(static_cast<int64_t>(gpu_logits.size()), vocab);
    const double diff = RelDiff(gpu_logits.data(), cpu_logits[t].data(), vocab);
    EXPECT_LE(diff, kRelTol) << c.name << " step " << t;
    worst = std::max(worst, diff);
    agree += next[0] == tokens[t];
    steps[0].tokens = absl::MakeConstSpan(&tokens[t], 1);  // teacher forcing
  }
  EXPECT_GE(agree, kSteps * 9 / 10) << c.name;
  std::printf("[arch_engine] %-22s max |gpu - cpu| %.3f%% of range, %d of %d argmaxes equal\n",
              c.name.c_str(), 100 * worst, agree, kSteps);
  std::filesystem::remove_all(dir);
}

// The cases of the head dimensions the CUDA attention kernels take (64, 128): the real-shape
// layers of every architecture (Llama-3.2-1B with rope_freqs, Qwen2.5-0.5B, Qwen3-0.6B). The tiny
// CPU parity shapes (head_dim 16, 32) are refused by the engine, which the test below checks.
std::vector<ArchCase> GpuArchCases() {
  std::vector<ArchCase> out;
  for (const ArchCase& c : ArchCases()) {
    const int d = c.options.head_dim();
    if (d == 64 || d == 128) out.push_back(c);
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(Archs, ArchEngineTest, ::testing::ValuesIn(GpuArchCases()),
                         [](const ::testing::TestParamInfo<ArchCase>& i) { return i.param.name; });

TEST(ArchEngineRefusalTest, AnUnsupportedHeadDimIsAClearError) {
  XKV_SKIP_WITHOUT_GPU();
  const ArchCase c = ArchCases().front();
  ASSERT_NE(c.options.head_dim(), 64);
  ASSERT_NE(c.options.head_dim(), 128);
  const std::string dir = UniqueTestDir();
  const std::string path = dir + c.name + ".gguf";
  XKV_ASSERT_OK(WriteSyntheticModel(c.options, path));
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  const CudaEngineOptions options = SmallEngineOptions(256);
  absl::StatusOr<std::unique_ptr<CudaLlamaModel>> gpu = CudaLlamaModel::Load(**file, options);
  absl::Status status = gpu.status();
  if (gpu.ok()) {
    const std::vector<int32_t> prompt(kPrompt, 5);
    std::vector<CudaTokenStep> steps = {{1, prompt}};
    std::vector<int32_t> next;
    std::vector<float> logits;
    status = (*gpu)->Forward(steps, &next, &logits);
  }
  EXPECT_EQ(status.code(), absl::StatusCode::kUnimplemented) << status;
  EXPECT_NE(status.message().find("head_dim"), std::string::npos) << status;
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace xkv
