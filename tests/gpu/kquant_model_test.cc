// K-quant weights on the GPU engine: a random-weight Llama GGUF in a Q4_K_M-style mix (Q4_K, Q6_K
// attn_v / ffn_down / output; hidden 256, the K-quant super-block) loads into CudaLlamaModel, which
// dequantizes K-quants on the host (ggml's dequantizers, the CPU engine's) and rounds them to bf16
// on the device, and its logits match the CPU engine (kExact, fp32 on the same dequantized
// weights) within real_model_test.cc's bound: 3% of the CPU logit range, same argmax.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "model/cuda/cuda_llama_model.h"
#include "model/llama_model.h"
#include "model/loaded_model.h"
#include "model/sampler.h"
#include "model/synthetic_model.h"
#include "tests/gpu/gpu_test_util.h"

namespace xkv {
namespace {

TEST(KQuantModelTest, GpuEngineMatchesCpuEngineOnAQ4_K_MMix) {
  XKV_SKIP_WITHOUT_GPU();
  SyntheticModelOptions o;
  o.n_layers = 3;
  o.hidden = 256;
  o.ffn = 512;
  o.n_heads = 4;
  o.n_kv_heads = 2;
  o.weight_type = GgmlType::kQ4_K;
  o.type_overrides = {{"attn_v.weight", GgmlType::kQ6_K},
                      {"ffn_down.weight", GgmlType::kQ6_K},
                      {"output.weight", GgmlType::kQ6_K}};
  o.weight_scale = 0.04f;
  const std::string path = ::testing::TempDir() + "/xkv_kquant_gpu.gguf";
  ASSERT_TRUE(WriteSyntheticModel(o, path).ok());

  absl::StatusOr<LoadedModel> loaded = LoadModel(path, 0, Numerics::kExact);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  std::vector<int32_t> prompt;
  for (int i = 0; i < 24; ++i) prompt.push_back(3 + (11 * i + 5) % 300);
  std::unique_ptr<KvCache> cache = loaded->model->NewCache();
  BatchStep step;
  step.sequences.push_back({cache.get(), static_cast<int64_t>(prompt.size()), 0});
  absl::StatusOr<std::vector<float>> cpu = loaded->model->Forward(prompt, step);
  ASSERT_TRUE(cpu.ok()) << cpu.status();

  const CudaEngineOptions options = gpu_test::SmallEngineOptions(64);
  absl::StatusOr<std::unique_ptr<CudaLlamaModel>> gpu =
      CudaLlamaModel::Load(*loaded->file, options);
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  std::vector<CudaTokenStep> steps = {{1, prompt}};
  std::vector<int32_t> next;
  std::vector<float> logits;
  ASSERT_TRUE((*gpu)->Forward(steps, &next, &logits).ok());
  const int64_t vocab = loaded->config.vocab_size;
  ASSERT_EQ(static_cast<int64_t>(logits.size()), vocab);
  const auto [lo, hi] = std::minmax_element(cpu->begin(), cpu->end());
  float worst = 0;
  for (int64_t i = 0; i < vocab; ++i) worst = std::max(worst, std::fabs(logits[i] - (*cpu)[i]));
  EXPECT_LE(worst, 0.03f * (*hi - *lo)) << "max |gpu - cpu| vs the CPU logit range";
  EXPECT_EQ(next[0], Argmax(*cpu));
  std::printf("[kquant_model] Q4_K_M mix: max |gpu - cpu| %.3f%% of the logit range\n",
              100.0 * worst / (*hi - *lo));
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace xkv
