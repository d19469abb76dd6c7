// 1, 2 and 3 `xkv worker` processes behind `xkv coordinator` give the in-process engine's greedy
// tokens (full cache), and the same tokens as each other with xkv at a fixed budget.
#include <gtest/gtest.h>

#include <map>
#include <string>

#include "tests/e2e/e2e_harness.h"
#include "tests/e2e/e2e_prompts.h"

namespace xkv::e2e {
namespace {

constexpr int kTokens = 16;

TEST(ClusterParity, OneTwoThreeWorkersMatchTheInProcessEngine) {
  if (std::string why = MissingPrerequisite(); !why.empty()) GTEST_SKIP() << why;
  const std::string dir = MakeTempDir("xkv-e2e-ref-");
  std::map<std::string, std::string> reference;
  for (const char* prompt : {kShortPrompt, kLongPrompt}) {
    absl::StatusOr<std::string> text = ReferenceGenerate(prompt, kTokens, dir);
    ASSERT_TRUE(text.ok()) << text.status();
    ASSERT_FALSE(text->empty());
    reference[prompt] = *text;
  }

  StreamResult xkv_one_worker;
  for (int workers : {1, 2, 3}) {
    SCOPED_TRACE(testing::Message() << workers << " worker(s)");
    absl::StatusOr<std::unique_ptr<Cluster>> cluster =
        Cluster::Start({.workers = workers, .flags = {"--policy=full"}});
    ASSERT_TRUE(cluster.ok()) << cluster.status();
    Cluster& c = **cluster;
    absl::StatusOr<xkv::v1::GetClusterStatusResponse> st = c.ClusterStatus();
    ASSERT_TRUE(st.ok()) << st.status();
    ASSERT_EQ(st->stages_size(), workers);

    for (const char* prompt : {kShortPrompt, kLongPrompt}) {
      StreamResult full = Generate(c.generation(), GreedyRequest(prompt, kTokens, "full"));
      ASSERT_TRUE(full.status.ok()) << full.status.error_message() << c.Logs();
      EXPECT_EQ(full.text, reference[prompt]) << "prompt: " << prompt;
      ASSERT_TRUE(full.usage.has_value());
      // The engine may stop early at EOS, and so must the service (the texts are compared).
      EXPECT_EQ(full.usage->completion_tokens(), static_cast<int>(full.token_ids.size()));
      EXPECT_LE(full.usage->completion_tokens(), kTokens);
      EXPECT_EQ(full.usage->kv_bytes_held(), full.usage->kv_bytes_full());
    }

    StreamResult xkv = Generate(c.generation(), GreedyRequest(kLongPrompt, kTokens, "xkv", 0.4));
    ASSERT_TRUE(xkv.status.ok()) << xkv.status.error_message() << c.Logs();
    ASSERT_TRUE(xkv.usage.has_value());
    EXPECT_EQ(xkv.usage->policy(), "xkv");
    EXPECT_LT(xkv.usage->kv_bytes_held(), xkv.usage->kv_bytes_full())
        << "xkv at budget_fraction 0.4 must hold less than a full cache";
    EXPECT_EQ(xkv.usage->layers_size(), 30);
    if (workers == 1) {
      xkv_one_worker = xkv;
      continue;
    }
    EXPECT_EQ(xkv.token_ids, xkv_one_worker.token_ids);
    EXPECT_EQ(xkv.text, xkv_one_worker.text);
    for (int l = 0; l < xkv.usage->layers_size() && l < xkv_one_worker.usage->layers_size(); ++l) {
      EXPECT_EQ(xkv.usage->layers(l).kept_tokens(), xkv_one_worker.usage->layers(l).kept_tokens())
          << "layer " << l;
    }
    EXPECT_EQ(xkv.usage->kv_bytes_held(), xkv_one_worker.usage->kv_bytes_held());
  }
}

}  // namespace
}  // namespace xkv::e2e
