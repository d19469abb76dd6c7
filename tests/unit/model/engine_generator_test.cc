// EngineGenerate (the device-independent generation loop behind `xkv generate --device`) on a
// CpuStageEngine against the established Generator (+ KvCompressor) on the same weights: the same
// tokens, text and finish reason, and with XKV the same per-layer budgets and cache sizes, for a
// full cache, one_pass and per_request eviction and a stop string. Bad input: clear errors.
#include "model/engine_generator.h"

#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "model/cpu_stage_engine.h"
#include "model/kv_compressor.h"
#include "tests/unit/model/llama_test_util.h"

namespace xkv {
namespace {

std::string Bytes(int32_t id) { return std::string(1, static_cast<char>('a' + id % 26)); }

class EngineGeneratorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    weights_ = testing::RandomWeights(testing::TinyConfig(), 31);
    auto m = LlamaModel::Create(weights_, {});
    ASSERT_TRUE(m.ok());
    model_ = std::move(*m);
    auto e = CpuStageEngine::Create(weights_, {});
    ASSERT_TRUE(e.ok());
    engine_ = std::move(*e);
  }

  GenerationRequest Request(int n_prompt, int max_tokens) const {
    GenerationRequest r;
    for (int i = 0; i < n_prompt; ++i) r.prompt.push_back(3 + (i * 17) % 59);
    r.max_tokens = max_tokens;
    r.ignore_eos = true;
    return r;
  }

  // The reference: Generator, with a compressor when `mode` is set.
  GenerationResult Reference(const GenerationRequest& r, std::optional<ProfileModeKind> mode,
                             int64_t budget_tokens) {
    GeneratorOptions o;
    o.token_bytes = Bytes;
    std::unique_ptr<KvCompressor> compressor;
    if (mode.has_value()) {
      KvCompressorOptions c;
      c.kv.policy = PolicyKind::kXkv;
      c.kv.target = KvTarget::Tokens(budget_tokens);
      c.kv.profile.kind = *mode;
      auto made = KvCompressor::Create(c);
      EXPECT_TRUE(made.ok()) << made.status();
      compressor = std::move(*made);
      o.compressor = compressor.get();
    }
    Generator gen(model_.get(), o);
    auto out = gen.Generate({&r, 1});
    EXPECT_TRUE(out.ok()) << out.status();
    return (*out)[0];
  }

  EngineGeneratorOptions Options(bool compress, bool two_pass, int64_t budget_tokens) const {
    EngineGeneratorOptions o;
    o.token_bytes = Bytes;
    o.compress = compress;
    o.kv.profile.kind = two_pass ? ProfileModeKind::kPerRequest : ProfileModeKind::kOnePass;
    o.kv.policy = PolicyKind::kXkv;
    o.kv.target = KvTarget::Tokens(budget_tokens);
    return o;
  }

  std::shared_ptr<LlamaWeights> weights_;
  std::unique_ptr<LlamaModel> model_;
  std::unique_ptr<CpuStageEngine> engine_;
};

TEST_F(EngineGeneratorTest, FullCacheMatchesGenerator) {
  const GenerationRequest r = Request(23, 12);
  const GenerationResult want = Reference(r, std::nullopt, 0);
  auto got = EngineGenerate(*engine_, 1, r, Options(false, false, 0));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->tokens, want.tokens);
  EXPECT_EQ(got->text, want.text);
  EXPECT_FALSE(engine_->HasSequence(1));  // released
}

TEST_F(EngineGeneratorTest, XkvEvictionMatchesGeneratorWithCompressor) {
  const GenerationRequest r = Request(40, 10);
  const int64_t budget = 3 * (40 - 8) / 4;  // a quarter of the evictable tokens
  for (auto [mode, two_pass] : {std::pair{ProfileModeKind::kOnePass, false},
                                std::pair{ProfileModeKind::kPerRequest, true}}) {
    const GenerationResult want = Reference(r, mode, budget);
    auto got = EngineGenerate(*engine_, 2, r, Options(true, two_pass, budget));
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->tokens, want.tokens) << two_pass;
    ASSERT_TRUE(got->allocation.has_value() && want.allocation.has_value());
    ASSERT_EQ(got->allocation->layers.size(), want.allocation->layers.size());
    for (size_t l = 0; l < want.allocation->layers.size(); ++l) {
      EXPECT_EQ(got->allocation->layers[l].kept_prefix, want.allocation->layers[l].kept_prefix);
      EXPECT_EQ(got->allocation->layers[l].tokens_held, want.allocation->layers[l].tokens_held);
    }
    EXPECT_LT(got->allocation->kv_bytes_held, got->allocation->kv_bytes_full);
  }
}

TEST_F(EngineGeneratorTest, StopStringEndsLikeGenerator) {
  GenerationRequest r = Request(9, 30);
  const GenerationResult free_run = Reference(r, std::nullopt, 0);
  ASSERT_GE(free_run.text.size(), 6u);
  r.stop = {free_run.text.substr(4, 2)};
  const GenerationResult want = Reference(r, std::nullopt, 0);
  auto got = EngineGenerate(*engine_, 3, r, Options(false, false, 0));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->finish, FinishReason::kStop);
  EXPECT_EQ(got->tokens, want.tokens);
  EXPECT_EQ(got->text, want.text);
}

TEST_F(EngineGeneratorTest, BadInputIsAnError) {
  GenerationRequest empty = Request(0, 4);
  EXPECT_EQ(EngineGenerate(*engine_, 4, empty, Options(false, false, 0)).status().code(),
            absl::StatusCode::kInvalidArgument);
  GenerationRequest hot = Request(5, 4);
  hot.sampling.top_p = 2.f;
  EXPECT_EQ(EngineGenerate(*engine_, 4, hot, Options(false, false, 0)).status().code(),
            absl::StatusCode::kInvalidArgument);
  std::shared_ptr<LlamaWeights> half = std::make_shared<LlamaWeights>(*weights_);
  half->layers.pop_back();
  half->layer_end -= 1;
  half->lm_head.reset();
  auto e = CpuStageEngine::Create(half, {});
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(EngineGenerate(**e, 5, Request(5, 2), Options(false, false, 0)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace xkv
