// `xkv generate`'s path (architecture.md §2): an embedded Coordinator over in-process stages on the
// real model. Greedy tokens of a batch equal a plain incremental loop over the whole model, with 1
// and 2 stages; stop strings, token-id prompts, XKV compression and bad input behave as the
// service.
#include "embedded/local_generation.h"

#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "coordinator/coordinator.h"
#include "embedded/in_process_stage_client.h"
#include "gtest/gtest.h"
#include "model/loaded_model.h"
#include "model/sampler.h"

namespace xkv {
namespace {

std::string ModelPath() {
  const char* m = std::getenv("XKV_MODEL");
  return m != nullptr ? m : "models/SmolLM2-135M-Instruct.Q4_1.gguf";
}

std::unique_ptr<Coordinator> Start(int stages) {
  auto clients = MakeInProcessStages(stages, {"cpu"}, InProcessStageSettings{});
  EXPECT_TRUE(clients.ok()) << clients.status();
  if (!clients.ok()) return nullptr;
  CoordinatorOptions o;
  o.model_path = ModelPath();
  o.kv.policy = PolicyKind::kFull;
  o.health_interval = absl::ZeroDuration();
  o.shutdown_grace = absl::ZeroDuration();
  auto c = Coordinator::Start(o, std::move(*clients));
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? std::move(*c) : nullptr;
}

GenerateParams Greedy(std::vector<int32_t> ids, int64_t max_tokens) {
  GenerateParams p;
  p.prompt_ids = std::move(ids);
  p.max_tokens = max_tokens;
  p.ignore_eos = true;
  return p;
}

class LocalGenerationTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto loaded = LoadModel(ModelPath(), 1);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    model_ = new LoadedModel(*std::move(loaded));
  }
  static void TearDownTestSuite() {
    delete model_;
    model_ = nullptr;
  }

  // The plain loop: one prefill, then one token at a time on an incremental cache.
  static std::vector<int32_t> Reference(const std::vector<int32_t>& prompt, int n) {
    LlamaModel& m = *model_->model;
    std::unique_ptr<KvCache> cache = m.NewCache();
    BatchStep step;
    step.sequences.push_back({cache.get(), static_cast<int64_t>(prompt.size()), 0});
    absl::StatusOr<std::vector<float>> logits = m.Forward(prompt, step);
    std::vector<int32_t> out;
    while (logits.ok() && static_cast<int>(out.size()) < n) {
      out.push_back(Argmax(*logits));
      step.sequences[0] = {cache.get(), 1, static_cast<int64_t>(prompt.size() + out.size()) - 1};
      logits = m.Forward({out.back()}, step);
    }
    EXPECT_TRUE(logits.ok()) << logits.status();
    return out;
  }
  static std::vector<int32_t> Encode(const std::string& text) {
    auto ids = model_->tokenizer->Encode(text, /*parse_special=*/false);
    EXPECT_TRUE(ids.ok()) << ids.status();
    return ids.ok() ? *ids : std::vector<int32_t>{};
  }

  static LoadedModel* model_;
};
LoadedModel* LocalGenerationTest::model_ = nullptr;

TEST_F(LocalGenerationTest, GreedyBatchMatchesThePlainLoopOnOneAndTwoStages) {
  const std::vector<std::vector<int32_t>> prompts = {
      Encode("The capital of France is"),
      Encode("A short story about a robot who learns to paint:"),
      {1, 2, 3, 4, 5, 6, 7, 8, 9}};
  for (int stages : {1, 2}) {
    std::unique_ptr<Coordinator> c = Start(stages);
    ASSERT_NE(c, nullptr);
    std::vector<GenerateParams> requests;
    for (const auto& p : prompts) requests.push_back(Greedy(p, 6));
    std::vector<std::string> streamed(prompts.size());
    auto results = GenerateLocally(
        *c, requests,
        [&](size_t i, const std::string& text, absl::Span<const int32_t>) { streamed[i] += text; });
    ASSERT_TRUE(results.ok()) << results.status();
    for (size_t i = 0; i < prompts.size(); ++i) {
      const LocalResult& r = (*results)[i];
      ASSERT_TRUE(r.status.ok()) << r.status;
      EXPECT_EQ(r.tokens, Reference(prompts[i], 6)) << "stages " << stages << ", prompt " << i;
      EXPECT_EQ(streamed[i], r.text);
      EXPECT_EQ(r.usage.prompt_tokens(), static_cast<int>(prompts[i].size()));
      EXPECT_EQ(r.usage.completion_tokens(), 6);
    }
  }
}

TEST_F(LocalGenerationTest, StopStringEndsTheTextBeforeIt) {
  std::unique_ptr<Coordinator> c = Start(1);
  ASSERT_NE(c, nullptr);
  GenerateParams p;
  p.prompt = "The capital of France is";
  p.max_tokens = 12;
  p.ignore_eos = true;
  auto full = GenerateLocally(*c, {p});
  ASSERT_TRUE(full.ok()) << full.status();
  const std::string text = (*full)[0].text;
  ASSERT_GE(text.size(), 8u) << text;
  p.stop = {"never appears", text.substr(4, 3)};
  auto stopped = GenerateLocally(*c, {p});
  ASSERT_TRUE(stopped.ok()) << stopped.status();
  EXPECT_EQ((*stopped)[0].text, text.substr(0, text.find(p.stop[1])));
  EXPECT_EQ((*stopped)[0].usage.finish_reason(), xkv::v1::FINISH_REASON_STOP_STRING);
}

TEST_F(LocalGenerationTest, XkvPolicyHoldsFewerBytes) {
  std::unique_ptr<Coordinator> c = Start(1);
  ASSERT_NE(c, nullptr);
  GenerateParams p = Greedy(Encode(std::string(40, 'a') + " The history of computing is long."), 4);
  p.kv.policy = "xkv";
  p.kv.budget_fraction = 0.3;
  auto r = GenerateLocally(*c, {p});
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_TRUE((*r)[0].status.ok()) << (*r)[0].status;
  const xkv::v1::Usage& u = (*r)[0].usage;
  EXPECT_EQ(u.policy(), "xkv");
  EXPECT_GT(u.kv_bytes_held(), 0);
  EXPECT_LT(u.kv_bytes_held(), u.kv_bytes_full());
}

TEST_F(LocalGenerationTest, BadRequestsAreErrorsAndEndTheOthers) {
  std::unique_ptr<Coordinator> c = Start(1);
  ASSERT_NE(c, nullptr);
  const int32_t vocab = static_cast<int32_t>(model_->config.vocab_size);
  auto oov = GenerateLocally(*c, {Greedy({1, vocab}, 4)});
  ASSERT_FALSE(oov.ok());
  EXPECT_EQ(oov.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(oov.status().message().find("outside the vocabulary"), std::string::npos)
      << oov.status();
  GenerateParams both = Greedy({1, 2}, 4);
  both.prompt = "text too";
  EXPECT_EQ(GenerateLocally(*c, {both}).status().code(), absl::StatusCode::kInvalidArgument);
  // A good request before a bad one: the call fails naming the bad one, and returns (the good
  // one is cancelled rather than left running).
  auto mixed = GenerateLocally(*c, {Greedy({1, 2, 3}, 200), Greedy({-1}, 4)});
  ASSERT_FALSE(mixed.ok());
  EXPECT_NE(mixed.status().message().find("request 1"), std::string::npos) << mixed.status();
  // The service still serves.
  auto ok = GenerateLocally(*c, {Greedy({1, 2, 3}, 2)});
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ((*ok)[0].tokens.size(), 2u);
}

}  // namespace
}  // namespace xkv
