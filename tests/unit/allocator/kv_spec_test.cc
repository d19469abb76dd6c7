#include "allocator/kv_spec.h"

#include <cstdint>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace xkv {
namespace {

using ::testing::HasSubstr;

constexpr int64_t kMax = std::numeric_limits<int64_t>::max();

void ExpectInvalid(const absl::Status& s, const std::string& a, const std::string& b = "") {
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr(a));
  EXPECT_THAT(std::string(s.message()), HasSubstr(b));
}

TEST(KvSpecTest, EachRuleIsOneClearError) {
  ExpectInvalid(ValidateWindow(0, "--window"), "--window is 0", "[8, 64]");
  ExpectInvalid(ValidateWindow(7), "window is 7", "[8, 64]");
  ExpectInvalid(ValidateWindow(65), "window is 65", "[8, 64]");
  EXPECT_TRUE(ValidateWindow(8).ok() && ValidateWindow(64).ok());
  ExpectInvalid(ValidateFloor(1.5), "floor is 1.5", "[0, 1]");
  ExpectInvalid(ValidateFloor(-0.1), "floor is -0.1", "[0, 1]");
  ExpectInvalid(ValidateFloor(std::numeric_limits<double>::quiet_NaN()), "floor is nan");
  EXPECT_TRUE(ValidateFloor(0.0).ok() && ValidateFloor(1.0).ok());
  ExpectInvalid(ValidateCap(0.5), "cap is 0.5", "[1, 64]");
  ExpectInvalid(ValidateSinkTokens(-1), "sink_tokens is -1", "[0, 64]");
  ExpectInvalid(ValidateSinkTokens(65, "method sinks"), "method sinks is 65", "[0, 64]");
  EXPECT_TRUE(ValidateSinkTokens(0).ok() && ValidateSinkTokens(64).ok());
  ExpectInvalid(ValidateRetention(0), "retention is 0", "(0, 1]");
  ExpectInvalid(ParseAllocator("magic").status(), "unknown allocator 'magic'", "global, paper");
  EXPECT_EQ(*ParseAllocator("PAPER"), AllocatorKind::kPaper);
  EXPECT_EQ(AllocatorName(AllocatorKind::kGlobal), "global");
}

TEST(KvSpecTest, ReconstructRunsEverywhereAndNeedsAScoringPolicy) {
  const ProfileMode reconstruct = ParseProfileMode("reconstruct").value();
  EXPECT_EQ(reconstruct.kind, ProfileModeKind::kReconstruct);
  EXPECT_EQ(ProfileModeName(reconstruct), "reconstruct");
  // A request or the admin RPC may ask for it; an unknown mode is refused, naming the allowed.
  KvPolicyOverride o;
  o.profile_mode = "reconstruct";
  EXPECT_TRUE(ValidateKvOverride(o).ok());
  o.policy = "streaming";
  o.budget_fraction = 0.2;
  ExpectInvalid(ValidateKvOverride(o), "profile mode reconstruct", "'streaming'");
  o = KvPolicyOverride{};
  o.profile_mode = "rebuild";
  ExpectInvalid(ValidateKvOverride(o), "unknown profile mode 'rebuild'", "reconstruct");
  // It ranks by score: streaming and full cannot use it.
  KvSettings s;
  s.profile = reconstruct;
  EXPECT_TRUE(ValidateSettings(s).ok());
  s.policy = PolicyKind::kStreaming;
  s.target = KvTarget::Fraction(0.2);
  ExpectInvalid(ValidateSettings(s), "profile mode reconstruct", "'streaming'");
  s.policy = PolicyKind::kSnapKv;
  EXPECT_TRUE(ValidateSettings(s).ok());
}

TEST(KvSpecTest, OverrideIsValidatedLikeARequest) {
  KvSettings base;  // xkv, retention 0.9
  KvPolicyOverride o;
  o.allocator = "paper";
  o.floor = 0.25;
  o.cap = 64;
  o.budget_tokens = 100;
  absl::StatusOr<KvSettings> s = ApplyOverride(base, o);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->allocator.kind, AllocatorKind::kPaper);
  EXPECT_DOUBLE_EQ(s->allocator.floor, 0.25);
  EXPECT_DOUBLE_EQ(s->allocator.cap, 64);
  EXPECT_EQ(s->target.kind, KvTarget::Kind::kTokens);
  EXPECT_EQ(s->target.amount, 100);
  // Bad input changes nothing and names the value.
  o.floor = 2.0;
  ExpectInvalid(ApplyOverride(base, o).status(), "floor is 2", "[0, 1]");
  ExpectInvalid(ValidateKvOverride(o), "floor is 2");
  o.floor = 0.25;
  o.cap = 0.5;
  ExpectInvalid(ApplyOverride(base, o).status(), "cap is 0.5", "[1, 64]");
  ExpectInvalid(ValidateKvOverride(o), "cap is 0.5");
  KvPolicyOverride two;
  two.retention = 0.5;
  two.budget_bytes = 10;
  ExpectInvalid(ValidateKvOverride(two), "at most one KV budget target");
  KvPolicyOverride snap;
  snap.policy = "snapkv";
  snap.retention = 0.5;
  ExpectInvalid(ValidateKvOverride(snap), "needs policy xkv", "snapkv");
  // A baseline without a target takes the base's retention as a kept fraction.
  snap.retention.reset();
  s = ApplyOverride(base, snap);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->target.kind, KvTarget::Kind::kFraction);
  EXPECT_DOUBLE_EQ(s->target.value, 0.9);
  KvPolicyOverride neg;
  neg.budget_bytes = -1;
  ExpectInvalid(ValidateKvOverride(neg), "budget_bytes is -1", ">= 0");
  KvPolicyOverride alloc;
  alloc.allocator = "uniformish";
  ExpectInvalid(ValidateKvOverride(alloc), "unknown allocator 'uniformish'");
}

