// The GPU Llama engine (model/cuda/cuda_llama_model.h, device-only Forward path) against the CPU
// engine (kExact numerics) on a real GGUF model: $XKV_MODEL, else
// models/SmolLM2-135M-Instruct.Q4_1.gguf of this checkout. Skips without a device or without the
// model file.
//
// Tolerance: the GPU engine multiplies bf16-rounded weights and bf16-rounded activations (GEMM
// inputs; fp32 accumulation) and keeps K/V in bf16, while the CPU engine runs fp32 throughout on
// the same dequantized weights. bf16 has an 8-bit mantissa (relative rounding 2^-9), and the error
// compounds over the layers, so logits are compared relative to the logit range of the position:
// max |gpu - cpu| <= 3% of (max - min) of the CPU logits. Greedy continuations may part at
// near-ties, so their agreement lengths are reported, not asserted; teacher-forced decode steps
// (the GPU fed the CPU's tokens) are checked with the same 3% bound and >= 90% argmax agreement.
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "coordinator/coordinator.h"
#include "embedded/in_process_stage_client.h"
#include "embedded/local_generation.h"
#include "gtest/gtest.h"
#include "model/cuda/cuda_llama_model.h"
#include "model/llama_model.h"
#include "model/loaded_model.h"
#include "model/sampler.h"
#include "tests/gpu/gpu_test_util.h"

