// SIGTERM of the coordinator under load (issue 18, part 4): admission stops at once (new requests
// get UNAVAILABLE, grpc.health.v1 says NOT_SERVING), streams that finish within --shutdown-grace
// complete normally, the rest end with UNAVAILABLE when the grace is over, every worker is back
// at its idle KV block count and the coordinator exits 0. Admin Drain refuses new requests at
// once with UNAVAILABLE and a retry hint, and Resume admits again.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <cstdio>
#include <string>
#include <vector>

#include "tests/e2e/e2e_harness.h"
#include "tests/e2e/e2e_prompts.h"

namespace xkv::e2e {
namespace {

constexpr int kShortTokens = 16;
const absl::Duration kGrace = absl::Seconds(12);

TEST(CoordinatorLifecycle, SigtermLetsStreamsFinishWithinGraceAndReleasesEveryBlock) {
  if (std::string why = MissingPrerequisite(); !why.empty()) GTEST_SKIP() << why;
  absl::StatusOr<std::unique_ptr<Cluster>> cluster = Cluster::Start(
      {.workers = 2, .flags = {absl::StrCat("--shutdown-grace=", absl::ToInt64Seconds(kGrace))}});
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  Cluster& c = **cluster;
  ASSERT_TRUE(Generate(c.generation(), GreedyRequest(kShortPrompt, 4)).status.ok()) << c.Logs();
  std::vector<int64_t> idle;
  for (int i = 0; i < c.num_workers(); ++i) {
    absl::StatusOr<xkv::v1::StatusResponse> st = c.WorkerStatus(i);
    ASSERT_TRUE(st.ok()) << st.status();
    idle.push_back(st->usage().blocks_used());
  }

  // Two streams that end within the grace, two that never would.
  const int tokens[] = {kShortTokens, kShortTokens, 4000, 4000};
  BackgroundStreams load(c.generation());
  for (int n : tokens) {
    xkv::v1::GenerateRequest r = GreedyRequest(kShortPrompt, n);
    r.set_ignore_eos(true);
    load.Start(r, absl::Seconds(120));
  }
  const bool all_streaming = load.WaitStreaming(4, absl::Seconds(60));
  const absl::Time term_at = absl::Now();
  c.coordinator().Signal(SIGTERM);

  EXPECT_TRUE(PollUntil([&] { return HealthStatus(c.address()) == 2; }, absl::Seconds(5)))
      << "grpc.health.v1 still says SERVING during the shutdown grace" << c.Logs();
  // A request sent now is refused at once (the signal is seen within 0.1 s).
  StreamResult refused;
  EXPECT_TRUE(PollUntil(
      [&] {
        refused = Generate(c.generation(), GreedyRequest(kShortPrompt, 2), absl::Seconds(10));
        return refused.status.error_code() == grpc::StatusCode::UNAVAILABLE;
      },
      absl::Seconds(5)))
      << refused.status.error_code() << ": " << refused.status.error_message();
  EXPECT_THAT(refused.status.error_message(), testing::HasSubstr("retry"));

  const std::vector<StreamResult> results = load.Join();
  ASSERT_TRUE(all_streaming) << c.Logs();
  for (int i = 0; i < 2; ++i) {
    SCOPED_TRACE(testing::Message() << "short stream " << i);
    EXPECT_TRUE(results[i].status.ok()) << results[i].status.error_message();
    EXPECT_EQ(results[i].token_ids.size(), static_cast<size_t>(kShortTokens));
  }
  for (int i = 2; i < 4; ++i) {
    SCOPED_TRACE(testing::Message() << "long stream " << i);
    EXPECT_EQ(results[i].status.error_code(), grpc::StatusCode::UNAVAILABLE);
    EXPECT_THAT(results[i].status.error_message(), testing::HasSubstr("shut down"));
    // Cut at the end of the grace, not before.
    EXPECT_GE(absl::Now() - term_at, kGrace - absl::Seconds(1));
  }
  absl::StatusOr<int> code = c.coordinator().Wait(absl::Seconds(30));
  ASSERT_TRUE(code.ok()) << code.status() << c.Logs();
  EXPECT_EQ(*code, 0) << c.Logs();
  EXPECT_LT(absl::Now() - term_at, kGrace + absl::Seconds(8)) << "the exit took long" << c.Logs();
  std::fprintf(stderr,
               "SIGTERM under 4 streams (grace %s): 2 finished, 2 cut with UNAVAILABLE, exit %d "
               "%s after the signal\n",
               absl::FormatDuration(kGrace).c_str(), *code,
               absl::FormatDuration(absl::Now() - term_at).c_str());
  for (int i = 0; i < c.num_workers(); ++i) {
    absl::StatusOr<xkv::v1::StatusResponse> st = c.WorkerStatus(i);
    ASSERT_TRUE(st.ok()) << st.status();
    EXPECT_EQ(st->usage().blocks_used(), idle[i]) << "worker " << i << " kept blocks";
  }
}

TEST(CoordinatorLifecycle, DrainRefusesNewRequestsAtOnceAndResumeAdmitsAgain) {
  if (std::string why = MissingPrerequisite(); !why.empty()) GTEST_SKIP() << why;
  absl::StatusOr<std::unique_ptr<Cluster>> cluster =
      Cluster::Start({.workers = 1, .embedded = true});
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  Cluster& c = **cluster;
  auto drain = [&](bool resume) {
    auto ctx = c.AdminContext();
    xkv::v1::DrainRequest req;
    req.set_resume(resume);
    xkv::v1::DrainResponse resp;
    return c.admin().Drain(ctx.get(), req, &resp);
  };
  ASSERT_TRUE(drain(false).ok());
  EXPECT_TRUE(PollUntil([&] { return HealthStatus(c.address()) == 2; }, absl::Seconds(2)))
      << "grpc.health.v1 still says SERVING while draining";
  StreamResult r = Generate(c.generation(), GreedyRequest(kShortPrompt, 4), absl::Seconds(30));
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::UNAVAILABLE) << r.status.error_message();
  EXPECT_THAT(r.status.error_message(), testing::HasSubstr("draining"));
  EXPECT_THAT(r.status.error_message(), testing::HasSubstr("retry"));
  EXPECT_LT(r.elapsed, absl::Seconds(2));
  ASSERT_TRUE(drain(true).ok());
  EXPECT_TRUE(PollUntil([&] { return HealthStatus(c.address()) == 1; }, absl::Seconds(2)));
  StreamResult ok = Generate(c.generation(), GreedyRequest(kShortPrompt, 4));
  EXPECT_TRUE(ok.status.ok()) << ok.status.error_message();
}

}  // namespace
}  // namespace xkv::e2e
