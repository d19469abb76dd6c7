#include "model/sampler.h"

#include <cmath>
#include <map>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace xkv {
namespace {

TEST(SamplerTest, GreedyPicksLowestIndexOnTies) {
  const std::vector<float> logits = {0.5f, 2.f, -1.f, 2.f, 1.9f};
  EXPECT_EQ(Argmax(logits), 1);
  Sampler greedy({.temperature = 0.f});
  EXPECT_EQ(greedy.Sample(logits), 1);
  Sampler negative({.temperature = -1.f, .seed = 5});
  EXPECT_EQ(negative.Sample(logits), 1);
}

TEST(SamplerTest, TopKKeepsExactlyKWithTiesByIndex) {
  const std::vector<float> logits = {1.f, 3.f, 3.f, 0.f, 2.f, 3.f};
  const auto d = SamplingDistribution(logits, {.temperature = 1.f, .top_k = 2});
  ASSERT_EQ(d.size(), 2u);
  EXPECT_EQ(d[0].id, 1);
  EXPECT_EQ(d[1].id, 2);
  EXPECT_NEAR(d[0].p, 0.5f, 1e-6);
}

TEST(SamplerTest, TopPKeepsSmallestPrefixReachingP) {
  // Untempered probabilities 0.5, 0.25, 0.125, 0.125.
  const std::vector<float> logits = {std::log(0.125f), std::log(0.5f), std::log(0.125f),
                                     std::log(0.25f)};
  auto d = SamplingDistribution(logits, {.temperature = 1.f, .top_p = 0.75f});
  ASSERT_EQ(d.size(), 2u);  // 0.5 + 0.25 reaches 0.75
  EXPECT_EQ(d[0].id, 1);
  EXPECT_EQ(d[1].id, 3);
  EXPECT_NEAR(d[0].p, 2.f / 3.f, 1e-6);
  d = SamplingDistribution(logits, {.temperature = 1.f, .top_p = 0.76f});
  EXPECT_EQ(d.size(), 3u);
  // top-p is applied before temperature: a high temperature does not widen the nucleus.
  d = SamplingDistribution(logits, {.temperature = 100.f, .top_p = 0.75f});
  ASSERT_EQ(d.size(), 2u);
  EXPECT_NEAR(d[0].p, 0.5f, 0.01f);
  // top-k first, then top-p over the renormalised survivors.
  d = SamplingDistribution(logits, {.temperature = 1.f, .top_k = 3, .top_p = 0.8f});
  ASSERT_EQ(d.size(), 2u);  // 0.5/0.875 = 0.571, + 0.25/0.875 = 0.857 >= 0.8
}

TEST(SamplerTest, TemperatureScalesTheSoftmax) {
  const std::vector<float> logits = {0.f, 1.f};
  const auto d = SamplingDistribution(logits, {.temperature = 0.5f});
  ASSERT_EQ(d.size(), 2u);
  EXPECT_EQ(d[1].id, 1);
  EXPECT_NEAR(d[1].p, std::exp(2.0) / (1 + std::exp(2.0)), 1e-6);
}

// Empirical frequencies over 40k draws within 0.01 of the target distribution (about 5 sigma).
TEST(SamplerTest, SampleFrequenciesMatchDistribution) {
  const std::vector<float> logits = {0.f, 1.f, 2.f, -0.5f, 1.5f};
  const SamplingParams params{.temperature = 0.8f, .top_k = 4, .top_p = 0.95f, .seed = 42};
  const auto d = SamplingDistribution(logits, params);
  Sampler s(params);
  std::map<int, int> counts;
  const int n = 40000;
  for (int i = 0; i < n; ++i) ++counts[s.Sample(logits)];
  double total_p = 0;
  for (const Candidate& c : d) {
    EXPECT_NEAR(counts[c.id] / double(n), c.p, 0.01) << c.id;
    total_p += c.p;
  }
  EXPECT_NEAR(total_p, 1.0, 1e-5);
  int kept = 0;
  for (const auto& [id, count] : counts) kept += count;
  for (const Candidate& c : d) kept -= counts[c.id];
  EXPECT_EQ(kept, 0);              // nothing outside the truncated set
  EXPECT_EQ(counts.count(3), 0u);  // the lowest logit is cut by top-k = 4
}

TEST(SamplerTest, SameSeedSameSequenceDifferentSeedDiffers) {
  std::vector<float> logits(100);
  for (int i = 0; i < 100; ++i) logits[i] = std::sin(i * 0.37f);
  auto draw = [&](uint64_t seed) {
    Sampler s({.temperature = 1.f, .seed = seed});
    std::vector<int32_t> out;
    for (int i = 0; i < 50; ++i) out.push_back(s.Sample(logits));
    return out;
  };
  EXPECT_EQ(draw(7), draw(7));
  EXPECT_NE(draw(7), draw(8));
}

TEST(SamplerTest, MinPKeepsTokensWithinAFactorOfTheTop) {
  // Untempered probabilities 0.5, 0.25, 0.125, 0.125: min_p 0.3 keeps p >= 0.15.
  const std::vector<float> logits = {std::log(0.125f), std::log(0.5f), std::log(0.125f),
                                     std::log(0.25f)};
  auto d = SamplingDistribution(logits, {.temperature = 1.f, .min_p = 0.3f});
  ASSERT_EQ(d.size(), 2u);
  EXPECT_EQ(d[0].id, 1);
  EXPECT_EQ(d[1].id, 3);
  EXPECT_NEAR(d[0].p, 2.f / 3.f, 1e-6);
  EXPECT_EQ(SamplingDistribution(logits, {.temperature = 1.f, .min_p = 0.24f}).size(), 4u);
  EXPECT_EQ(SamplingDistribution(logits, {.temperature = 1.f, .min_p = 1.f}).size(), 1u);
}

TEST(SamplerTest, PenaltiesLowerTheGeneratedTokens) {
  // Greedy: token 0 leads by 1.5; each time it is generated a frequency penalty of 1 lowers it.
  const std::vector<float> logits = {3.f, 1.5f, 1.f};
  Sampler frequency({.temperature = 0.f, .frequency_penalty = 1.f});
  std::vector<int32_t> got;
  for (int i = 0; i < 4; ++i) got.push_back(frequency.Sample(logits));
  // 0 (3), 0 (3-1=2 > 1.5), 1 (3-2=1 < 1.5), then 0 (1) vs 1 (0.5) vs 2 (1): 0 (lowest index).
  EXPECT_EQ(got, (std::vector<int32_t>{0, 0, 1, 0}));
  // A presence penalty counts once per token: 0, then 1 (1.5 > 3-2), then 0 (3-2 ties token 2's
  // 1: lowest index).
  Sampler presence({.temperature = 0.f, .presence_penalty = 2.f});
  got.clear();
  for (int i = 0; i < 3; ++i) got.push_back(presence.Sample(logits));
  EXPECT_EQ(got, (std::vector<int32_t>{0, 1, 0}));
  // A negative penalty favours repetition.
  Sampler repeat({.temperature = 0.f, .presence_penalty = -2.f});
  EXPECT_EQ(repeat.Sample(std::vector<float>{1.f, 2.f}), 1);
  EXPECT_EQ(repeat.Sample(std::vector<float>{3.f, 2.f}), 1);
}

TEST(SamplerTest, RepetitionPenaltyScalesContextAndGeneratedTokens) {
  // vLLM's rule: a positive logit is divided by the penalty, a non-positive one multiplied, once
  // per distinct token of the prompt (AddContext) or the output.
  const std::vector<float> logits = {2.f, 1.5f, -1.f, -1.2f};
  Sampler off({.temperature = 0.f});
  off.AddContext(std::vector<int32_t>{0, 0, 2});
  EXPECT_EQ(off.Sample(logits), 0);  // 1 (the default) is off: the context changes nothing
  Sampler prompt({.temperature = 0.f, .repetition_penalty = 2.f});
  prompt.AddContext(std::vector<int32_t>{0, 0, 7000});  // repeats and out-of-vocab ids: harmless
  EXPECT_EQ(prompt.Sample(logits), 1);                  // 2 / 2 = 1 < 1.5
  // Token 1 was generated: 1.5 / 2 = 0.75 < token 0's 1 (penalized once, not per occurrence).
  EXPECT_EQ(prompt.Sample(logits), 0);
  // Negative logits are multiplied: token 2 (-1 * 2 = -2) falls below token 3 (-1.2).
  Sampler negative({.temperature = 0.f, .repetition_penalty = 2.f});
  negative.AddContext(std::vector<int32_t>{0, 1, 2});
  EXPECT_EQ(negative.Sample(std::vector<float>{-3.f, -3.f, -1.f, -1.2f}), 3);
  // A penalty below 1 favours repetition: 1.5 / 0.5 = 3 > 2.
  Sampler favour({.temperature = 0.f, .repetition_penalty = 0.5f});
  favour.AddContext(std::vector<int32_t>{1});
  EXPECT_EQ(favour.Sample(logits), 1);
  // The presence penalty applies on top (vLLM's order): token 0 first (2 > 1.5), then
  // 2 / 1.25 - 1 = 0.6 < 1.5: token 1 (the repetition penalty alone would keep 1.6 > 1.5).
  Sampler both({.temperature = 0.f, .presence_penalty = 1.f, .repetition_penalty = 1.25f});
  EXPECT_EQ(both.Sample(logits), 0);
  EXPECT_EQ(both.Sample(logits), 1);
  // Logprobs stay the model's (before penalties).
  Sampler lp({.temperature = 0.f, .repetition_penalty = 2.f, .logprobs = 0});
  lp.AddContext(std::vector<int32_t>{0});
  EXPECT_EQ(lp.Sample(logits), 1);
  EXPECT_NEAR(lp.last_logprobs()->token.logprob, LogprobsOf(logits, 1, 0).token.logprob, 1e-6);
}

TEST(SamplerTest, LogprobsAreTheModelsLogSoftmax) {
  const std::vector<float> logits = {1.f, 3.f, 2.f, 3.f};
  const double log_z = std::log(std::exp(1.0) + 2 * std::exp(3.0) + std::exp(2.0));
  const SampledLogprobs l = LogprobsOf(logits, 2, 3);
  EXPECT_EQ(l.token.id, 2);
  EXPECT_NEAR(l.token.logprob, 2 - log_z, 1e-6);
  ASSERT_EQ(l.top.size(), 3u);
  EXPECT_EQ(l.top[0].id, 1);  // ties: lowest id first
  EXPECT_EQ(l.top[1].id, 3);
  EXPECT_EQ(l.top[2].id, 2);
  EXPECT_NEAR(l.top[0].logprob, 3 - log_z, 1e-6);
  EXPECT_TRUE(LogprobsOf(logits, 0, 0).top.empty());
  // The Sampler records them for its sampled token, from the raw logits (before penalties).
  Sampler s({.temperature = 0.f, .frequency_penalty = 2.f, .logprobs = 1});
  EXPECT_EQ(s.Sample(logits), 1);
  ASSERT_TRUE(s.last_logprobs().has_value());
  EXPECT_EQ(s.last_logprobs()->token.id, 1);
  EXPECT_NEAR(s.last_logprobs()->token.logprob, 3 - log_z, 1e-6);
  EXPECT_EQ(s.Sample(logits), 3);  // token 1 penalized
  EXPECT_NEAR(s.last_logprobs()->token.logprob, 3 - log_z, 1e-6);
  EXPECT_FALSE(Sampler({}).last_logprobs().has_value());
}

TEST(SamplerTest, ValidatesParams) {
  EXPECT_FALSE(ValidateSamplingParams({.logprobs = 21}).ok());
  EXPECT_FALSE(ValidateSamplingParams({.logprobs = -2}).ok());
  EXPECT_TRUE(ValidateSamplingParams({.logprobs = 20}).ok());
  EXPECT_TRUE(ValidateSamplingParams({.temperature = 0.7f, .top_p = 0.9f}).ok());
  EXPECT_TRUE(ValidateSamplingParams({.min_p = 1.f, .presence_penalty = -2.f}).ok());
  EXPECT_FALSE(ValidateSamplingParams({.min_p = -0.1f}).ok());
  EXPECT_FALSE(ValidateSamplingParams({.min_p = 1.5f}).ok());
  EXPECT_FALSE(ValidateSamplingParams({.presence_penalty = 2.5f}).ok());
  EXPECT_FALSE(ValidateSamplingParams({.frequency_penalty = NAN}).ok());
  EXPECT_TRUE(ValidateSamplingParams({.repetition_penalty = 0.01f}).ok());
  EXPECT_TRUE(ValidateSamplingParams({.repetition_penalty = 3.f}).ok());
  for (float bad : {0.f, -1.f, NAN, INFINITY}) {
    const absl::Status s = ValidateSamplingParams({.repetition_penalty = bad});
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(s.message(), testing::HasSubstr("repetition_penalty")) << bad;
  }
  EXPECT_FALSE(ValidateSamplingParams({.top_p = 0.f}).ok());
  EXPECT_FALSE(ValidateSamplingParams({.top_p = 1.5f}).ok());
  EXPECT_FALSE(ValidateSamplingParams({.temperature = NAN}).ok());
}

}  // namespace
}  // namespace xkv
