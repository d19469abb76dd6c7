// Admin through real processes: re-planning an uneven profile, changing the retention target,
// cancelling a request (every stage's block pool back to zero), and the planner's predicted KV
// bytes per stage against what the stages hold.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <optional>
#include <string>

#include "tests/e2e/e2e_harness.h"
#include "tests/e2e/e2e_prompts.h"

namespace xkv::e2e {
namespace {

int64_t MaxCost(const google::protobuf::RepeatedPtrField<xkv::v1::StageRange>& r) {
  double m = 0;
  for (const auto& s : r) m = std::max(m, s.cost_bytes());
  return static_cast<int64_t>(m);
}

int64_t Spread(const google::protobuf::RepeatedPtrField<xkv::v1::StageRange>& r) {
  double lo = 1e300, hi = 0;
  for (const auto& s : r) lo = std::min(lo, s.cost_bytes()), hi = std::max(hi, s.cost_bytes());
  return static_cast<int64_t>(hi - lo);
}

// XKV's profile of the real model keeps far more tokens in some layers than in others; the
// planner must then move layers so the stages' bytes (weights + expected KV) even out.
TEST(Admin, ReplanOfAnUnevenProfileBalancesStageBytes) {
  if (std::string why = MissingPrerequisite(); !why.empty()) GTEST_SKIP() << why;
  absl::StatusOr<std::unique_ptr<Cluster>> cluster = Cluster::Start(
      {.workers = 2, .flags = {"--policy=xkv", "--retention=0.8", "--concurrency=64"}});
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  Cluster& c = **cluster;

  // Before any profile: a full cache everywhere, and the tied embedding on both end stages, so
  // the plan is the even split.
  absl::StatusOr<xkv::v1::GetClusterStatusResponse> before = c.ClusterStatus();
  ASSERT_TRUE(before.ok()) << before.status();
  ASSERT_EQ(before->stages_size(), 2);
  ASSERT_EQ(before->stages(0).layer_end(), 15) << "expected the even split before profiling";
  ASSERT_EQ(before->stages(1).layer_begin(), 15);

  StreamResult warm = Generate(c.generation(), GreedyRequest(kLongPrompt, 4));
  ASSERT_TRUE(warm.status.ok()) << warm.status.error_message() << c.Logs();
  ASSERT_TRUE(warm.usage.has_value() && warm.usage->profiled());
  int64_t lo = INT64_MAX, hi = 0;
  for (const auto& l : warm.usage->layers()) {
    lo = std::min(lo, l.kept_tokens());
    hi = std::max(hi, l.kept_tokens());
  }
  ASSERT_GE(hi, 2 * lo) << "the profile is not uneven enough to test the planner";

  auto ctx = c.AdminContext(absl::Seconds(120));
  xkv::v1::ReplanRequest req;
  xkv::v1::ReplanResponse plan;
  grpc::Status s = c.admin().Replan(ctx.get(), req, &plan);
  ASSERT_TRUE(s.ok()) << s.error_message() << c.Logs();
  ASSERT_TRUE(plan.applied()) << plan.message() << "\n" << plan.DebugString();
  ASSERT_EQ(plan.previous_size(), 2);
  ASSERT_EQ(plan.planned_size(), 2);
  // `previous` is the even split re-costed under the live profile.
  EXPECT_EQ(plan.previous(0).layer_end(), 15);
  const int first = plan.planned(0).layer_end() - plan.planned(0).layer_begin();
  const int second = plan.planned(1).layer_end() - plan.planned(1).layer_begin();
  EXPECT_NE(first, second) << "the new split should be uneven";
  EXPECT_LT(MaxCost(plan.planned()), MaxCost(plan.previous()));
  EXPECT_LT(Spread(plan.planned()), Spread(plan.previous()))
      << "per-stage bytes must be closer to equal than the even split's";

  absl::StatusOr<xkv::v1::GetClusterStatusResponse> after = c.ClusterStatus();
  ASSERT_TRUE(after.ok()) << after.status();
  ASSERT_EQ(after->stages_size(), 2);
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(after->stages(i).layer_begin(), plan.planned(i).layer_begin());
    EXPECT_EQ(after->stages(i).layer_end(), plan.planned(i).layer_end());
    EXPECT_EQ(after->stages(i).health(), xkv::v1::HEALTH_STATE_SERVING);
  }
  // The workers reloaded their new layers and still give the same answer.
  StreamResult again = Generate(c.generation(), GreedyRequest(kLongPrompt, 4));
  ASSERT_TRUE(again.status.ok()) << again.status.error_message() << c.Logs();
  EXPECT_EQ(again.token_ids, warm.token_ids);
}

TEST(Admin, RetentionChangeChangesTheNextRequestsAllocation) {
  if (std::string why = MissingPrerequisite(); !why.empty()) GTEST_SKIP() << why;
  absl::StatusOr<std::unique_ptr<Cluster>> cluster = Cluster::Start(
      {.workers = 2, .embedded = true, .flags = {"--policy=xkv", "--retention=0.95"}});
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  Cluster& c = **cluster;

  StreamResult high = Generate(c.generation(), GreedyRequest(kLongPrompt, 4));
  ASSERT_TRUE(high.status.ok()) << high.status.error_message() << c.Logs();
  ASSERT_TRUE(high.usage.has_value() && high.usage->has_retention());

  auto ctx = c.AdminContext();
  xkv::v1::SetRetentionTargetRequest req;
  req.set_retention(0.5);
  xkv::v1::SetRetentionTargetResponse resp;
  grpc::Status s = c.admin().SetRetentionTarget(ctx.get(), req, &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_DOUBLE_EQ(resp.previous(), 0.95);
  EXPECT_DOUBLE_EQ(resp.config().default_policy().retention(), 0.5);

  StreamResult low = Generate(c.generation(), GreedyRequest(kLongPrompt, 4));
  ASSERT_TRUE(low.status.ok()) << low.status.error_message() << c.Logs();
  ASSERT_TRUE(low.usage.has_value() && low.usage->has_retention());
  EXPECT_GE(high.usage->retention(), 0.95 - 1e-9);
  EXPECT_GE(low.usage->retention(), 0.5 - 1e-9);
  EXPECT_LT(low.usage->retention(), high.usage->retention());
  EXPECT_LT(low.usage->kv_bytes_held(), high.usage->kv_bytes_held());
  ASSERT_EQ(low.usage->layers_size(), high.usage->layers_size());
  int smaller = 0;
  for (int l = 0; l < low.usage->layers_size(); ++l) {
    EXPECT_LE(low.usage->layers(l).kept_tokens(), high.usage->layers(l).kept_tokens());
    smaller += low.usage->layers(l).kept_tokens() < high.usage->layers(l).kept_tokens();
  }
  EXPECT_GT(smaller, 0) << "no layer's allocation changed";
}

TEST(Admin, CancellingARequestFreesEveryStagesBlocks) {
  if (std::string why = MissingPrerequisite(); !why.empty()) GTEST_SKIP() << why;
  absl::StatusOr<std::unique_ptr<Cluster>> cluster = Cluster::Start({.workers = 2});
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  Cluster& c = **cluster;

  xkv::v1::GenerateRequest r = GreedyRequest(kLongPrompt, 1000);
  r.set_ignore_eos(true);
  std::atomic<int> seen{0};
  std::vector<int64_t> used_while_running;
  StreamResult res = Generate(c.generation(), r, absl::Seconds(120),
                              [&](const xkv::v1::GenerateResponse&, grpc::ClientContext& ctx) {
                                if (++seen != 3) return;
                                absl::StatusOr<xkv::v1::GetClusterStatusResponse> st =
                                    c.ClusterStatus();
                                if (st.ok()) {
                                  for (const auto& stage : st->stages())
                                    used_while_running.push_back(stage.blocks_used());
                                }
                                ctx.TryCancel();
                              });
  EXPECT_EQ(res.status.error_code(), grpc::StatusCode::CANCELLED) << res.status.error_message();
  ASSERT_EQ(used_while_running.size(), 2u) << "cluster status failed while the request ran";
  for (int64_t used : used_while_running) EXPECT_GT(used, 0);

  // The server learns of the cancellation asynchronously: poll (bounded) until every pool is
  // empty and nothing runs.
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  xkv::v1::GetClusterStatusResponse last;
  bool empty = false;
  while (!empty && absl::Now() < deadline) {
    absl::StatusOr<xkv::v1::GetClusterStatusResponse> st = c.ClusterStatus();
    ASSERT_TRUE(st.ok()) << st.status();
    last = *st;
    empty = last.running_requests() == 0 && last.queued_requests() == 0;
    for (const auto& stage : last.stages()) empty = empty && stage.blocks_used() == 0;
    if (!empty) absl::SleepFor(absl::Milliseconds(25));  // poll interval
  }
  EXPECT_TRUE(empty) << last.DebugString();
  for (const auto& stage : last.stages()) EXPECT_EQ(stage.kv_bytes_used(), 0) << stage.index();
}

// The stage planner's predicted KV bytes per stage (GetClusterStatus.kv_bytes_predicted, also on
// /metrics) match what the stages hold while a request decodes: a full cache, and an xkv cache
// whose profile is this request's own (the first profile sample), to within 10% per stage.
TEST(Admin, PredictedStageKvBytesMatchWhatTheStagesHold) {
  if (std::string why = MissingPrerequisite(); !why.empty()) GTEST_SKIP() << why;
  absl::StatusOr<std::unique_ptr<Cluster>> cluster = Cluster::Start({.workers = 2});
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  Cluster& c = **cluster;

  absl::StatusOr<xkv::v1::GetClusterStatusResponse> idle = c.ClusterStatus();
  ASSERT_TRUE(idle.ok()) << idle.status();
  for (const auto& stage : idle->stages()) EXPECT_EQ(stage.kv_bytes_predicted(), 0);

  for (const char* policy : {"full", "xkv"}) {
    SCOPED_TRACE(policy);
    const bool full = std::string(policy) == "full";
    xkv::v1::GenerateRequest r =
        GreedyRequest(kLongPrompt, 24, policy, full ? std::nullopt : std::optional<double>(0.5));
    r.set_ignore_eos(true);
    int seen = 0;
    std::optional<xkv::v1::GetClusterStatusResponse> during;
    StreamResult res = Generate(c.generation(), r, absl::Seconds(120),
                                [&](const xkv::v1::GenerateResponse&, grpc::ClientContext&) {
                                  if (++seen != 3) return;
                                  absl::StatusOr<xkv::v1::GetClusterStatusResponse> st =
                                      c.ClusterStatus();
                                  if (st.ok()) during = *st;
                                });
    ASSERT_TRUE(res.status.ok()) << res.status.error_message() << c.Logs();
    ASSERT_TRUE(during.has_value()) << "cluster status failed while the request ran";
    ASSERT_EQ(during->stages_size(), 2);
    for (const auto& stage : during->stages()) {
      ASSERT_GT(stage.kv_bytes_used(), 0) << stage.index();
      EXPECT_NEAR(static_cast<double>(stage.kv_bytes_predicted()) / stage.kv_bytes_used(), 1.0,
                  0.10)
          << "stage " << stage.index() << ": predicted " << stage.kv_bytes_predicted() << ", held "
          << stage.kv_bytes_used();
    }
  }
}

}  // namespace
}  // namespace xkv::e2e
