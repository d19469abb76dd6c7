// Bad requests (a request that can never fit the KV pool included) get INVALID_ARGUMENT with a
// message naming the problem, and the server keeps serving; admin calls without (or with a wrong)
// bearer token get UNAUTHENTICATED.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "tests/e2e/e2e_harness.h"
#include "tests/e2e/e2e_prompts.h"

namespace xkv::e2e {
namespace {

struct BadCase {
  std::string name;
  std::function<void(xkv::v1::GenerateRequest&)> edit;
  std::string message_mentions;  // a word the error message must contain
};

std::vector<BadCase> Cases() {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  return {
      {"empty prompt", [](auto& r) { r.set_prompt(""); }, "empty"},
      {"no input", [](auto& r) { r.clear_input(); }, "empty"},
      {"invalid UTF-8 prompt", [](auto& r) { r.set_prompt("caf\xC3\x28 \xFF\xFE"); }, "UTF-8"},
      {"invalid UTF-8 chat content",
       [](auto& r) {
         auto* m = r.mutable_chat()->add_messages();
         m->set_role("user");
         m->set_content("bad \xE2\x82 bytes");
       },
       "UTF-8"},
      {"unknown chat role",
       [](auto& r) {
         auto* m = r.mutable_chat()->add_messages();
         m->set_role("wizard");
         m->set_content("hello");
       },
       "role"},
      {"max_tokens 0", [](auto& r) { r.set_max_tokens(0); }, "max_tokens"},
      {"max_tokens negative", [](auto& r) { r.set_max_tokens(-5); }, "max_tokens"},
      {"max_tokens past the context", [](auto& r) { r.set_max_tokens(1 << 20); }, "max_tokens"},
      // More KV than the pool (--kv-blocks=32 below) can ever hold: no retry can help.
      {"more KV than the pool holds", [](auto& r) { r.set_max_tokens(1000); }, "never fit"},
      {"temperature negative", [](auto& r) { r.mutable_sampling()->set_temperature(-0.5f); },
       "temperature"},
      {"temperature NaN", [nan](auto& r) { r.mutable_sampling()->set_temperature(nan); },
       "temperature"},
      {"top_p 0", [](auto& r) { r.mutable_sampling()->set_top_p(0.0f); }, "top_p"},
      {"top_p above 1", [](auto& r) { r.mutable_sampling()->set_top_p(1.5f); }, "top_p"},
      {"top_p negative", [](auto& r) { r.mutable_sampling()->set_top_p(-0.1f); }, "top_p"},
      {"top_p NaN", [nan](auto& r) { r.mutable_sampling()->set_top_p(nan); }, "top_p"},
      {"unknown policy", [](auto& r) { r.mutable_kv_policy()->set_policy("magic"); }, "policy"},
      {"retention 0",
       [](auto& r) {
         r.mutable_kv_policy()->set_policy("xkv");
         r.mutable_kv_policy()->set_retention(0.0);
       },
       "retention"},
      {"retention above 1", [](auto& r) { r.mutable_kv_policy()->set_retention(1.5); },
       "retention"},
      {"retention NaN", [](auto& r) { r.mutable_kv_policy()->set_retention(std::nan("")); },
       "retention"},
  };
}

TEST(BadRequests, AreInvalidArgumentAndTheServerKeepsServing) {
  if (std::string why = MissingPrerequisite(); !why.empty()) GTEST_SKIP() << why;
  absl::StatusOr<std::unique_ptr<Cluster>> cluster = Cluster::Start(
      {.workers = 1, .embedded = true, .flags = {"--default-max-tokens=6", "--kv-blocks=32"}});
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  Cluster& c = **cluster;
  StreamResult before = Generate(c.generation(), GreedyRequest(kShortPrompt, 4));
  ASSERT_TRUE(before.status.ok()) << before.status.error_message() << c.Logs();

  for (const BadCase& bad : Cases()) {
    SCOPED_TRACE(bad.name);
    xkv::v1::GenerateRequest r = GreedyRequest(kShortPrompt, 4);
    bad.edit(r);
    StreamResult res = Generate(c.generation(), r, absl::Seconds(30));
    EXPECT_EQ(res.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << res.status.error_code() << ": " << res.status.error_message();
    EXPECT_NE(res.status.error_message().find(bad.message_mentions), std::string::npos)
        << "message: " << res.status.error_message();
    EXPECT_TRUE(res.token_ids.empty());
  }

  // Unset max_tokens and top_p take the service defaults (not errors).
  xkv::v1::GenerateRequest unset;
  unset.set_prompt(kShortPrompt);
  unset.mutable_sampling()->set_temperature(0);
  unset.set_ignore_eos(true);
  StreamResult defaults = Generate(c.generation(), unset);
  ASSERT_TRUE(defaults.status.ok()) << defaults.status.error_message();
  ASSERT_TRUE(defaults.usage.has_value());
  EXPECT_EQ(defaults.usage->completion_tokens(), 6) << "--default-max-tokens";

  StreamResult after = Generate(c.generation(), GreedyRequest(kShortPrompt, 4));
  ASSERT_TRUE(after.status.ok()) << after.status.error_message() << c.Logs();
  EXPECT_EQ(after.token_ids, before.token_ids);
}

TEST(BadRequests, AdminNeedsTheBearerTokenAndValidArguments) {
  if (std::string why = MissingPrerequisite(); !why.empty()) GTEST_SKIP() << why;
  absl::StatusOr<std::unique_ptr<Cluster>> cluster =
      Cluster::Start({.workers = 1, .embedded = true});
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  Cluster& c = **cluster;
  for (const std::string& header : {std::string(), std::string("Bearer wrong-token"),
                                    std::string("Basic ") + c.admin_token()}) {
    SCOPED_TRACE(header);
    grpc::ClientContext ctx;
    if (!header.empty()) ctx.AddMetadata("authorization", header);
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    xkv::v1::GetConfigResponse r;
    grpc::Status s = c.admin().GetConfig(&ctx, {}, &r);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED) << s.error_message();
  }
  {
    grpc::ClientContext ctx;
    xkv::v1::SetRetentionTargetRequest req;
    req.set_retention(0.5);
    xkv::v1::SetRetentionTargetResponse resp;
    grpc::Status s = c.admin().SetRetentionTarget(&ctx, req, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED) << s.error_message();
  }
  for (double bad : {0.0, -0.2, 1.5, std::nan("")}) {
    SCOPED_TRACE(bad);
    auto ctx = c.AdminContext();
    xkv::v1::SetRetentionTargetRequest req;
    req.set_retention(bad);
    xkv::v1::SetRetentionTargetResponse resp;
    grpc::Status s = c.admin().SetRetentionTarget(ctx.get(), req, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
    EXPECT_NE(s.error_message().find("retention"), std::string::npos) << s.error_message();
  }
  {
    auto ctx = c.AdminContext();
    xkv::v1::SetPolicyRequest req;
    req.mutable_policy()->set_policy("magic");
    xkv::v1::SetPolicyResponse resp;
    grpc::Status s = c.admin().SetPolicy(ctx.get(), req, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
  }
  // Per-(layer, KV head) budgets with a baseline, or with a floor out of range.
  for (const auto& [policy, floor] :
       {std::pair<const char*, double>{"snapkv", 0.2}, {"xkv", 1.5}}) {
    auto ctx = c.AdminContext();
    xkv::v1::SetPolicyRequest req;
    req.mutable_policy()->set_policy(policy);
    req.mutable_policy()->set_budget_fraction(0.2);
    req.mutable_policy()->set_floor(floor);
    req.mutable_policy()->set_per_head(true);
    xkv::v1::SetPolicyResponse resp;
    grpc::Status s = c.admin().SetPolicy(ctx.get(), req, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
    EXPECT_NE(s.error_message().find(floor > 1 ? "floor is 1.5" : "per_head budgets need"),
              std::string::npos)
        << s.error_message();
  }
  // The unchanged configuration: the bad calls changed nothing.
  auto ctx = c.AdminContext();
  xkv::v1::GetConfigResponse cfg;
  grpc::Status s = c.admin().GetConfig(ctx.get(), {}, &cfg);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_DOUBLE_EQ(cfg.config().default_policy().retention(), 0.9);
  EXPECT_FALSE(cfg.config().default_policy().per_head());
  StreamResult ok = Generate(c.generation(), GreedyRequest(kShortPrompt, 4));
  EXPECT_TRUE(ok.status.ok()) << ok.status.error_message();
  // A good per-head policy (CPU stages) is taken and serves the next request.
  auto set_ctx = c.AdminContext();
  xkv::v1::SetPolicyRequest per_head;
  per_head.mutable_policy()->set_policy("xkv");
  per_head.mutable_policy()->set_per_head(true);
  xkv::v1::SetPolicyResponse resp;
  grpc::Status set = c.admin().SetPolicy(set_ctx.get(), per_head, &resp);
  ASSERT_TRUE(set.ok()) << set.error_message();
  auto get_ctx = c.AdminContext();
  ASSERT_TRUE(c.admin().GetConfig(get_ctx.get(), {}, &cfg).ok());
  EXPECT_TRUE(cfg.config().default_policy().per_head());
  StreamResult after = Generate(c.generation(), GreedyRequest(kShortPrompt, 4));
  EXPECT_TRUE(after.status.ok()) << after.status.error_message() << c.Logs();
}

}  // namespace
}  // namespace xkv::e2e
