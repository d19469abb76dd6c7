#include "model/generator.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/unit/model/llama_test_util.h"

namespace xkv {
namespace {

std::string Bytes(int32_t id) { return std::string(1, static_cast<char>('a' + id % 26)); }

class GeneratorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto m = LlamaModel::Create(testing::RandomWeights(testing::TinyConfig(), 21), {});
    ASSERT_TRUE(m.ok());
    model_ = std::move(*m);
  }
  // Greedy reference: full re-prefill per token (no incremental cache at all).
  std::vector<int32_t> Reference(std::vector<int32_t> seq, int n) {
    std::vector<int32_t> out;
    for (int i = 0; i < n; ++i) {
      auto cache = model_->NewCache();
      BatchStep b;
      b.sequences.push_back({cache.get(), static_cast<int64_t>(seq.size()), 0, false});
      auto logits = model_->Forward(seq, b);
      EXPECT_TRUE(logits.ok());
      out.push_back(Argmax(*logits));
      seq.push_back(out.back());
    }
    return out;
  }
  GeneratorOptions Options() {
    GeneratorOptions o;
    o.token_bytes = Bytes;
    o.eos_tokens = {63};
    o.prefill_chunk = 4;  // forces chunked prefill
    return o;
  }
  std::unique_ptr<LlamaModel> model_;
};

TEST_F(GeneratorTest, GreedyBatchMatchesReferenceAndStreams) {
  std::vector<GenerationRequest> reqs(2);
  reqs[0].prompt = {5, 9, 11, 3, 40, 41, 7};
  reqs[0].max_tokens = 8;
  reqs[1].prompt = {2, 30};
  reqs[1].max_tokens = 5;
  std::string streamed[2];
  Generator gen(model_.get(), Options());
  auto r = gen.Generate(reqs, [&](int i, int32_t, std::string_view b) { streamed[i] += b; });
  ASSERT_TRUE(r.ok()) << r.status();
  for (int i = 0; i < 2; ++i) {
    const auto& res = (*r)[i];
    if (res.finish == FinishReason::kEos) continue;  // (not expected with this seed)
    EXPECT_EQ(res.finish, FinishReason::kLength);
    EXPECT_EQ(res.tokens, Reference(reqs[i].prompt, reqs[i].max_tokens)) << i;
    std::string text;
    for (int32_t t : res.tokens) text += Bytes(t);
    EXPECT_EQ(res.text, text);
    EXPECT_EQ(streamed[i], text);
    EXPECT_EQ(res.prompt_tokens, static_cast<int64_t>(reqs[i].prompt.size()));
    EXPECT_GT(res.kv_bytes_held, 0);
  }
}

TEST_F(GeneratorTest, StopsOnEosAndStopStrings) {
  GenerationRequest req;
  req.prompt = {1, 2, 3, 4, 5};
  req.max_tokens = 10;
  const std::vector<int32_t> ref = Reference(req.prompt, 10);
  std::string text;
  for (int32_t t : ref) text += Bytes(t);
  // EOS = the 4th greedy token: three tokens come out, EOS is not emitted.
  GeneratorOptions eos_opts = Options();
  eos_opts.eos_tokens = {ref[3]};
  Generator eos_gen(model_.get(), eos_opts);
  auto r = eos_gen.Generate({req});
  ASSERT_TRUE(r.ok());
  const size_t first_eos = std::find(ref.begin(), ref.end(), ref[3]) - ref.begin();
  EXPECT_EQ((*r)[0].finish, FinishReason::kEos);
  EXPECT_EQ((*r)[0].tokens, std::vector<int32_t>(ref.begin(), ref.begin() + first_eos));
  // Stop string = greedy text [4, 6): output is the text before its first occurrence.
  req.stop = {"zzzz", text.substr(4, 2)};
  Generator gen(model_.get(), Options());
  std::string streamed;
  r = gen.Generate({req}, [&](int, int32_t, std::string_view b) { streamed += b; });
  ASSERT_TRUE(r.ok());
  const size_t at = text.find(req.stop[1]);
  EXPECT_EQ((*r)[0].finish, FinishReason::kStop);
  EXPECT_EQ((*r)[0].text, text.substr(0, at));
  EXPECT_EQ(streamed, text.substr(0, at));
  EXPECT_EQ((*r)[0].tokens.size(), at + 2);  // through the token that completed the stop string
}

TEST_F(GeneratorTest, RejectsBadRequests) {
  Generator gen(model_.get(), Options());
  GenerationRequest empty;
  EXPECT_FALSE(gen.Generate({empty}).ok());
  GenerationRequest oov;
  oov.prompt = {64};
  EXPECT_FALSE(gen.Generate({oov}).ok());
  GenerationRequest zero;
  zero.prompt = {1};
  zero.max_tokens = 0;
  auto r = gen.Generate({zero});
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE((*r)[0].tokens.empty());
}

TEST(StopMatcherTest, HoldsBackPossibleStopPrefixes) {
  StopMatcher m({"END", "xy"});
  bool stopped = false;
  EXPECT_EQ(m.Push("abcE", &stopped), "abc");
  EXPECT_FALSE(stopped);
  EXPECT_EQ(m.Push("N", &stopped), "");
  EXPECT_EQ(m.Push("Dq", &stopped), "");
  EXPECT_TRUE(stopped);
  EXPECT_EQ(m.Flush(), "");
  StopMatcher n({"END"});
  EXPECT_EQ(n.Push("aEN", &stopped), "a");
  EXPECT_EQ(n.Push("x", &stopped), "ENx");
  EXPECT_EQ(n.Push("E", &stopped), "");
  EXPECT_EQ(n.Flush(), "E");
}

}  // namespace
}  // namespace xkv