namespace xkv {
namespace {

using gpu_test::RelDiff;

constexpr int kGenTokens = 32;
constexpr double kRelTol = 0.03;  // of the CPU logit range, see the file comment

std::string ModelPath() { return gpu_test::RealModelPath(); }

bool FileExists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

const std::vector<std::string>& Prompts() {
  static const auto* prompts = new std::vector<std::string>{
      "Once upon a time, in a small village at the edge of a great forest, there lived a",
      "Question: What is the boiling point of water at sea level in degrees Celsius?\nAnswer:",
      "Here is a short Python function that returns the sum of a list of numbers:\n\ndef",
      "Photosynthesis is the process by which green plants, algae and some bacteria convert light "
      "energy into chemical energy. During this process, carbon dioxide and water are combined "
      "to produce glucose and oxygen, using the energy of sunlight captured by chlorophyll in the "
      "chloroplasts. The oxygen is released into the atmosphere. In summary,",
      "The history of computing stretches back thousands of years, from the abacus used by "
      "ancient merchants to the mechanical calculators of the seventeenth century built by "
      "Pascal and Leibniz. In the nineteenth century, Charles Babbage designed the Analytical "
      "Engine, a general-purpose mechanical computer, and Ada Lovelace wrote what is often "
      "considered the first computer program for it. The twentieth century brought electronic "
      "computers: machines such as the ENIAC used thousands of vacuum tubes and filled entire "
      "rooms. The invention of the transistor in 1947 and of the integrated circuit a decade "
      "later made computers smaller, faster and cheaper, leading eventually to the personal "
      "computer revolution of the late 1970s and 1980s. Today, billions of people carry "
      "powerful computers in their pockets, and the most important trend of the coming decade "
      "is"};
  return *prompts;
}

TEST(RealModelTest, GpuEngineMatchesCpuEngine) {
  XKV_SKIP_WITHOUT_GPU();
  const std::string path = ModelPath();
  if (!FileExists(path)) GTEST_SKIP() << "no model at " << path << " (set XKV_MODEL)";

  absl::StatusOr<LoadedModel> loaded = LoadModel(path, 0, Numerics::kExact);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  LlamaModel& cpu = *loaded->model;
  const int64_t vocab = loaded->config.vocab_size;
  const int n_prompts = static_cast<int>(Prompts().size());

  std::vector<std::vector<int32_t>> prompts;
  for (const std::string& text : Prompts()) {
    absl::StatusOr<std::vector<int32_t>> ids = loaded->tokenizer->Encode(text, false);
    ASSERT_TRUE(ids.ok()) << ids.status();
    if (ids->size() > 200) ids->resize(200);
    ASSERT_GE(ids->size(), 10u) << text;
    prompts.push_back(*std::move(ids));
  }

  // CPU reference: greedy kGenTokens tokens per prompt, and the logits that chose each of them
  // (cpu_logits[p][t]: fp32 [vocab] predicting generated token t).
  std::vector<std::vector<int32_t>> cpu_tokens(n_prompts);
  std::vector<std::vector<std::vector<float>>> cpu_logits(n_prompts);
  for (int p = 0; p < n_prompts; ++p) {
    std::unique_ptr<KvCache> cache = cpu.NewCache();
    BatchStep step;
    step.sequences.push_back({cache.get(), static_cast<int64_t>(prompts[p].size()), 0});
    absl::StatusOr<std::vector<float>> logits = cpu.Forward(prompts[p], step);
    ASSERT_TRUE(logits.ok()) << logits.status();
    for (int t = 0; t < kGenTokens; ++t) {
      cpu_logits[p].push_back(*logits);
      const int32_t tok = Argmax(*logits);
      cpu_tokens[p].push_back(tok);
      if (t + 1 == kGenTokens) break;
      step.sequences[0] = {cache.get(), 1, static_cast<int64_t>(prompts[p].size()) + t};
      logits = cpu.Forward({tok}, step);
      ASSERT_TRUE(logits.ok()) << logits.status();
    }
  }
  // `xkv generate`'s path (the service's pipeline, one in-process CPU stage, batched and chunked)
  // must pick the same greedy tokens as the loop above.
  {
    auto clients =
        MakeInProcessStages(1, {"cpu"}, InProcessStageSettings{.numerics = Numerics::kExact});
    ASSERT_TRUE(clients.ok()) << clients.status();
    CoordinatorOptions co;
    co.model_path = path;
    co.kv.policy = PolicyKind::kFull;
    co.health_interval = absl::ZeroDuration();
    auto coordinator = Coordinator::Start(co, std::move(*clients));
    ASSERT_TRUE(coordinator.ok()) << coordinator.status();
    std::vector<GenerateParams> requests(n_prompts);
    for (int p = 0; p < n_prompts; ++p) {
      requests[p].prompt_ids = prompts[p];
      requests[p].max_tokens = kGenTokens;
      requests[p].ignore_eos = true;
    }
    auto results = GenerateLocally(**coordinator, std::move(requests));
    ASSERT_TRUE(results.ok()) << results.status();
    for (int p = 0; p < n_prompts; ++p) EXPECT_EQ((*results)[p].tokens, cpu_tokens[p]) << p;
  }

  CudaEngineOptions options;
  options.max_batch = 8;
  options.max_step_tokens = 1024;
  options.max_seq_len = 512;
  options.num_kv_blocks = 4096;
  uint64_t next_id = 1;
  absl::StatusOr<std::unique_ptr<CudaLlamaModel>> gpu_or =
      CudaLlamaModel::Load(*loaded->file, options);
  ASSERT_TRUE(gpu_or.ok()) << gpu_or.status();
  CudaLlamaModel& gpu = **gpu_or;
  std::printf("[real_model] %s: %d layers, hidden %d, vocab %lld; GPU weights %.1f MiB bf16\n",
              path.c_str(), loaded->config.n_layers, loaded->config.hidden,
              static_cast<long long>(vocab), gpu.weight_bytes() / 1048576.0);

  // 1. Teacher forcing, batch of all prompts: one prefill step (every prompt a chunk), then
  //    batched decode steps fed the CPU's tokens.
  std::vector<uint64_t> seqs(n_prompts);
  for (int p = 0; p < n_prompts; ++p) seqs[p] = next_id++;
  std::vector<CudaTokenStep> steps(n_prompts);
  for (int p = 0; p < n_prompts; ++p) steps[p] = {seqs[p], prompts[p]};
  std::vector<int32_t> next;
  std::vector<float> logits;
  absl::Status st = gpu.Forward(steps, &next, &logits);
  ASSERT_TRUE(st.ok()) << st;
  std::vector<double> first_diff(n_prompts), decode_diff(n_prompts, 0.0);
  std::vector<int> decode_agree(n_prompts, 0);
  for (int p = 0; p < n_prompts; ++p) {
    first_diff[p] = RelDiff(&logits[p * vocab], cpu_logits[p][0].data(), vocab);
    EXPECT_EQ(next[p], cpu_tokens[p][0]) << "first-token argmax, prompt " << p;
    EXPECT_EQ(next[p], Argmax(absl::MakeConstSpan(&logits[p * vocab], vocab))) << p;
    EXPECT_LE(first_diff[p], kRelTol) << "prompt " << p;
  }
  for (int t = 1; t < kGenTokens; ++t) {
    for (int p = 0; p < n_prompts; ++p) {
      steps[p] = {seqs[p], absl::MakeConstSpan(&cpu_tokens[p][t - 1], 1)};
    }
    st = gpu.Forward(steps, &next, &logits);
    ASSERT_TRUE(st.ok()) << st;
    for (int p = 0; p < n_prompts; ++p) {
      decode_diff[p] =
          std::max(decode_diff[p], RelDiff(&logits[p * vocab], cpu_logits[p][t].data(), vocab));
      decode_agree[p] += next[p] == cpu_tokens[p][t];
    }
  }
  for (int p = 0; p < n_prompts; ++p) {
    EXPECT_EQ(gpu.logical_position(seqs[p]),
              static_cast<int64_t>(prompts[p].size()) + kGenTokens - 1);
    gpu.ReleaseSequence(seqs[p]);
    EXPECT_LE(decode_diff[p], kRelTol) << "teacher-forced decode, prompt " << p;
    EXPECT_GE(decode_agree[p], (kGenTokens - 1) * 9 / 10) << "teacher-forced argmax, prompt " << p;
  }

  // 1b. Mixed steps and chunked prefill: step A prefills prompt 0 and the first chunk of the last
  //     prompt; step B mixes prompt 0's first decode token (decode kernel, batch 1) with the last
  //     prompt's second chunk (prefill kernel over a cache that already holds the first chunk).
  {
    const int last = n_prompts - 1;
    const int64_t chunk = static_cast<int64_t>(prompts[last].size()) / 2 + 3;
    const absl::Span<const int32_t> whole(prompts[last]);
    const uint64_t a = next_id++, c = next_id++;
    std::vector<CudaTokenStep> mixed = {{a, prompts[0]}, {c, whole.subspan(0, chunk)}};
    st = gpu.Forward(mixed, &next, &logits);
    ASSERT_TRUE(st.ok()) << st;
    EXPECT_EQ(next[0], cpu_tokens[0][0]);
    EXPECT_LE(RelDiff(&logits[0], cpu_logits[0][0].data(), vocab), kRelTol);
    mixed = {{a, absl::MakeConstSpan(&cpu_tokens[0][0], 1)}, {c, whole.subspan(chunk)}};
    st = gpu.Forward(mixed, &next, &logits);
    ASSERT_TRUE(st.ok()) << st;
    const double mixed_decode = RelDiff(&logits[0], cpu_logits[0][1].data(), vocab);
    const double chunked = RelDiff(&logits[vocab], cpu_logits[last][0].data(), vocab);
    EXPECT_LE(mixed_decode, kRelTol);
    EXPECT_LE(chunked, kRelTol);
    EXPECT_EQ(next[1], cpu_tokens[last][0]) << "chunked prefill first-token argmax";
    EXPECT_EQ(gpu.logical_position(c), static_cast<int64_t>(prompts[last].size()));
    std::printf(
        "[real_model] mixed step: decode row max|dlogit| %.4f of range; chunked prefill (%lld + "
        "%lld tokens) %.4f of range\n",
        mixed_decode, static_cast<long long>(chunk),
        static_cast<long long>(prompts[last].size() - chunk), chunked);
    gpu.ReleaseSequence(a);
    gpu.ReleaseSequence(c);
  }

  // 2. Free-running greedy on the GPU, batch of all prompts.
  std::vector<std::vector<int32_t>> gpu_tokens(n_prompts);
  for (int p = 0; p < n_prompts; ++p) {
    seqs[p] = next_id++;
    steps[p] = {seqs[p], prompts[p]};
  }
  st = gpu.Forward(steps, &next);
  ASSERT_TRUE(st.ok()) << st;
  for (int t = 0; t < kGenTokens; ++t) {
    for (int p = 0; p < n_prompts; ++p) gpu_tokens[p].push_back(next[p]);
    if (t + 1 == kGenTokens) break;
    for (int p = 0; p < n_prompts; ++p) {
      steps[p] = {seqs[p], absl::MakeConstSpan(&gpu_tokens[p].back(), 1)};
    }
    st = gpu.Forward(steps, &next);
    ASSERT_TRUE(st.ok()) << st;
  }
  for (int p = 0; p < n_prompts; ++p) gpu.ReleaseSequence(seqs[p]);

  for (int p = 0; p < n_prompts; ++p) {
    int agree = 0;
    while (agree < kGenTokens && gpu_tokens[p][agree] == cpu_tokens[p][agree]) ++agree;
    std::printf(
        "[real_model] prompt %d (%zu tokens): greedy agreement %d/%d leading tokens; first-token "
        "max|dlogit| %.4f of range; teacher-forced decode: max %.4f of range, argmax %d/%d\n",
        p, prompts[p].size(), agree, kGenTokens, first_diff[p], decode_diff[p], decode_agree[p],
        kGenTokens - 1);
  }

  // 3. Decode speed (informational; benchmarks belong in bench/): batch 1, greedy, host round
  //    trip per token included.
  for (int batch : {1, n_prompts}) {
    constexpr int kSteps = 128;
    std::vector<CudaTokenStep> bsteps(batch);
    std::vector<int32_t> toks(batch);
    for (int p = 0; p < batch; ++p) bsteps[p] = {next_id++, prompts[p]};
    st = gpu.Forward(bsteps, &next);
    ASSERT_TRUE(st.ok()) << st;
    const auto t0 = std::chrono::steady_clock::now();
    for (int t = 0; t < kSteps; ++t) {
      toks = next;
      for (int p = 0; p < batch; ++p) bsteps[p].tokens = absl::MakeConstSpan(&toks[p], 1);
      st = gpu.Forward(bsteps, &next);
      ASSERT_TRUE(st.ok()) << st;
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("[real_model] decode batch %d: %d steps in %.3f s = %.1f tokens/s (%.2f ms/step)\n",
                batch, kSteps, s, kSteps * batch / s, 1e3 * s / kSteps);
    for (const CudaTokenStep& b : bsteps) gpu.ReleaseSequence(b.id);
  }
}

}  // namespace
}  // namespace xkv
