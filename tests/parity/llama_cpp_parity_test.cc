// Parity with llama.cpp on the real model: tokenizer ids, last-position logits and 64-token greedy
// continuations. llama.cpp's answers are written by llama_reference.py (ctest fixture
// `parity_reference`) into $XKV_PARITY_DIR; the model path is $XKV_MODEL.
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "model/generator.h"
#include "model/gguf.h"
#include "model/llama_model.h"
#include "model/llama_weights.h"
#include "model/model_config.h"
#include "model/sampler.h"
#include "model/tokenizer.h"

namespace xkv {
namespace {

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr ? "" : v;
}

std::string FromHex(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  }
  return out;
}

std::vector<int32_t> ReadIds(std::istringstream& in) {
  std::vector<int32_t> ids;
  std::string word;
  while (in >> word && word != "|") ids.push_back(std::stoi(word));
  return ids;
}

struct RefPrompt {
  std::string name;
  std::vector<int32_t> prompt;
  std::vector<int32_t> greedy;
  std::vector<float> logits;
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
    auto model = LlamaModel::Create(std::make_shared<const LlamaWeights>(std::move(*weights)),
                                    options);
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
      words >> p.name >> n;
      p.prompt = ReadIds(words);
      p.greedy = ReadIds(words);
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
    for (size_t i = 0; i < p.logits.size(); ++i) {
      lo = std::min(lo, p.logits[i]);
      hi = std::max(hi, p.logits[i]);
      max_diff = std::max(max_diff, std::fabs((*logits)[i] - p.logits[i]));
    }
    EXPECT_EQ(Argmax(*logits), Argmax(p.logits)) << p.name;
    EXPECT_LE(max_diff, 0.01f * (hi - lo))
        << p.name << ": max |diff| " << max_diff << " vs logit range " << (hi - lo);
    std::printf("parity %-8s %5zu tokens: max|diff| %.4f = %.3f%% of range %.2f\n",
                p.name.c_str(), p.prompt.size(), max_diff, 100.0 * max_diff / (hi - lo),
                hi - lo);
  }
}

TEST_F(ParityTest, GreedyContinuationsMatchLlamaCppInOneBatch) {
  const std::vector<RefPrompt> prompts = ReadPrompts();
  ASSERT_GE(prompts.size(), 5u);
  std::vector<GenerationRequest> requests;
  for (const RefPrompt& p : prompts) {
    GenerationRequest r;
    r.prompt = p.prompt;
    r.max_tokens = static_cast<int>(p.greedy.size());
    r.ignore_eos = true;  // the reference loop does not stop at EOS either
    requests.push_back(std::move(r));
  }
  GeneratorOptions options;
  options.token_bytes = [](int32_t id) { return tokenizer_->TokenBytes(id); };
  Generator generator(model_, options);
  auto results = generator.Generate(requests);
  ASSERT_TRUE(results.ok()) << results.status();
  for (size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_EQ((*results)[i].tokens, prompts[i].greedy) << prompts[i].name;
    EXPECT_EQ(prompts[i].greedy.size(), 64u);
  }
}

}  // namespace
}  // namespace xkv
