// Parity with llama.cpp on the real model: tokenizer ids, last-position logits and 64-token greedy
// continuations. llama.cpp's answers are written by llama_reference.py (ctest fixture
// `parity_reference`) into $XKV_PARITY_DIR; the model path is $XKV_MODEL.
//
// The engine runs with Numerics::kGgml, which reproduces the arithmetic of llama.cpp's CPU backend
// bit for bit (kernels/cpu/ggml_exact.h). The criteria are asserted as written: same
// argmax and max |logit difference| within 1% of the logit range, and 64 greedy tokens identical.
// (xkv emulates the AVX-512 and the AVX2 builds of llama.cpp, whichever -march=native gives on
// this host; on a host with neither, llama.cpp sums in other orders and the test bounds the logits
// by llama.cpp's own spread instead: kEmulatesHostBuild.)
// For scale the test also prints llama.cpp's own spread: how far llama.cpp's last logits move
// between its own configurations (flash attention on/off, one token per batch) — a few percent of
// the range, because its 8-bit activation rounding turns any fp32 summation-order difference into
// different rounded values. Only an emulation of its exact summation orders gets within 1%.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "coordinator/coordinator.h"
#include "embedded/in_process_stage_client.h"
#include "embedded/local_generation.h"
#include "gtest/gtest.h"
#include "kernels/cpu/ggml_exact.h"
#include "model/gguf.h"
#include "model/llama_model.h"
#include "model/llama_weights.h"
#include "model/model_config.h"
#include "model/sampler.h"
#include "model/tokenizer.h"
#include "tests/parity/parity_util.h"

namespace xkv {
namespace {

std::vector<int32_t> ReadIds(std::istringstream& in) {
  std::vector<int32_t> ids;
  std::string word;
  while (in >> word && word != "|") ids.push_back(std::stoi(word));
  return ids;
}

std::vector<float> ReadFloats(std::istringstream& in) {
  std::vector<float> out;
  std::string word;
  while (in >> word && word != "|") out.push_back(std::stof(word));
  return out;
}

struct RefPrompt {
  std::string name;
  float spread = 0;  // llama.cpp's own spread of the last logits across configurations
  std::vector<int32_t> prompt;
  std::vector<int32_t> greedy;  // llama.cpp's 64 greedy tokens
  std::vector<float> margins;   // llama.cpp's top-1 minus top-2 logit at each greedy step
  std::vector<float> logits;    // llama.cpp's logits at the prompt's last position

  // The first greedy step where llama.cpp's own choice is within its noise floor.
  size_t FirstNearTie() const {
    for (size_t i = 0; i < margins.size(); ++i) {
      if (margins[i] <= spread) return i;
    }
    return margins.size();
  }
};

class ParityTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string path = Env("XKV_MODEL");
    auto file = GgufFile::Open(path);
    ASSERT_TRUE(file.ok()) << file.status();
    file_ = std::move(*file).release();
    auto config = ReadModelConfig(*file_);
    ASSERT_TRUE(config.ok()) << config.status();
    auto tok = Tokenizer::FromGguf(*file_);
    ASSERT_TRUE(tok.ok()) << tok.status();
    tokenizer_ = std::move(*tok).release();
    auto weights = LoadLlamaWeights(*file_, *config, LlamaWeightsOptions{});
    ASSERT_TRUE(weights.ok()) << weights.status();
    LlamaModelOptions options;
    options.num_threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    options.numerics = Numerics::kGgml;
    auto model =
        LlamaModel::Create(std::make_shared<const LlamaWeights>(std::move(*weights)), options);
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::move(*model).release();
  }
  static void TearDownTestSuite() {
    delete model_;
    delete tokenizer_;
    delete file_;
  }
  void SetUp() override {
    dir_ = Env("XKV_PARITY_DIR");
    ASSERT_FALSE(dir_.empty()) << "XKV_PARITY_DIR is not set (run through ctest)";
    ASSERT_NE(model_, nullptr);
  }

  std::vector<RefPrompt> ReadPrompts() {
    std::vector<RefPrompt> out;
    std::ifstream in(dir_ + "/prompts.txt");
    std::string line;
    while (std::getline(in, line)) {
      std::istringstream words(line);
      RefPrompt p;
      int64_t n = 0;
      words >> p.name >> n >> p.spread;
      p.prompt = ReadIds(words);
      p.greedy = ReadIds(words);
      p.margins = ReadFloats(words);
      EXPECT_EQ(p.margins.size(), p.greedy.size()) << p.name;
      EXPECT_EQ(static_cast<int64_t>(p.prompt.size()), n) << p.name;
      std::ifstream lf(dir_ + "/" + p.name + ".logits.f32", std::ios::binary);
      p.logits.resize(model_->config().vocab_size);
      lf.read(reinterpret_cast<char*>(p.logits.data()), p.logits.size() * sizeof(float));
      EXPECT_TRUE(lf.good()) << "short logits file for " << p.name;
      out.push_back(std::move(p));
    }
    return out;
  }

