// Per-layer sensitivity weights (AllocatorParams::layer_weights, `xkv calibrate`): the global
// allocator multiplies each layer's raw curves by w_l before its one threshold.
#include <cmath>
#include <limits>
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

PolicyOptions Xkv(bool per_head, std::vector<double> weights, double floor = 0.75) {
  PolicyOptions o{PolicyKind::kXkv};
  o.allocator.per_head = per_head;
  o.allocator.floor = floor;
  o.allocator.layer_weights = std::move(weights);
  return o;
}

TEST(LayerWeightsTest, AllOnesGiveTodaysBudgetsExactly) {
  const int L = 6, H = 3;
  const int64_t P = 300;
  const std::vector<LayerProfile> p = Profiles(L, H, P, 3);
  const std::vector<int64_t> bytes(L, 96);
  for (bool per_head : {false, true}) {
    for (const BudgetTarget& t : {BudgetTarget::Tokens(200), BudgetTarget::Tokens(900),
                                  BudgetTarget::Bytes(96 * 450), BudgetTarget::Retention(0.8)}) {
      auto none = MakeKvPolicy(Xkv(per_head, {}))->Budgets({L, P, p, bytes}, t);
      auto ones =
          MakeKvPolicy(Xkv(per_head, std::vector<double>(L, 1.0)))->Budgets({L, P, p, bytes}, t);
      ASSERT_TRUE(none.ok()) << none.status();
      ASSERT_TRUE(ones.ok()) << ones.status();
      EXPECT_EQ(none->budgets, ones->budgets) << "per_head " << per_head;
      EXPECT_EQ(none->head_budgets, ones->head_budgets);
      EXPECT_EQ(none->total_tokens, ones->total_tokens);
      EXPECT_EQ(none->average_retention, ones->average_retention);
    }
  }
}

TEST(LayerWeightsTest, AHeavyLayerGetsMoreWithinFloorAndCap) {
  const int L = 5, H = 3;
  const int64_t P = 400;
  const std::vector<LayerProfile> p = Profiles(L, H, P, 11);
  const int64_t N = 500;  // uniform share 100 per layer: floor 75, cap 400
  std::vector<double> w(L, 1.0);
  w[2] = 20.0;
  for (bool per_head : {false, true}) {
    auto before = MakeKvPolicy(Xkv(per_head, {}))->Budgets({L, P, p}, BudgetTarget::Tokens(N));
    auto after = MakeKvPolicy(Xkv(per_head, w))->Budgets({L, P, p}, BudgetTarget::Tokens(N));
    ASSERT_TRUE(before.ok() && after.ok());
    EXPECT_GT(after->budgets[2], before->budgets[2]) << "per_head " << per_head;
    EXPECT_EQ(after->total_tokens, N);
    for (int l = 0; l < L; ++l) {
      EXPECT_GE(after->budgets[l], 75) << l;
      EXPECT_LE(after->budgets[l], 400) << l;
      if (l != 2) EXPECT_LE(after->budgets[l], before->budgets[l]) << l;
    }
  }
  // Weighed far above the rest, layer 2 takes everything the other layers' floors leave.
  w[2] = 1000.0;
  auto per_layer = MakeKvPolicy(Xkv(false, w))->Budgets({L, P, p}, BudgetTarget::Tokens(N));
  ASSERT_TRUE(per_layer.ok());
  EXPECT_EQ(per_layer->budgets, (std::vector<int64_t>{75, 75, N - 4 * 75, 75, 75}));
}

TEST(LayerWeightsTest, PaperAllocatorAndBaselinesIgnoreThem) {
  const int L = 4;
  const int64_t P = 100;
  const std::vector<LayerProfile> p = Profiles(L, 1, P, 5);
  for (PolicyKind kind : {PolicyKind::kXkv, PolicyKind::kSnapKv, PolicyKind::kPyramidKv}) {
    PolicyOptions o{kind};
    o.allocator.kind = AllocatorKind::kPaper;
    auto a = MakeKvPolicy(o)->Budgets({L, P, p}, BudgetTarget::Tokens(120));
    o.allocator.layer_weights = {9.0, 1.0, 1.0, 0.1};
    auto b = MakeKvPolicy(o)->Budgets({L, P, p}, BudgetTarget::Tokens(120));
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_EQ(a->budgets, b->budgets);
  }
}

TEST(LayerWeightsTest, WrongCountAndBadValuesAreErrors) {
  const int L = 4;
  const int64_t P = 100;
  const std::vector<LayerProfile> p = Profiles(L, 2, P, 9);
  for (bool per_head : {false, true}) {
    auto b =
        MakeKvPolicy(Xkv(per_head, {1.0, 1.0, 1.0}))->Budgets({L, P, p}, BudgetTarget::Tokens(100));
    ASSERT_FALSE(b.ok());
    EXPECT_EQ(b.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(b.status().message().find("3 weights for a model of 4 layers"), std::string::npos)
        << b.status();
  }
  for (double bad : {-1.0, 0.0, std::numeric_limits<double>::quiet_NaN(),
                     std::numeric_limits<double>::infinity()}) {
    KvSettings s;
    s.allocator.layer_weights = {1.0, bad};
    const absl::Status st = ValidateSettings(s);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(st.message().find("layer weight [1]"), std::string::npos) << st;
  }
  // A request's override keeps the service's weights.
  KvSettings base;
  base.allocator.layer_weights = {2.0, 0.5};
  KvPolicyOverride ov;
  ov.floor = 0.5;
  auto s = ApplyOverride(base, ov);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->allocator.layer_weights, base.allocator.layer_weights);
}

}  // namespace
}  // namespace xkv
