// Allocator `heads` (AllocatorParams::head_weights, `xkv calibrate --heads 1`): per-(layer, KV
// head) budgets fixed by the calibrated weights, floor * share each and the rest in proportion to
// the weights, at most the prefix per head.
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "allocator/importance_profile.h"
#include "allocator/kv_policy.h"
#include "allocator/kv_spec.h"
#include "gtest/gtest.h"
#include "tests/unit/allocator/random_profiles.h"

namespace xkv {
namespace {

using testing_allocator::Profiles;

// Shares in proportion to the weights themselves (head_power 1), for round arithmetic below.
PolicyOptions Heads(std::vector<double> weights, double floor) {
  PolicyOptions o{PolicyKind::kXkv};
  o.allocator.kind = AllocatorKind::kHeads;
  o.allocator.floor = floor;
  o.allocator.head_power = 1.0;
  o.allocator.head_weights = std::move(weights);
  return o;
}

int64_t Sum(const std::vector<std::vector<int64_t>>& b) {
  int64_t s = 0;
  for (const auto& row : b) s = std::accumulate(row.begin(), row.end(), s);
  return s;
}

TEST(HeadWeightsTest, BudgetsFollowTheWeightsNotTheScores) {
  const int L = 3, H = 2;
  const int64_t P = 1000;
  // Head (1, 0) weighs 9, the others 0.2: with floor 0 it gets 9 / 10 of the 1200 head tokens.
  std::vector<double> w(L * H, 0.2);
  w[2] = 9.0;
  for (uint32_t seed : {1u, 2u}) {  // other scores, the same budgets
    const std::vector<LayerProfile> p = Profiles(L, H, P, seed);
    auto b = MakeKvPolicy(Heads(w, 0.0))->Budgets({L, P, p, {}}, BudgetTarget::Tokens(600));
    ASSERT_TRUE(b.ok()) << b.status();
    ASSERT_EQ(b->head_budgets.size(), 3u);
    EXPECT_EQ(Sum(b->head_budgets), 1200);
    EXPECT_EQ(b->head_budgets[1][0], 1000);  // 1080 capped at P; the excess goes to the others
    EXPECT_EQ(b->head_budgets[0][0], 40);
    EXPECT_EQ(b->budgets[1], 1000);  // a layer's largest head
    EXPECT_EQ(b->total_tokens, 600);
    EXPECT_EQ(b->rule, SelectionRule::kSinksAndTopScore);
  }
}

TEST(HeadWeightsTest, FloorIsAShareOfTheUniformBudgetAndOneIsUniform) {
  const int L = 2, H = 2;
  const int64_t P = 500;
  const std::vector<LayerProfile> p = Profiles(L, H, P, 7);
  const std::vector<double> w = {4.0, 0.01, 0.01, 0.01};
  auto uniform = MakeKvPolicy(Heads(w, 1.0))->Budgets({L, P, p, {}}, BudgetTarget::Tokens(200));
  ASSERT_TRUE(uniform.ok()) << uniform.status();
  for (const auto& row : uniform->head_budgets) {
    for (int64_t b : row) EXPECT_EQ(b, 100);
  }
  auto half = MakeKvPolicy(Heads(w, 0.5))->Budgets({L, P, p, {}}, BudgetTarget::Tokens(200));
  ASSERT_TRUE(half.ok()) << half.status();
  EXPECT_EQ(Sum(half->head_budgets), 400);
  for (const auto& row : half->head_budgets) {
    for (int64_t b : row) EXPECT_GE(b, 50);
  }
  EXPECT_GT(half->head_budgets[0][0], 230);
}

// head_power flattens (below 1) or sharpens the shares: w^0.5 of {16, 4, 1, 1} is {4, 2, 1, 1},
// w^1.5 (the default, the dev split's pick) {64, 8, 1, 1}.
TEST(HeadWeightsTest, HeadPowerShapesTheShares) {
  EXPECT_EQ(AllocatorParams{}.head_power, 1.5);
  const int L = 2, H = 2;
  const int64_t P = 1000;
  const std::vector<LayerProfile> p = Profiles(L, H, P, 11);
  PolicyOptions o = Heads({16.0, 4.0, 1.0, 1.0}, 0.0);
  auto linear = MakeKvPolicy(o)->Budgets({L, P, p, {}}, BudgetTarget::Tokens(400));
  ASSERT_TRUE(linear.ok()) << linear.status();
  EXPECT_GT(linear->head_budgets[0][0], 500);  // 800 x 16 / 22
  o.allocator.head_power = 0.5;
  auto flat = MakeKvPolicy(o)->Budgets({L, P, p, {}}, BudgetTarget::Tokens(400));
  ASSERT_TRUE(flat.ok()) << flat.status();
  EXPECT_EQ(flat->head_budgets, (std::vector<std::vector<int64_t>>{{400, 200}, {100, 100}}));
  o.allocator.head_power = 1.5;
  auto sharp = MakeKvPolicy(o)->Budgets({L, P, p, {}}, BudgetTarget::Tokens(400));
  ASSERT_TRUE(sharp.ok()) << sharp.status();
  EXPECT_EQ(sharp->head_budgets[0][0], 692);  // 800 x 64 / 74 = 691.9, rounded
  EXPECT_EQ(Sum(sharp->head_budgets), 800);
  KvSettings s;
  s.policy = PolicyKind::kXkv;
  s.target = KvTarget::Fraction(0.2);
  s.allocator.head_power = 0.1;
  EXPECT_NE(ValidateSettings(s).message().find("head power is 0.1"), std::string::npos)
      << ValidateSettings(s);
}

TEST(HeadWeightsTest, ByteTargetsCountHeadTokensAtTheirBytes) {
  const int L = 2, H = 4;
  const int64_t P = 300;
  const std::vector<LayerProfile> p = Profiles(L, H, P, 3);
  const std::vector<int64_t> bytes(L, 512);  // 128 bytes a head token
  auto b = MakeKvPolicy(Heads(std::vector<double>(L * H, 1.0), 0.2))
               ->Budgets({L, P, p, bytes}, BudgetTarget::Bytes(128 * 800));
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(Sum(b->head_budgets), 800);
  EXPECT_EQ(b->total_bytes, 128 * 800);
}

TEST(HeadWeightsTest, BadInputIsAClearError) {
  const int L = 2, H = 2;
  const int64_t P = 100;
  const std::vector<LayerProfile> p = Profiles(L, H, P, 5);
  auto few =
      MakeKvPolicy(Heads({1.0, 1.0, 1.0}, 0.2))->Budgets({L, P, p, {}}, BudgetTarget::Tokens(50));
  ASSERT_FALSE(few.ok());
  EXPECT_NE(few.status().message().find("3 head weights do not split over 2 layers"),
            std::string::npos)
      << few.status();
  auto retention = MakeKvPolicy(Heads({1.0, 1.0, 1.0, 1.0}, 0.2))
                       ->Budgets({L, P, p, {}}, BudgetTarget::Retention(0.9));
  ASSERT_FALSE(retention.ok());  // the spec's one rule text, kept by the policy as a backstop
  EXPECT_EQ(retention.status().message(), HeadsRetentionError().message());
  auto uneven = MakeKvPolicy(Heads({1.0, 1.0, 1.0, 1.0}, 0.2))
                    ->Budgets({L, P, p, {64, 128}}, BudgetTarget::Bytes(6400));
  ASSERT_FALSE(uneven.ok());
  EXPECT_NE(uneven.status().message().find("equal for every layer"), std::string::npos);

  // The spec's checks: a finite positive weight, policy xkv, no retention target.
  KvSettings s;
  s.policy = PolicyKind::kXkv;
  s.allocator.kind = AllocatorKind::kHeads;
  s.target = KvTarget::Fraction(0.2);
  s.allocator.head_weights = {1.0, std::numeric_limits<double>::quiet_NaN()};
  EXPECT_NE(ValidateSettings(s).message().find("head weight [1]"), std::string::npos);
  s.allocator.head_weights = {1.0, 2.0};
  EXPECT_TRUE(ValidateSettings(s).ok());
  EXPECT_TRUE(CheckHeadWeights(s).ok());
  // The weights are the deployment's: a request's settings validate without them, and the
  // service's check (CheckHeadWeights) refuses heads where it has none.
  s.allocator.head_weights.clear();
  EXPECT_TRUE(ValidateSettings(s).ok());
  EXPECT_NE(CheckHeadWeights(s).message().find("allocator heads needs the model's head weights"),
            std::string::npos);
  s.allocator.head_weights = {1.0, 2.0};
  s.target = KvTarget::Retention(0.9);
  EXPECT_NE(ValidateSettings(s).message().find("not a retention target"), std::string::npos);
  s.target = KvTarget::Fraction(0.2);
  s.policy = PolicyKind::kSnapKv;
  EXPECT_NE(ValidateSettings(s).message().find("allocator heads needs policy xkv"),
            std::string::npos);
  EXPECT_EQ(*ParseAllocator("HEADS"), AllocatorKind::kHeads);
  EXPECT_EQ(AllocatorName(AllocatorKind::kHeads), "heads");
  EXPECT_NE(ParseAllocator("head").status().message().find("allowed: global, paper, heads"),
            std::string::npos);
}

// Naming allocator heads without a floor takes its own default (0, the dev split's pick), not
// the global allocator's 0.75; a floor given wins; naming global again restores 0.75.
TEST(HeadWeightsTest, HeadsTakesItsOwnDefaultFloor) {
  KvSettings base;
  base.policy = PolicyKind::kXkv;
  base.target = KvTarget::Fraction(0.2);
  base.allocator.head_weights = {1.0, 1.0};
  KvPolicyOverride o;
  o.allocator = "heads";
  auto heads = ApplyOverride(base, o);
  ASSERT_TRUE(heads.ok()) << heads.status();
  EXPECT_EQ(heads->allocator.kind, AllocatorKind::kHeads);
  EXPECT_EQ(heads->allocator.floor, kHeadsFloor);
  o.floor = 0.3;
  EXPECT_EQ(ApplyOverride(base, o)->allocator.floor, 0.3);
  KvPolicyOverride back;
  back.allocator = "global";
  EXPECT_EQ(ApplyOverride(*heads, back)->allocator.floor, AllocatorParams{}.floor);
  EXPECT_EQ(DefaultFloor(AllocatorKind::kGlobal), 0.75);
  EXPECT_EQ(DefaultFloor(AllocatorKind::kHeads), 0.0);
}

// Allocator heads is per head by construction: per_head 1 with it is refused with one clear line
// (spec and override alike), while a base's per-head default (serve --per-head 1, allocator
// global) is dropped when a request names heads without per_head.
TEST(HeadWeightsTest, PerHeadWithHeadsIsRefusedNotIgnored) {
  KvSettings s;
  s.policy = PolicyKind::kXkv;
  s.target = KvTarget::Fraction(0.2);
  s.allocator.kind = AllocatorKind::kHeads;
  s.allocator.per_head = true;
  EXPECT_NE(ValidateSettings(s).message().find("allocator heads is per head already"),
            std::string::npos);

  KvSettings base;
  base.policy = PolicyKind::kXkv;
  base.target = KvTarget::Fraction(0.2);
  base.allocator.per_head = true;  // the deployment's per-head global default
  KvPolicyOverride o;
  o.allocator = "heads";
  auto heads = ApplyOverride(base, o);
  ASSERT_TRUE(heads.ok()) << heads.status();
  EXPECT_FALSE(heads->allocator.per_head);
  o.per_head = true;
  auto refused = ApplyOverride(base, o);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("allocator 'heads'"), std::string::npos)
      << refused.status();
  o.per_head = false;
  EXPECT_TRUE(ApplyOverride(base, o).ok());
}

// No allocator named (serve / generate flags, requests, the admin RPC): DefaultAllocator picks
// heads for a size target where the deployment has head weights, global for a retention target,
// per-head scoring or the re-reading profile, and without head weights; a floor not named follows
// the allocator. A request that names one keeps it.
TEST(HeadWeightsTest, AnUnnamedAllocatorFollowsTheTargetAndTheWeights) {
  KvSettings base;  // serve --calibration F (head weights), no --allocator, no --floor
  base.policy = PolicyKind::kXkv;
  base.target = KvTarget::Retention(0.9);
  base.allocator.head_weights = {1.0, 3.0};
  base.allocator.kind_by_default = base.allocator.floor_by_default = true;
  ResolveDefaultAllocator(base);
  EXPECT_EQ(base.allocator.kind, AllocatorKind::kGlobal);  // retention: global
  EXPECT_EQ(base.allocator.floor, AllocatorParams{}.floor);

  KvPolicyOverride sized;
  sized.budget_fraction = 0.2;
  auto heads = ApplyOverride(base, sized);
  ASSERT_TRUE(heads.ok()) << heads.status();
  EXPECT_EQ(heads->allocator.kind, AllocatorKind::kHeads);
  EXPECT_EQ(heads->allocator.floor, kHeadsFloor);
  KvPolicyOverride back;  // the admin RPC sets a retention again: global, its floor
  back.retention = 0.8;
  auto global = ApplyOverride(*heads, back);
  ASSERT_TRUE(global.ok()) << global.status();
  EXPECT_EQ(global->allocator.kind, AllocatorKind::kGlobal);
  EXPECT_EQ(global->allocator.floor, AllocatorParams{}.floor);

  KvPolicyOverride o = sized;  // named: kept, and refused where it cannot be
  o.allocator = "global";
  EXPECT_EQ(ApplyOverride(base, o)->allocator.kind, AllocatorKind::kGlobal);
  o = sized;
  o.floor = 0.4;
  EXPECT_EQ(ApplyOverride(base, o)->allocator.floor, 0.4);
  o = sized;
  o.per_head = true;
  EXPECT_EQ(ApplyOverride(base, o)->allocator.kind, AllocatorKind::kGlobal);
  o = sized;
  o.profile_mode = "reconstruct";
  EXPECT_EQ(ApplyOverride(base, o)->allocator.kind, AllocatorKind::kGlobal);
  KvSettings named = *heads;  // serve --allocator heads: a retention request is refused
  named.allocator.kind_by_default = false;
  EXPECT_EQ(ApplyOverride(named, back).status().message(), HeadsRetentionError().message());

  KvSettings no_weights = base;  // no head weights: global at every target
  no_weights.allocator.head_weights.clear();
  EXPECT_EQ(ApplyOverride(no_weights, sized)->allocator.kind, AllocatorKind::kGlobal);
  KvSettings explicit_floor = base;  // serve --floor 0.5 without --allocator: kept for heads
  explicit_floor.allocator.floor = 0.5;
  explicit_floor.allocator.floor_by_default = false;
  EXPECT_EQ(ApplyOverride(explicit_floor, sized)->allocator.floor, 0.5);
}

}  // namespace
}  // namespace xkv