TEST(KvSpecTest, HugeTargetsSaturateInsteadOfOverflowing) {
  EXPECT_EQ(SaturatingMul(kMax, 2), kMax);
  EXPECT_EQ(SaturatingMul(-kMax, 2), std::numeric_limits<int64_t>::min());
  EXPECT_EQ(SaturatingAdd(kMax, 1), kMax);
  EXPECT_EQ(SaturatingMul(3, 4), 12);
  // 2^63 - 1 bytes or tokens is a full cache, not an overflow.
  BudgetTarget t = ResolveTarget(KvTarget::Bytes(kMax), 100, 30, 2304);
  EXPECT_EQ(t.kind, BudgetTarget::Kind::kBytes);
  EXPECT_EQ(t.total_bytes, 100 * 30 * 2304);
  t = ResolveTarget(KvTarget::Tokens(kMax), 100, 30, 2304);
  EXPECT_EQ(t.total_tokens, 3000);
  t = ResolveTarget(KvTarget::Bytes(kMax), kMax / 2, 30, 2304);
  EXPECT_EQ(t.total_bytes, kMax);
  t = ResolveTarget(KvTarget::Fraction(0.5), 100, 30, 8);
  EXPECT_EQ(t.total_tokens, 1500);
  // And the planner takes them.
  KvSettings spec;
  spec.policy = PolicyKind::kSnapKv;
  spec.target = KvTarget::Bytes(kMax);
  absl::StatusOr<PolicyBudgets> b = PlanBudgets({}, spec, {30, 100, 2304});
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->budgets, std::vector<int64_t>(30, 100));
}

TEST(KvSpecTest, PlanBudgetsForEveryPolicy) {
  std::vector<LayerProfile> profiles = {LayerProfileFromGains({0.5, 0.3, 0.1, 0.1}).value(),
                                        LayerProfileFromGains({0.3, 0.3, 0.2, 0.2}).value()};
  profiles[1].total_mass = 10.0;
  KvSettings spec;
  spec.target = KvTarget::Tokens(4);
  spec.allocator.floor = 0.0;
  absl::StatusOr<PolicyBudgets> x = PlanBudgets(profiles, spec, {2, 4, 8});
  ASSERT_TRUE(x.ok()) << x.status();
  EXPECT_EQ(x->budgets, (std::vector<int64_t>{0, 4}));
  EXPECT_EQ(x->rule, SelectionRule::kSinksAndTopScore);
  spec.allocator.floor = 0.5;  // at least 1 of the uniform 2 per layer
  x = PlanBudgets(profiles, spec, {2, 4, 8});
  ASSERT_TRUE(x.ok());
  EXPECT_EQ(x->budgets, (std::vector<int64_t>{1, 3}));
  EXPECT_EQ(x->total_bytes, 32);
  spec.policy = PolicyKind::kStreaming;
  x = PlanBudgets({}, spec, {2, 4, 8});
  ASSERT_TRUE(x.ok());
  EXPECT_EQ(x->budgets, (std::vector<int64_t>{2, 2}));
  spec.policy = PolicyKind::kXkv;
  EXPECT_EQ(PlanBudgets({}, spec, {2, 4, 8}).status().code(),
            absl::StatusCode::kFailedPrecondition);
  spec.allocator.floor = 3;
  ExpectInvalid(PlanBudgets(profiles, spec, {2, 4, 8}).status(), "floor is 3");
  EXPECT_TRUE(NeedsScores(PolicyKind::kSnapKv) && NeedsScores(PolicyKind::kXkv));
  EXPECT_FALSE(NeedsScores(PolicyKind::kStreaming) || NeedsScores(PolicyKind::kFull));
  EXPECT_TRUE(NeedsProfile(PolicyKind::kXkv) && !NeedsProfile(PolicyKind::kPyramidKv));
}

TEST(KvSpecTest, SampledBudgetsFollowTheTarget) {
  auto store = ProfileStore::Create({0.5, 1, 0});
  ASSERT_TRUE(store.ok());
  KvSettings spec;
  EXPECT_EQ(SampledBudgets(**store, spec, {2, 10, 4}).status().code(),
            absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE((*store)->AddSample({2, 6}, 10).ok());
  absl::StatusOr<PolicyBudgets> b = SampledBudgets(**store, spec, {2, 10, 4});  // retention
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->budgets, (std::vector<int64_t>{2, 6}));
  spec.target = KvTarget::Bytes(16);  // 4 tokens
  b = SampledBudgets(**store, spec, {2, 10, 4});
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->total_tokens, 4);
  EXPECT_EQ(b->total_bytes, 16);
}

}  // namespace
}  // namespace xkv
