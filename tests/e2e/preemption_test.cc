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

// Serves both prompts at once (greedy, ignore_eos, the request's `policy`) on a fresh embedded
// 2-stage server with `kv_blocks` KV blocks per layer, and checks that the pools end idle.
PairRun RunPair(const std::vector<std::string>& prompts, const std::string& policy, int kv_blocks) {
  PairRun run;
  absl::StatusOr<std::unique_ptr<Cluster>> cluster =
      Cluster::Start({.workers = 2,
                      .embedded = true,
                      .flags = {absl::StrCat("--kv-blocks=", kv_blocks),
                                "--kv-admission=max_utilization", "--max-batch=2"}});
  EXPECT_TRUE(cluster.ok()) << cluster.status();
  if (!cluster.ok()) return run;
  Cluster& c = **cluster;
  absl::StatusOr<std::vector<int64_t>> idle = IdleBlocks(c);
  EXPECT_TRUE(idle.ok()) << idle.status();
  BackgroundStreams streams(c.generation());
  for (const std::string& p : prompts) {
    xkv::v1::GenerateRequest r = GreedyRequest(p, kTokens, policy);
    r.set_ignore_eos(true);
    streams.Start(r, absl::Seconds(180));
  }
  run.results = streams.Join();
  run.preemptions = Count(c.coordinator().Log(), "preempted request");
  if (idle.ok()) {
    EXPECT_TRUE(BackToIdleBlocks(c, *idle)) << c.Logs();
  }
  for (const StreamResult& r : run.results) EXPECT_TRUE(r.status.ok()) << r.status.error_message();
  return run;
}

void ExpectSameStreams(const PairRun& preempted, const PairRun& roomy) {
  ASSERT_EQ(preempted.results.size(), roomy.results.size());
  for (size_t i = 0; i < roomy.results.size(); ++i) {
    const StreamResult& a = preempted.results[i];
    const StreamResult& b = roomy.results[i];
    EXPECT_EQ(a.token_ids.size(), static_cast<size_t>(kTokens)) << "request " << i;
    EXPECT_EQ(a.token_ids, b.token_ids) << "request " << i;
    EXPECT_EQ(a.text, b.text) << "request " << i;
    ASSERT_TRUE(a.usage.has_value());
    EXPECT_EQ(a.usage->completion_tokens(), kTokens);
    EXPECT_EQ(a.usage->prompt_tokens(), b.usage->prompt_tokens());
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
// block): 10 a layer hold one, not both, so the second admitted is preempted as they decode.
TEST(Preemption, APreemptedRequestStreamsTheTokensOfAnUnpreemptedRun) {
  if (std::string why = MissingPrerequisite(); !why.empty()) GTEST_SKIP() << why;
  const PairRun roomy = RunPair(Prompts(), "full", 64);
  EXPECT_EQ(roomy.preemptions, 0);
  const PairRun small = RunPair(Prompts(), "full", 10);
  EXPECT_GE(small.preemptions, 1) << "the small pool was meant to force a preemption";
  ExpectSameStreams(small, roomy);
}

}  // namespace
}  // namespace xkv::e2e