  static GgufFile* file_;
  static Tokenizer* tokenizer_;
  static LlamaModel* model_;
  std::string dir_;
};
GgufFile* ParityTest::file_ = nullptr;
Tokenizer* ParityTest::tokenizer_ = nullptr;
LlamaModel* ParityTest::model_ = nullptr;

TEST_F(ParityTest, TokenIdsMatchLlamaCppAndRoundTrip) {
  std::ifstream in(dir_ + "/tokens.txt");
  std::string line;
  int strings = 0, id_mismatches = 0, round_trip_failures = 0;
  while (std::getline(in, line)) {
    std::istringstream words(line);
    std::string hex;
    words >> hex;
    const std::string text = FromHex(hex);
    const std::vector<int32_t> expected = ReadIds(words);
    ++strings;
    auto ids = tokenizer_->Encode(text, /*parse_special=*/true);
    ASSERT_TRUE(ids.ok()) << ids.status() << " for " << hex;
    if (*ids != expected) {
      ++id_mismatches;
      ADD_FAILURE() << "token ids differ from llama.cpp for string (hex) " << hex;
    }
    auto back = tokenizer_->Decode(*ids);
    ASSERT_TRUE(back.ok()) << back.status();
    if (*back != text) {
      ++round_trip_failures;
      ADD_FAILURE() << "decode(encode(s)) != s for string (hex) " << hex;
    }
  }
  EXPECT_GE(strings, 200);
  EXPECT_EQ(id_mismatches, 0);
  EXPECT_EQ(round_trip_failures, 0);
}

TEST_F(ParityTest, LastLogitsMatchLlamaCpp) {
  const std::vector<RefPrompt> prompts = ReadPrompts();
  ASSERT_GE(prompts.size(), 5u);
  for (const RefPrompt& p : prompts) {
    EXPECT_GE(p.prompt.size(), 16u) << p.name;
    EXPECT_LE(p.prompt.size(), 2000u) << p.name;
    std::unique_ptr<KvCache> cache = model_->NewCache();
    BatchStep step;
    step.sequences.push_back({cache.get(), static_cast<int64_t>(p.prompt.size()), 0, false});
    auto logits = model_->Forward(p.prompt, step);
    ASSERT_TRUE(logits.ok()) << logits.status();
    ASSERT_EQ(logits->size(), p.logits.size());
    float lo = p.logits[0], hi = p.logits[0], max_diff = 0;
    size_t bitwise_equal = 0;
    for (size_t i = 0; i < p.logits.size(); ++i) {
      lo = std::min(lo, p.logits[i]);
      hi = std::max(hi, p.logits[i]);
      max_diff = std::max(max_diff, std::fabs((*logits)[i] - p.logits[i]));
      bitwise_equal += std::memcmp(&(*logits)[i], &p.logits[i], sizeof(float)) == 0;
    }
    EXPECT_EQ(Argmax(*logits), Argmax(p.logits)) << p.name;
    if (cpu::ggml::kEmulatesHostBuild) {
      EXPECT_LE(max_diff, 0.01f * (hi - lo))
          << p.name << ": max |diff| " << max_diff << " vs logit range " << (hi - lo);
    } else {  // see kEmulatesHostBuild: llama.cpp's own spread is the honest bound here
      EXPECT_LE(max_diff, std::max(0.01f * (hi - lo), p.spread))
          << p.name << ": max |diff| " << max_diff << " vs logit range " << (hi - lo)
          << ", llama.cpp's own spread " << p.spread << " (host without AVX2)";
    }
    std::printf(
        "parity %-8s %5zu tokens: max|diff| %.3g = %.4f%% of range %.2f, %zu of %zu logits "
        "bitwise equal (llama.cpp's own spread %.2f%%)\n",
        p.name.c_str(), p.prompt.size(), max_diff, 100.0 * max_diff / (hi - lo), hi - lo,
        bitwise_equal, p.logits.size(), 100.0 * p.spread / (hi - lo));
  }
}

