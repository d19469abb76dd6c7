// The sampling additions over gRPC (the same fields the OpenAI API maps onto): n choices with
// their index and one usage each (choice i == an n = 1 request with seed + i), min_p, the
// presence / frequency / repetition penalties, logprobs, and their range checks; the server keeps
// serving.
#include <gtest/gtest.h>

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "tests/e2e/e2e_harness.h"

namespace xkv::e2e {
namespace {

constexpr char kPrompt[] = "Once upon a time, in a quiet village,";

xkv::v1::GenerateRequest Sampled(int n, uint64_t seed) {
  xkv::v1::GenerateRequest r = GreedyRequest(kPrompt, 6);
  r.set_ignore_eos(true);
  r.mutable_sampling()->set_temperature(1.0f);
  r.mutable_sampling()->set_seed(seed);
  r.mutable_sampling()->set_n(n);
  return r;
}

TEST(SamplingChoicesTest, ChoicesMinPAndPenaltiesOverGrpc) {
  if (std::string why = MissingPrerequisite(); !why.empty()) GTEST_SKIP() << why;
  absl::StatusOr<std::unique_ptr<Cluster>> cluster =
      Cluster::Start({.workers = 1, .embedded = true});
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  xkv::v1::Generation::Stub& stub = (*cluster)->generation();

  // n = 3: responses tagged 0..2, each choice ends with its own usage.
  std::map<int, std::string> texts;
  std::map<int, int> usages;
  StreamResult all = Generate(stub, Sampled(3, 7), absl::Seconds(120),
                              [&](const xkv::v1::GenerateResponse& r, grpc::ClientContext&) {
                                texts[r.index()] += r.text();
                                if (r.has_usage()) {
                                  ++usages[r.index()];
                                  EXPECT_EQ(r.usage().completion_tokens(), 6);
                                }
                              });
  ASSERT_TRUE(all.status.ok()) << all.status.error_message() << (*cluster)->Logs();
  EXPECT_EQ(usages, (std::map<int, int>{{0, 1}, {1, 1}, {2, 1}}));
  for (int i = 0; i < 3; ++i) {
    StreamResult one = Generate(stub, Sampled(1, 7 + i));
    ASSERT_TRUE(one.status.ok()) << one.status.error_message();
    EXPECT_EQ(one.text, texts[i]) << "choice " << i << " samples with seed + " << i;
  }

  // min_p = 1 keeps only the most likely token: any temperature decodes greedily.
  StreamResult greedy = Generate(stub, GreedyRequest(kPrompt, 6));
  xkv::v1::GenerateRequest top_only = Sampled(1, 3);
  top_only.mutable_sampling()->set_temperature(1.5f);
  top_only.mutable_sampling()->set_min_p(1.0f);
  top_only.set_ignore_eos(false);
  StreamResult top = Generate(stub, top_only);
  ASSERT_TRUE(top.status.ok() && greedy.status.ok());
  EXPECT_EQ(top.token_ids, greedy.token_ids);

  // A frequency penalty changes greedy decoding once a token repeats.
  xkv::v1::GenerateRequest repeat = GreedyRequest("one one one one one one one one", 12);
  repeat.set_ignore_eos(true);
  StreamResult plain = Generate(stub, repeat);
  repeat.mutable_sampling()->set_frequency_penalty(2.0f);
  StreamResult penalized = Generate(stub, repeat);
  ASSERT_TRUE(plain.status.ok() && penalized.status.ok());
  EXPECT_NE(plain.token_ids, penalized.token_ids);

  // Logprobs: one entry per token; greedy picks the most likely, so it heads the alternatives.
  xkv::v1::GenerateRequest with_logprobs = GreedyRequest(kPrompt, 6);
  with_logprobs.mutable_sampling()->set_logprobs(2);
  int entries = 0;
  StreamResult lp = Generate(stub, with_logprobs, absl::Seconds(120),
                             [&](const xkv::v1::GenerateResponse& r, grpc::ClientContext&) {
                               ASSERT_EQ(r.logprobs_size(), r.token_ids_size());
                               for (int i = 0; i < r.logprobs_size(); ++i) {
                                 const xkv::v1::TokenLogprobs& l = r.logprobs(i);
                                 EXPECT_EQ(l.token().token_id(), r.token_ids(i));
                                 EXPECT_LE(l.token().logprob(), 0.f);
                                 ASSERT_EQ(l.top_size(), 2);
                                 EXPECT_EQ(l.top(0).token_id(), l.token().token_id());
                                 EXPECT_FLOAT_EQ(l.top(0).logprob(), l.token().logprob());
                                 EXPECT_GE(l.top(0).logprob(), l.top(1).logprob());
                                 ++entries;
                               }
                             });
  ASSERT_TRUE(lp.status.ok()) << lp.status.error_message();
  EXPECT_EQ(lp.token_ids, greedy.token_ids);
  EXPECT_EQ(entries, static_cast<int>(greedy.token_ids.size()));

  // Out of range: INVALID_ARGUMENT naming the field; the server keeps serving.
  struct Bad {
    std::function<void(xkv::v1::SamplingOptions&)> edit;
    std::string mentions;
  };
  for (const Bad& bad :
       std::vector<Bad>{{[](auto& s) { s.set_n(17); }, "n is 17"},
                        {[](auto& s) { s.set_n(-1); }, "n is -1"},
                        {[](auto& s) { s.set_min_p(1.5f); }, "min_p"},
                        {[](auto& s) { s.set_presence_penalty(-3.0f); }, "presence_penalty"},
                        {[](auto& s) { s.set_frequency_penalty(2.5f); }, "frequency_penalty"},
                        {[](auto& s) { s.set_logprobs(21); }, "logprobs is 21"},
                        {[](auto& s) { s.set_repetition_penalty(0.f); }, "repetition_penalty"},
                        {[](auto& s) { s.set_repetition_penalty(-1.f); }, "repetition_penalty"}}) {
    xkv::v1::GenerateRequest r = Sampled(2, 1);
    bad.edit(*r.mutable_sampling());
    StreamResult s = Generate(stub, r);
    EXPECT_EQ(s.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << bad.mentions;
    EXPECT_NE(s.status.error_message().find(bad.mentions), std::string::npos)
        << s.status.error_message();
  }
  EXPECT_TRUE(Generate(stub, GreedyRequest(kPrompt, 2)).status.ok());
}

// repetition_penalty (vLLM's) counts the prompt's tokens too: it moves the very first token, which
// no presence / frequency penalty can (nothing was generated yet). Split over two workers, the
// last stage (which embeds nothing) records the prompt itself: the same tokens as one stage.
TEST(SamplingChoicesTest, RepetitionPenaltyCoversThePromptOnOneAndTwoStages) {
  if (std::string why = MissingPrerequisite(); !why.empty()) GTEST_SKIP() << why;
  // Greedy continues " red"; with the penalty it cannot (" blue").
  xkv::v1::GenerateRequest repeat = GreedyRequest("red, red, red, red, red,", 10);
  repeat.set_ignore_eos(true);
  std::vector<std::vector<int32_t>> penalized_by_cluster;
  for (const ClusterOptions& options :
       {ClusterOptions{.workers = 1, .embedded = true}, ClusterOptions{.workers = 2}}) {
    absl::StatusOr<std::unique_ptr<Cluster>> cluster = Cluster::Start(options);
    ASSERT_TRUE(cluster.ok()) << cluster.status();
    xkv::v1::Generation::Stub& stub = (*cluster)->generation();
    xkv::v1::GenerateRequest r = repeat;
    StreamResult plain = Generate(stub, r);
    r.mutable_sampling()->set_repetition_penalty(1.0f);  // explicit 1: off
    StreamResult off = Generate(stub, r);
    r.mutable_sampling()->set_frequency_penalty(2.0f);
    StreamResult frequency = Generate(stub, r);
    r.mutable_sampling()->set_frequency_penalty(0.f);
    r.mutable_sampling()->set_repetition_penalty(2.0f);
    StreamResult penalized = Generate(stub, r);
    ASSERT_TRUE(plain.status.ok() && off.status.ok() && frequency.status.ok() &&
                penalized.status.ok())
        << penalized.status.error_message() << (*cluster)->Logs();
    ASSERT_EQ(plain.token_ids.size(), 10u);
    ASSERT_EQ(penalized.token_ids.size(), 10u);
    EXPECT_EQ(off.token_ids, plain.token_ids);
    EXPECT_EQ(frequency.token_ids[0], plain.token_ids[0]) << "no output yet: no frequency penalty";
    EXPECT_NE(penalized.token_ids[0], plain.token_ids[0]) << "the prompt's tokens are penalized";
    penalized_by_cluster.push_back(penalized.token_ids);
  }
  EXPECT_EQ(penalized_by_cluster[0], penalized_by_cluster[1]);
}

}  // namespace
}  // namespace xkv::e2e
