// KV preemption under --kv-admission max_utilization (architecture.md §5): two greedy requests
// whose decodes outgrow a small KV pool run concurrently; the most recently admitted one is
// preempted (its blocks freed on every stage), recomputed from its prompt and the tokens it had
// streamed, and completes. Its stream must be seamless: the same tokens, no token twice or
// missing, as the same two requests served with room to spare; and every stage's pool ends idle.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tests/e2e/e2e_harness.h"

namespace xkv::e2e {
namespace {

constexpr int kTokens = 64;

// Occurrences of `needle` in `text`.
int Count(const std::string& text, const std::string& needle) {
  int n = 0;
  for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) ++n;
  return n;
}

struct PairRun {
  std::vector<StreamResult> results;
  int preemptions = 0;  // logged by the coordinator during the run
};

// On a fresh embedded 2-stage server with `kv_blocks` KV blocks per layer: for each policy in
// turn, serves both prompts at once (greedy, ignore_eos) and checks that the pools end idle.
std::vector<PairRun> RunPairs(const std::vector<std::string>& prompts,
                              const std::vector<std::string>& policies, int kv_blocks) {
  std::vector<PairRun> runs(policies.size());
  absl::StatusOr<std::unique_ptr<Cluster>> cluster =
      Cluster::Start({.workers = 2,
                      .embedded = true,
                      .flags = {absl::StrCat("--kv-blocks=", kv_blocks),
                                "--kv-admission=max_utilization", "--max-batch=2"}});
  EXPECT_TRUE(cluster.ok()) << cluster.status();
  if (!cluster.ok()) return runs;
  Cluster& c = **cluster;
  absl::StatusOr<std::vector<int64_t>> idle = IdleBlocks(c);
  EXPECT_TRUE(idle.ok()) << idle.status();
  for (size_t k = 0; k < policies.size(); ++k) {
    const int before = Count(c.coordinator().Log(), "preempted request");
    BackgroundStreams streams(c.generation());
    for (const std::string& p : prompts) {
      xkv::v1::GenerateRequest r = GreedyRequest(p, kTokens, policies[k]);
      r.set_ignore_eos(true);
      streams.Start(r, absl::Seconds(180));
    }
    runs[k].results = streams.Join();
    runs[k].preemptions = Count(c.coordinator().Log(), "preempted request") - before;
    if (idle.ok()) {
      EXPECT_TRUE(BackToIdleBlocks(c, *idle)) << c.Logs();
    }
    for (const StreamResult& r : runs[k].results) {
      EXPECT_TRUE(r.status.ok()) << policies[k] << ": " << r.status.error_message();
    }
  }
  return runs;
}

void ExpectSameStreams(const PairRun& preempted, const PairRun& roomy, const std::string& policy) {
  ASSERT_EQ(preempted.results.size(), roomy.results.size());
  for (size_t i = 0; i < roomy.results.size(); ++i) {
    const StreamResult& a = preempted.results[i];
    const StreamResult& b = roomy.results[i];
    EXPECT_EQ(a.token_ids.size(), static_cast<size_t>(kTokens)) << policy << " request " << i;
    EXPECT_EQ(a.token_ids, b.token_ids) << policy << " request " << i;
    EXPECT_EQ(a.text, b.text) << policy << " request " << i;
    ASSERT_TRUE(a.usage.has_value() && b.usage.has_value());
    EXPECT_EQ(a.usage->completion_tokens(), kTokens);
    EXPECT_EQ(a.usage->prompt_tokens(), b.usage->prompt_tokens());
    // A recomputed request keeps its budgets: the same per-layer cache sizes at the end.
    EXPECT_EQ(a.usage->kv_bytes_held(), b.usage->kv_bytes_held()) << policy << " request " << i;
  }
}

std::vector<std::string> Prompts() {
  return {
      "The history of the lighthouse begins with fires lit on hills near harbours, and the "
      "keepers who tended them through the night. Later",
      "A good recipe for bread needs flour, water, salt and yeast, and the patience to let "
      "the dough rise slowly in a warm kitchen. First"};
}

// Each request alone needs at most 7 blocks in each layer (about 40 prompt + 64 new tokens, 16 a
// block): 10 a layer hold one, not both, so the second admitted is preempted as they decode. With
// the full cache the recompute writes the same cache; with xkv (per-request profile, the service
// default) the chunk that ends the prompt compacts it again with the budgets it already had.
TEST(Preemption, APreemptedRequestStreamsTheTokensOfAnUnpreemptedRun) {
  if (std::string why = MissingPrerequisite(); !why.empty()) GTEST_SKIP() << why;
  const std::vector<std::string> policies = {"full", "xkv"};
  const std::vector<PairRun> roomy = RunPairs(Prompts(), policies, 64);
  const std::vector<PairRun> small = RunPairs(Prompts(), policies, 10);
  ASSERT_EQ(roomy.size(), policies.size());
  ASSERT_EQ(small.size(), policies.size());
  for (size_t k = 0; k < policies.size(); ++k) {
    EXPECT_EQ(roomy[k].preemptions, 0) << policies[k];
    EXPECT_GE(small[k].preemptions, 1) << policies[k] << ": the small pool was meant to preempt";
    ExpectSameStreams(small[k], roomy[k], policies[k]);
  }
}

}  // namespace
}  // namespace xkv::e2e