TEST_F(ParityTest, GreedyContinuationsMatchLlamaCppInOneBatch) {
  const std::vector<RefPrompt> prompts = ReadPrompts();
  ASSERT_GE(prompts.size(), 5u);
  // `xkv generate`'s path: the service's pipeline in this process (one CPU stage, kGgml numerics),
  // every prompt submitted at once so they share steps.
  std::vector<GenerateParams> requests;
  for (const RefPrompt& p : prompts) {
    GenerateParams r;
    r.prompt_ids = p.prompt;
    r.max_tokens = static_cast<int64_t>(p.greedy.size());
    r.ignore_eos = true;  // the reference loop does not stop at EOS either
    requests.push_back(std::move(r));
  }
  auto clients = MakeInProcessStages(1, {"cpu"}, InProcessStageSettings{.num_threads = 2});
  ASSERT_TRUE(clients.ok()) << clients.status();
  CoordinatorOptions options;
  options.model_path = Env("XKV_MODEL");
  options.kv.policy = PolicyKind::kFull;
  options.health_interval = absl::ZeroDuration();
  auto coordinator = Coordinator::Start(options, std::move(*clients));
  ASSERT_TRUE(coordinator.ok()) << coordinator.status();
  auto results = GenerateLocally(**coordinator, std::move(requests));
  ASSERT_TRUE(results.ok()) << results.status();
  for (const LocalResult& r : *results) ASSERT_TRUE(r.status.ok()) << r.status;
  int identical = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    const RefPrompt& p = prompts[i];
    const std::vector<int32_t>& ours = (*results)[i].tokens;
    ASSERT_EQ(p.greedy.size(), 64u);
    ASSERT_EQ(ours.size(), p.greedy.size()) << p.name;
    size_t same = 0;
    while (same < ours.size() && ours[same] == p.greedy[same]) ++same;
    identical += same == ours.size();
    if (cpu::ggml::kEmulatesHostBuild) {
      EXPECT_EQ(same, ours.size()) << p.name << ": diverged at token " << same
                                   << " (llama.cpp's top-2 margin there " << p.margins[same] << ")";
    } else {  // only where llama.cpp itself is undecided
      EXPECT_GE(same, p.FirstNearTie()) << p.name << ": diverged at token " << same;
    }
    std::printf("greedy %-8s identical for %zu of 64 tokens (llama.cpp's first near-tie: %zu)\n",
                p.name.c_str(), same, p.FirstNearTie());
  }
  std::printf("greedy: %d of %zu continuations identical over 64 tokens\n", identical,
              prompts.size());
  if (cpu::ggml::kEmulatesHostBuild) {
    EXPECT_EQ(identical, static_cast<int>(prompts.size()));
  }
}

// Teacher forcing: llama.cpp's continuation fed to xkv in one prefill; at every step where
// llama.cpp is decided (margin above its spread), xkv's argmax is llama.cpp's token.
TEST_F(ParityTest, TeacherForcedGreedyTokensMatchLlamaCpp) {
  const std::vector<RefPrompt> prompts = ReadPrompts();
  ASSERT_GE(prompts.size(), 5u);
  for (const RefPrompt& p : prompts) {
    std::vector<int32_t> tokens = p.prompt;
    tokens.insert(tokens.end(), p.greedy.begin(), p.greedy.end() - 1);
    std::unique_ptr<KvCache> cache = model_->NewCache();
    BatchStep step;
    step.sequences.push_back({cache.get(), static_cast<int64_t>(tokens.size()), 0, false});
    auto logits = model_->Forward(tokens, step, /*all_rows=*/true);
    ASSERT_TRUE(logits.ok()) << logits.status();
    const int64_t vocab = model_->config().vocab_size;
    int decided = 0, agree = 0;
    for (size_t i = 0; i < p.greedy.size(); ++i) {
      const int64_t row = static_cast<int64_t>(p.prompt.size() + i) - 1;
      const int32_t ours = Argmax(absl::MakeConstSpan(logits->data() + row * vocab, vocab));
      if (p.margins[i] <= p.spread) continue;
      ++decided;
      agree += ours == p.greedy[i];
      EXPECT_EQ(ours, p.greedy[i]) << p.name << " step " << i << " margin " << p.margins[i];
    }
    EXPECT_GE(decided, 32) << p.name << ": too few decided steps to compare";
    std::printf("teacher-forced %-8s %d of %d decided steps agree\n", p.name.c_str(), agree,
                decided);
  }
}

}  // namespace
}  // namespace xkv
