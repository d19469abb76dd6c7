// A worker fails under load (issue 18, parts 3 and 5): kill -9 of the last stage and SIGSTOP of the
// first. Every in-flight stream ends with UNAVAILABLE well within its deadline (a hung stage is
// given up after --stage-timeout), grpc.health.v1 turns NOT_SERVING within seconds, Admin
// GetClusterStatus answers within its own deadline and names the stage, new requests are refused
// at once; once the worker is back (restarted, or SIGCONT) the service recovers by itself and
// every stage holds exactly its idle KV blocks again (nothing leaked).
#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "tests/e2e/e2e_harness.h"
#include "tests/e2e/e2e_prompts.h"

namespace xkv::e2e {
namespace {

constexpr int kClients = 4;
const absl::Duration kDeadline = absl::Seconds(60);
const absl::Duration kStageTimeout = absl::Seconds(4);

enum class Fault { kKill, kStop };

void RunFault(Fault fault, int victim) {
  absl::StatusOr<std::unique_ptr<Cluster>> cluster = Cluster::Start(
      {.workers = 2,
       .flags = {absl::StrCat("--stage-timeout=", absl::ToInt64Seconds(kStageTimeout))}});
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  Cluster& c = **cluster;
  StreamResult healthy = Generate(c.generation(), GreedyRequest(kShortPrompt, 8));
  ASSERT_TRUE(healthy.status.ok()) << healthy.status.error_message() << c.Logs();
  absl::StatusOr<std::vector<int64_t>> idle = IdleBlocks(c);
  ASSERT_TRUE(idle.ok()) << idle.status();
  ASSERT_EQ(HealthStatus(c.address()), 1);

  BackgroundStreams load(c.generation());
  for (int i = 0; i < kClients; ++i) {
    xkv::v1::GenerateRequest r = GreedyRequest(kShortPrompt, 2000);
    r.set_ignore_eos(true);
    load.Start(r, kDeadline);
  }
  const bool streaming = load.WaitStreaming(kClients, absl::Seconds(90));
  const absl::Time fault_at = absl::Now();
  c.worker(victim).Signal(fault == Fault::kKill ? SIGKILL : SIGSTOP);

  // Health flips within a few seconds (a status check every second, each bounded by 2 s).
  EXPECT_TRUE(PollUntil([&] { return HealthStatus(c.address()) == 2; }, absl::Seconds(8)))
      << "grpc.health.v1 still says SERVING" << c.Logs();
  const absl::Duration to_not_serving = absl::Now() - fault_at;
  // GetClusterStatus never waits on the dead or hung stage past the stage status deadline.
  const absl::Time asked = absl::Now();
  absl::StatusOr<xkv::v1::GetClusterStatusResponse> st = c.ClusterStatus();
  EXPECT_LT(absl::Now() - asked, absl::Seconds(5));
  ASSERT_TRUE(st.ok()) << st.status();
  ASSERT_EQ(st->stages_size(), 2);
  EXPECT_EQ(st->stages(victim).health(), xkv::v1::HEALTH_STATE_UNREACHABLE);
  // New requests are refused at once.
  StreamResult down = Generate(c.generation(), GreedyRequest(kShortPrompt, 8), absl::Seconds(30));
  EXPECT_EQ(down.status.error_code(), grpc::StatusCode::UNAVAILABLE) << down.status.error_message();
  EXPECT_LT(down.elapsed, absl::Seconds(5));

  const std::vector<StreamResult> results = load.Join();
  absl::Time last_end = fault_at;
  for (const StreamResult& r : results) last_end = std::max(last_end, r.finished);
  const absl::Duration to_unavailable = last_end - fault_at;
  ASSERT_TRUE(streaming) << "the load never streamed" << c.Logs();
  for (int i = 0; i < kClients; ++i) {
    SCOPED_TRACE(testing::Message() << "in-flight request " << i);
    EXPECT_EQ(results[i].status.error_code(), grpc::StatusCode::UNAVAILABLE)
        << results[i].status.error_code() << ": " << results[i].status.error_message();
    EXPECT_GT(results[i].token_ids.size(), 0u);
  }
  // The streams ended within the stage timeout (plus a step and a status check), far inside
  // their deadline.
  EXPECT_LT(to_unavailable, kStageTimeout + absl::Seconds(10));

  // The worker comes back: the service recovers without help and holds no leftover blocks.
  if (fault == Fault::kKill) {
    ASSERT_TRUE(c.RestartWorker(victim).ok());
  } else {
    c.worker(victim).Signal(SIGCONT);
  }
  const absl::Time back_at = absl::Now();
  EXPECT_TRUE(PollUntil([&] { return HealthStatus(c.address()) == 1; }, absl::Seconds(60)))
      << "the service did not turn SERVING again" << c.Logs();
  std::fprintf(stderr,
               "%s of stage %d under %d streams: NOT_SERVING after %s, every stream UNAVAILABLE "
               "after %s, SERVING %s after the worker was back\n",
               fault == Fault::kKill ? "kill -9" : "SIGSTOP", victim, kClients,
               absl::FormatDuration(to_not_serving).c_str(),
               absl::FormatDuration(to_unavailable).c_str(),
               absl::FormatDuration(absl::Now() - back_at).c_str());
  StreamResult again = Generate(c.generation(), GreedyRequest(kShortPrompt, 8));
  ASSERT_TRUE(again.status.ok()) << again.status.error_message() << c.Logs();
  EXPECT_EQ(again.token_ids, healthy.token_ids);
  EXPECT_TRUE(BackToIdleBlocks(c, *idle)) << c.Logs();
}

TEST(WorkerFault, KilledLastStageUnderLoad) {
  if (std::string why = MissingPrerequisite(); !why.empty()) GTEST_SKIP() << why;
  RunFault(Fault::kKill, 1);
}

TEST(WorkerFault, StoppedFirstStageUnderLoad) {
  if (std::string why = MissingPrerequisite(); !why.empty()) GTEST_SKIP() << why;
  RunFault(Fault::kStop, 0);
}

// A worker restarted with a smaller --max-batched-tokens than the coordinator's steps is not
// reloaded (every larger step would fail on it): the service stays NOT_SERVING and refuses new
// requests at once, naming the stage and both limits; restarted with enough, it serves the same
// tokens again.
TEST(WorkerFault, RestartedWithASmallerStepLimitStaysDown) {
  if (std::string why = MissingPrerequisite(); !why.empty()) GTEST_SKIP() << why;
  absl::StatusOr<std::unique_ptr<Cluster>> cluster =
      Cluster::Start({.workers = 2, .flags = {"--max-batched-tokens=512"}});
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  Cluster& c = **cluster;
  StreamResult healthy = Generate(c.generation(), GreedyRequest(kShortPrompt, 8));
  ASSERT_TRUE(healthy.status.ok()) << healthy.status.error_message() << c.Logs();

  ASSERT_TRUE(c.RestartWorker(1, {"--max-batched-tokens=256"}).ok()) << c.Logs();
  EXPECT_TRUE(PollUntil([&] { return HealthStatus(c.address()) == 2; }, absl::Seconds(8)))
      << "grpc.health.v1 still says SERVING" << c.Logs();
  const std::string why = absl::StrCat(
      "pipeline stage 1 (", c.worker_address(1),
      ") takes at most 256 tokens per step (its --max-batched-tokens), below the coordinator's "
      "512; restart the worker with --max-batched-tokens 512 or more (or the coordinator with "
      "256 or less)");
  // Stays down: no reload loads it behind the health check's back.
  EXPECT_FALSE(PollUntil([&] { return HealthStatus(c.address()) == 1; }, absl::Seconds(3)));
  StreamResult refused = Generate(c.generation(), GreedyRequest(kShortPrompt, 8));
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(refused.status.error_message(), why + "; retry later") << c.Logs();
  absl::StatusOr<xkv::v1::StatusResponse> unloaded = c.WorkerStatus(1);
  ASSERT_TRUE(unloaded.ok()) << unloaded.status();
  EXPECT_EQ(unloaded->health(), xkv::v1::STAGE_HEALTH_NOT_LOADED);
  EXPECT_NE(c.coordinator().Log().find("xkv coordinator: stages " + why), std::string::npos)
      << c.Logs();

  ASSERT_TRUE(c.RestartWorker(1).ok()) << c.Logs();  // the default limit, 16384
  EXPECT_TRUE(PollUntil([&] { return HealthStatus(c.address()) == 1; }, absl::Seconds(60)))
      << "the service did not turn SERVING again" << c.Logs();
  StreamResult again = Generate(c.generation(), GreedyRequest(kShortPrompt, 8));
  ASSERT_TRUE(again.status.ok()) << again.status.error_message() << c.Logs();
  EXPECT_EQ(again.token_ids, healthy.token_ids);
}

}  // namespace
}  // namespace xkv::e2e
