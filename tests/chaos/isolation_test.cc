// One request can never hurt another (issue 18, part 1): four healthy greedy streams run while
// poisoned requests arrive — the KV specs that used to end every sequence of their step
// (budget_bytes / budget_tokens = 2^63-1, xkv per_request and one_pass) and a seeded fuzz of KV
// specs (out-of-range, non-finite, unknown names). Every healthy stream completes with exactly the
// tokens it gets alone; each poisoned request ends with its own status (or succeeds); afterwards
// the service is SERVING and no KV block is held on any stage.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tests/e2e/e2e_harness.h"
#include "tests/e2e/e2e_prompts.h"

namespace xkv::e2e {
namespace {

constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
constexpr int64_t kMin = std::numeric_limits<int64_t>::min();

std::vector<xkv::v1::GenerateRequest> HealthyRequests() {
  std::vector<xkv::v1::GenerateRequest> out;
  const char* tails[] = {"", " Who founded Lutetia?", " Name a museum.", " Why the Seine?"};
  const char* policies[] = {"", "full", "snapkv", "xkv"};
  for (int i = 0; i < 4; ++i) {
    xkv::v1::GenerateRequest r = GreedyRequest(absl::StrCat(kLongPrompt, tails[i]), 40, policies[i],
                                               i == 2 ? std::optional<double>(0.5) : std::nullopt);
    r.set_ignore_eos(true);
    out.push_back(r);
  }
  return out;
}

xkv::v1::GenerateRequest Poisoned(const std::string& policy, const std::string& profile) {
  xkv::v1::GenerateRequest r = GreedyRequest(kLongPrompt, 8, policy);
  r.mutable_kv_policy()->set_profile_mode(profile);
  return r;
}

// The poison requests, then `n` seeded random KV specs.
std::vector<xkv::v1::GenerateRequest> PoisonedRequests(int n) {
  std::vector<xkv::v1::GenerateRequest> out;
  for (const char* profile : {"per_request", "one_pass"}) {
    out.push_back(Poisoned("xkv", profile));
    out.back().mutable_kv_policy()->set_budget_bytes(kMax);
    out.push_back(Poisoned("xkv", profile));
    out.back().mutable_kv_policy()->set_budget_tokens(kMax);
  }
  const std::vector<std::string> policies = {"xkv",  "snapkv", "pyramidkv", "streaming",
                                             "full", "",       "bogus"};
  const std::vector<std::string> profiles = {"per_request", "one_pass", "sampled:0.5",
                                             "sampled:-1",  "",         "x"};
  const std::vector<int64_t> ints = {kMin, -1, 0, 1, int64_t{1} << 62, kMax, 7};
  const std::vector<double> reals = {-1,
                                     0,
                                     1e-300,
                                     0.5,
                                     1,
                                     2,
                                     std::numeric_limits<double>::quiet_NaN(),
                                     std::numeric_limits<double>::infinity()};
  std::mt19937 rng(18);
  auto pick = [&rng](const auto& v) { return v[rng() % v.size()]; };
  for (int i = 0; i < n; ++i) {
    xkv::v1::GenerateRequest r = Poisoned(pick(policies), pick(profiles));
    xkv::v1::KvPolicySpec* k = r.mutable_kv_policy();
    switch (rng() % 4) {
      case 0:
        k->set_retention(pick(reals));
        break;
      case 1:
        k->set_budget_tokens(pick(ints));
        break;
      case 2:
        k->set_budget_bytes(pick(ints));
        break;
      default:
        k->set_budget_fraction(pick(reals));
        break;
    }
    out.push_back(r);
  }
  return out;
}

TEST(Isolation, PoisonedKvSpecsFailAloneAmongHealthyStreams) {
  if (std::string why = MissingPrerequisite(); !why.empty()) GTEST_SKIP() << why;
  absl::StatusOr<std::unique_ptr<Cluster>> cluster = Cluster::Start({.workers = 2});
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  Cluster& c = **cluster;
  const std::vector<xkv::v1::GenerateRequest> healthy = HealthyRequests();
  std::vector<StreamResult> alone;
  for (const xkv::v1::GenerateRequest& r : healthy) {
    alone.push_back(Generate(c.generation(), r));
    ASSERT_TRUE(alone.back().status.ok()) << alone.back().status.error_message() << c.Logs();
  }

  absl::StatusOr<std::vector<int64_t>> idle = IdleBlocks(c);
  ASSERT_TRUE(idle.ok()) << idle.status();

  const std::vector<xkv::v1::GenerateRequest> poisoned = PoisonedRequests(12);
  BackgroundStreams healthy_load(c.generation()), poison_load(c.generation());
  for (const xkv::v1::GenerateRequest& r : healthy) healthy_load.Start(r, absl::Seconds(150));
  // The poison arrives while every healthy stream is producing tokens.
  const bool all_streaming =
      healthy_load.WaitStreaming(static_cast<int>(healthy.size()), absl::Seconds(90));
  for (const xkv::v1::GenerateRequest& r : poisoned) poison_load.Start(r, absl::Seconds(150));
  const std::vector<StreamResult> together = healthy_load.Join();
  const std::vector<StreamResult> poison = poison_load.Join();
  ASSERT_TRUE(all_streaming) << c.Logs();

  for (size_t i = 0; i < healthy.size(); ++i) {
    SCOPED_TRACE(testing::Message() << "healthy stream " << i);
    ASSERT_TRUE(together[i].status.ok())
        << together[i].status.error_code() << ": " << together[i].status.error_message();
    EXPECT_EQ(together[i].token_ids, alone[i].token_ids);
  }
  int failed = 0;
  for (size_t i = 0; i < poisoned.size(); ++i) {
    SCOPED_TRACE(testing::Message()
                 << "poisoned request " << i << ": " << poisoned[i].kv_policy().ShortDebugString());
    const grpc::StatusCode code = poison[i].status.error_code();
    // Its own verdict: a clean refusal of its spec, or an answer — never a fault of the service.
    EXPECT_THAT(
        code, testing::AnyOf(grpc::StatusCode::OK, grpc::StatusCode::INVALID_ARGUMENT,
                             grpc::StatusCode::FAILED_PRECONDITION, grpc::StatusCode::OUT_OF_RANGE))
        << poison[i].status.error_message();
    failed += code != grpc::StatusCode::OK;
  }
  EXPECT_GE(failed, 4);  // at least the four
  std::fprintf(stderr, "isolation: %zu healthy streams, %zu poisoned requests (%d refused)\n",
               healthy.size(), poisoned.size(), failed);

  EXPECT_EQ(HealthStatus(c.address()), 1);
  EXPECT_TRUE(BackToIdleBlocks(c, *idle)) << c.Logs();
}

}  // namespace
}  // namespace xkv::e2e
