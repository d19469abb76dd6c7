// The profile pass under one step budget (issue 13 part 4): with workers that take at most 64
// tokens per step (--max-batched-tokens 64, as a GPU stage sized for it), a per_request prompt
// longer than the budget cannot get a scores-only pass (it keeps no KV, so it cannot be chunked):
// it is profiled one_pass-style by its chunked prefill, whose final chunk observes the window, and
// then compacted. Before, the unsplit pass exceeded the workers' bound and failed the request.
#include <string>

#include "gtest/gtest.h"
#include "tests/e2e/e2e_harness.h"
#include "tests/e2e/e2e_prompts.h"

namespace xkv::e2e {
namespace {

TEST(ChunkedProfile, PerRequestPromptLongerThanTheStepBudgetIsProfiledInChunks) {
  if (std::string why = MissingPrerequisite(); !why.empty()) GTEST_SKIP() << why;
  absl::StatusOr<std::unique_ptr<Cluster>> cluster =
      Cluster::Start({.workers = 2,
                      .flags = {"--policy=xkv", "--retention=0.9", "--profile=per_request",
                                "--max-batched-tokens=64", "--prefill-chunk=32", "--max-batch=4"},
                      .worker_flags = {"--max-batched-tokens=64"}});
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  Cluster& c = **cluster;
  for (const char* prompt : {kLongPrompt, "Paris is the capital of France. It is known for"}) {
    StreamResult r = Generate(c.generation(), GreedyRequest(prompt, 4));
    ASSERT_TRUE(r.status.ok()) << r.status.error_message() << c.Logs();
    ASSERT_TRUE(r.usage.has_value());
    const xkv::v1::Usage& u = *r.usage;
    EXPECT_EQ(u.profile_mode(), "per_request");
    EXPECT_TRUE(u.profiled()) << "prompt of " << u.prompt_tokens() << " tokens";
    EXPECT_GE(u.completion_tokens(), 1);
    if (u.prompt_tokens() > 64) {  // the long prompt: compressed after its chunked prefill
      int smaller = 0;
      for (const auto& l : u.layers()) smaller += l.kept_tokens() < u.prompt_tokens();
      EXPECT_GT(smaller, 0) << "no layer was compacted";
    }
  }
}

}  // namespace
}  // namespace xkv::e2e
