// A worker killed mid-stream: in-flight requests end with UNAVAILABLE well within their deadline
// (no hang), and once the worker is back on its address the service answers again, correctly.
// Start order and rejoining: a coordinator started before its workers waits for them (with
// backoff) and serves once they are up; a worker restarted while the service is idle is loaded
// again by the coordinator's idle health check, so the next request succeeds at once.
#include <gtest/gtest.h>
#include <signal.h>

#include <string>
#include <vector>

#include "tests/e2e/e2e_harness.h"
#include "tests/e2e/e2e_prompts.h"

namespace xkv::e2e {
namespace {

constexpr int kInFlight = 2;
const absl::Duration kDeadline = absl::Seconds(90);

class KilledWorker : public testing::TestWithParam<int> {};

TEST_P(KilledWorker, InFlightRequestsGetUnavailableAndTheServiceRecovers) {
  if (std::string why = MissingPrerequisite(); !why.empty()) GTEST_SKIP() << why;
  const int victim = GetParam();
  absl::StatusOr<std::unique_ptr<Cluster>> cluster = Cluster::Start({.workers = 2});
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  Cluster& c = **cluster;
  StreamResult healthy = Generate(c.generation(), GreedyRequest(kShortPrompt, 8));
  ASSERT_TRUE(healthy.status.ok()) << healthy.status.error_message() << c.Logs();

  BackgroundStreams load(c.generation());
  for (int i = 0; i < kInFlight; ++i) {
    xkv::v1::GenerateRequest r = GreedyRequest(kLongPrompt, 2000);
    r.set_ignore_eos(true);
    load.Start(r, kDeadline);
  }
  // Bounded wait until both requests stream, then kill the worker.
  const bool both_streaming = load.WaitStreaming(kInFlight, absl::Seconds(60));
  c.worker(victim).Signal(SIGKILL);
  const std::vector<StreamResult> results = load.Join();
  ASSERT_TRUE(both_streaming) << "the requests never started streaming" << c.Logs();
  for (int i = 0; i < kInFlight; ++i) {
    SCOPED_TRACE(testing::Message() << "in-flight request " << i);
    EXPECT_EQ(results[i].status.error_code(), grpc::StatusCode::UNAVAILABLE)
        << results[i].status.error_code() << ": " << results[i].status.error_message();
    EXPECT_LT(results[i].elapsed, kDeadline);
    EXPECT_GT(results[i].token_ids.size(), 0u);
  }

  // While the worker is down, new requests fail fast with UNAVAILABLE.
  StreamResult down = Generate(c.generation(), GreedyRequest(kShortPrompt, 8), absl::Seconds(60));
  EXPECT_EQ(down.status.error_code(), grpc::StatusCode::UNAVAILABLE) << down.status.error_message();

  // Back on the same address: the service serves again (bounded retries while it reconnects).
  ASSERT_TRUE(c.RestartWorker(victim).ok());
  const absl::Time deadline = absl::Now() + absl::Seconds(90);
  StreamResult again;
  do {
    again = Generate(c.generation(), GreedyRequest(kShortPrompt, 8), absl::Seconds(30));
    if (!again.status.ok()) absl::SleepFor(absl::Milliseconds(100));  // poll interval
  } while (!again.status.ok() && absl::Now() < deadline);
  ASSERT_TRUE(again.status.ok()) << "the service did not recover: " << again.status.error_code()
                                 << ": " << again.status.error_message() << c.Logs();
  EXPECT_EQ(again.token_ids, healthy.token_ids);
  absl::StatusOr<xkv::v1::GetClusterStatusResponse> st = c.ClusterStatus();
  ASSERT_TRUE(st.ok()) << st.status();
  for (const auto& stage : st->stages()) {
    EXPECT_EQ(stage.health(), xkv::v1::HEALTH_STATE_SERVING) << stage.index();
  }
}

TEST(StartOrder, CoordinatorStartedBeforeItsWorkersWaitsForThem) {
  if (std::string why = MissingPrerequisite(); !why.empty()) GTEST_SKIP() << why;
  absl::StatusOr<std::unique_ptr<Cluster>> cluster =
      Cluster::Start({.workers = 2, .workers_after_coordinator = true});
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  StreamResult r = Generate((*cluster)->generation(), GreedyRequest(kShortPrompt, 8));
  EXPECT_TRUE(r.status.ok()) << r.status.error_message() << (*cluster)->Logs();
  EXPECT_FALSE(r.token_ids.empty());
}

TEST(Rejoin, AWorkerRestartedWhileIdleIsReloadedBeforeTheNextRequest) {
  if (std::string why = MissingPrerequisite(); !why.empty()) GTEST_SKIP() << why;
  absl::StatusOr<std::unique_ptr<Cluster>> cluster = Cluster::Start({.workers = 2});
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  Cluster& c = **cluster;
  StreamResult healthy = Generate(c.generation(), GreedyRequest(kShortPrompt, 8));
  ASSERT_TRUE(healthy.status.ok()) << healthy.status.error_message() << c.Logs();
  ASSERT_TRUE(c.RestartWorker(1).ok());  // SIGTERM, then a fresh process on the same port
  // No request in between: the coordinator's idle health check must notice and reload.
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  bool serving = false;
  while (!serving && absl::Now() < deadline) {
    absl::StatusOr<xkv::v1::GetClusterStatusResponse> st = c.ClusterStatus();
    serving = st.ok() && st->stages_size() == 2;
    for (int i = 0; serving && i < st->stages_size(); ++i) {
      serving = st->stages(i).health() == xkv::v1::HEALTH_STATE_SERVING;
    }
    if (!serving) absl::SleepFor(absl::Milliseconds(200));  // poll interval
  }
  ASSERT_TRUE(serving) << "the restarted worker was not reloaded" << c.Logs();
  // The stages answer SERVING as soon as their LoadStage returns; the coordinator admits again
  // once its reload of every stage has finished, and then logs it.
  while (c.Logs().find("the stages were reloaded") == std::string::npos && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(100));  // poll interval
  }
  ASSERT_NE(c.Logs().find("the stages were reloaded"), std::string::npos) << c.Logs();
  StreamResult again = Generate(c.generation(), GreedyRequest(kShortPrompt, 8));
  ASSERT_TRUE(again.status.ok()) << again.status.error_message() << c.Logs();
  EXPECT_EQ(again.token_ids, healthy.token_ids);
}

INSTANTIATE_TEST_SUITE_P(Stage, KilledWorker, testing::Values(1, 0),
                         [](const testing::TestParamInfo<int>& info) {
                           return info.param == 0 ? "First" : "Last";
                         });

}  // namespace
}  // namespace xkv::e2e
