// Budgets per (layer, KV head): the global allocator's threshold over every head's own raw curve.
#include <algorithm>
#include <cmath>
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

PolicyOptions PerHead(double floor, double cap = 4.0) {
  PolicyOptions o{PolicyKind::kXkv};
  o.allocator.per_head = true;
  o.allocator.floor = floor;
  o.allocator.cap = cap;
  return o;
}

int64_t SumHeads(const PolicyBudgets& b) {
  int64_t s = 0;
  for (const auto& layer : b.head_budgets) s += std::accumulate(layer.begin(), layer.end(), 0LL);
  return s;
}

TEST(PerHeadBudgetsTest, TokensConservedWithinFloorsAndCaps) {
  const int L = 4, H = 3;
  const int64_t P = 200;
  // Head (1, 2) holds most of the mass; head (3, 0) almost none.
  std::vector<std::vector<float>> scale(L, std::vector<float>(H, 1.0f));
  scale[1][2] = 50.0f;
  scale[3][0] = 0.01f;
  const std::vector<LayerProfile> p = Profiles(L, H, P, 7, scale);
  for (double floor : {0.0, 0.2, 0.5, 0.75}) {
    for (int64_t N : {40, 80, 160, 320}) {
      auto b = MakeKvPolicy(PerHead(floor, 2.0))->Budgets({L, P, p}, BudgetTarget::Tokens(N));
      ASSERT_TRUE(b.ok()) << b.status();
      ASSERT_EQ(b->head_budgets.size(), L);
      EXPECT_EQ(SumHeads(*b), N * H) << "floor " << floor << " N " << N;
      EXPECT_EQ(b->total_tokens, N);
      const double share = static_cast<double>(N) / L;  // per (layer, head)
      for (int l = 0; l < L; ++l) {
        ASSERT_EQ(b->head_budgets[l].size(), H);
        int64_t layer = 0;
        for (int h = 0; h < H; ++h) {
          const int64_t x = b->head_budgets[l][h];
          EXPECT_GE(x, static_cast<int64_t>(std::floor(floor * share)));
          EXPECT_LE(x, static_cast<int64_t>(std::ceil(2.0 * share)));
          layer += x;
        }
        EXPECT_EQ(b->budgets[l],
                  *std::max_element(b->head_budgets[l].begin(), b->head_budgets[l].end()));
        EXPECT_LE(layer, static_cast<int64_t>(std::ceil(2.0 * share)) * H);  // the layer's cap
      }
    }
  }
  // Free of floors, the heavy head takes more than the near-empty one.
  auto free = MakeKvPolicy(PerHead(0.0, 4.0))->Budgets({L, P, p}, BudgetTarget::Tokens(80));
  ASSERT_TRUE(free.ok());
  EXPECT_GT(free->head_budgets[1][2], free->head_budgets[3][0]);
}

TEST(PerHeadBudgetsTest, FloorOneIsUniform) {
  const int L = 3, H = 2;
  const int64_t P = 64;
  const std::vector<LayerProfile> p = Profiles(L, H, P, 3);
  auto b = MakeKvPolicy(PerHead(1.0))->Budgets({L, P, p}, BudgetTarget::Tokens(48));
  ASSERT_TRUE(b.ok()) << b.status();
  for (const auto& layer : b->head_budgets) {
    for (int64_t x : layer) EXPECT_EQ(x, 16);
  }
}

TEST(PerHeadBudgetsTest, BytesAreTheCost) {
  const int L = 3, H = 2;
  const int64_t P = 100;
  const std::vector<LayerProfile> p = Profiles(L, H, P, 11);
  const std::vector<int64_t> bytes(L, 8);  // 4 bytes per head token
  const int64_t M = 8 * 90 + 4;            // 90 layer tokens and one head token
  auto b = MakeKvPolicy(PerHead(0.2))->Budgets({L, P, p, bytes}, BudgetTarget::Bytes(M));
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(SumHeads(*b), 181);
  EXPECT_EQ(b->total_bytes, M);
  // A byte target equals the token target of the same size.
  auto t = MakeKvPolicy(PerHead(0.2))->Budgets({L, P, p, bytes}, BudgetTarget::Tokens(90));
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->total_bytes, 8 * 90);
  // Per head, the kept mass is at least the per-layer allocator's at the same bytes.
  PolicyOptions layer{PolicyKind::kXkv};
  layer.allocator.floor = 0.2;
  auto pl = MakeKvPolicy(layer)->Budgets({L, P, p, bytes}, BudgetTarget::Tokens(90));
  ASSERT_TRUE(pl.ok());
  EXPECT_GE(*t->average_retention, *pl->average_retention - 1e-12);
}

TEST(PerHeadBudgetsTest, RetentionTarget) {
  const std::vector<LayerProfile> p = Profiles(2, 2, 50, 5);
  auto b = MakeKvPolicy(PerHead(0.0))->Budgets({2, 50, p}, BudgetTarget::Retention(0.6));
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_GE(*b->average_retention, 0.6 - 1e-12);
  EXPECT_LT(SumHeads(*b), 2 * 2 * 50);
}

TEST(PerHeadBudgetsTest, NeedsEachHeadsScores) {
  std::vector<LayerProfile> gains_only = {*LayerProfileFromGains({0.5, 0.3, 0.2})};
  auto b = MakeKvPolicy(PerHead(0.5))->Budgets({1, 3, gains_only}, BudgetTarget::Tokens(2));
  EXPECT_EQ(b.status().code(), absl::StatusCode::kFailedPrecondition) << b.status();
  EXPECT_NE(b.status().message().find("every head's scores"), std::string::npos);
}

TEST(PerHeadSpecTest, ParseAndValidate) {
  EXPECT_TRUE(*ParsePerHead("1"));
  EXPECT_TRUE(*ParsePerHead("TRUE"));
  EXPECT_FALSE(*ParsePerHead("0"));
  const absl::Status bad = ParsePerHead("yes").status();
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.message().find("per_head is 'yes'; allowed: 1, true, 0, false"), std::string::npos);
  KvPolicyOverride o;
  o.per_head = true;
  auto s = ApplyOverride(KvSettings{}, o);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_TRUE(s->allocator.per_head);
  o.allocator = "paper";
  EXPECT_EQ(ApplyOverride(KvSettings{}, o).status().code(), absl::StatusCode::kInvalidArgument);
  o.allocator = "";
  o.policy = "streaming";
  o.budget_fraction = 0.2;
  const absl::Status e = ApplyOverride(KvSettings{}, o).status();
  EXPECT_EQ(e.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(e.message().find("per_head budgets need policy xkv"), std::string::npos) << e;
  EXPECT_NE(e.message().find("'streaming'"), std::string::npos) << e;
  // AdaKV (snapkv's budgets split over each layer's heads) is an eval method: the settings are
  // valid, the service's override refuses them.
  o.policy = "snapkv";
  EXPECT_EQ(ApplyOverride(KvSettings{}, o).status().code(), absl::StatusCode::kInvalidArgument);
  KvSettings adakv;
  adakv.policy = PolicyKind::kSnapKv;
  adakv.target = KvTarget::Fraction(0.2);
  adakv.allocator.per_head = true;
  EXPECT_TRUE(ValidateSettings(adakv).ok());
  // A per-head default does not stop a request for a baseline.
  KvSettings base;
  base.allocator.per_head = true;
  KvPolicyOverride snap;
  snap.policy = "snapkv";
  auto ok = ApplyOverride(base, snap);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_FALSE(ok->allocator.per_head);
  // The service's edge takes it with the same rules (the stages' capability is the coordinator's
  // check); a per-head override for a baseline is refused there too.
  KvPolicyOverride service;
  service.per_head = true;
  EXPECT_TRUE(ValidateKvOverride(service).ok());
  service.policy = "snapkv";
  service.budget_fraction = 0.2;
  const absl::Status refused = ValidateKvOverride(service);
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.message().find("per_head budgets need policy xkv"), std::string::npos)
      << refused;
}

TEST(PerHeadSpecTest, PlanBudgetsSplitsByHead) {
  const std::vector<LayerProfile> p = Profiles(2, 3, 40, 13);
  KvSettings spec;
  spec.allocator.per_head = true;
  spec.target = KvTarget::Fraction(0.25);
  auto b = PlanBudgets(p, spec, {2, 40, 6});
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(SumHeads(*b), 20 * 3);  // round(0.25 * 40 * 2) layer tokens, 3 heads each
  EXPECT_EQ(b->total_bytes, 20 * 6);
}

// AdaKV (snapkv / pyramidkv with per_head): each layer keeps the baseline's own budget b_l, split
// over its heads by the layer's top scores, each head at least floor(alpha * b_l).
TEST(AdaKvBudgetsTest, LayerBudgetsStayTheBaselinesAndHeadsKeepTheirFloor) {
  const int L = 3, H = 4;
  const int64_t P = 120;
  std::vector<std::vector<float>> scale(L, std::vector<float>(H, 1.0f));
  scale[0][1] = 40.0f;  // one heavy head in layer 0
  scale[2][3] = 0.01f;  // one near-empty head in layer 2
  const std::vector<LayerProfile> p = Profiles(L, H, P, 11, scale);
  for (PolicyKind kind : {PolicyKind::kSnapKv, PolicyKind::kPyramidKv}) {
    for (double alpha : {0.0, 0.2, 0.5, 1.0}) {
      for (int64_t N : {30, 90, 240}) {
        PolicyOptions plain{kind};
        PolicyOptions ada = plain;
        ada.allocator.per_head = true;
        ada.allocator.floor = alpha;
        auto base = MakeKvPolicy(plain)->Budgets({L, P, p}, BudgetTarget::Tokens(N));
        auto b = MakeKvPolicy(ada)->Budgets({L, P, p}, BudgetTarget::Tokens(N));
        ASSERT_TRUE(base.ok() && b.ok()) << b.status();
        EXPECT_EQ(b->total_tokens, N);
        ASSERT_EQ(b->head_budgets.size(), L);
        for (int l = 0; l < L; ++l) {
          const int64_t bl = base->budgets[l];
          const std::vector<int64_t>& heads = b->head_budgets[l];
          EXPECT_EQ(std::accumulate(heads.begin(), heads.end(), int64_t{0}), bl * H)
              << "layer " << l << " alpha " << alpha << " N " << N;
          for (int64_t x : heads) {
            EXPECT_GE(x, static_cast<int64_t>(std::floor(alpha * bl)));
            EXPECT_LE(x, P);
          }
          EXPECT_EQ(b->budgets[l], *std::max_element(heads.begin(), heads.end()));
          if (alpha == 1.0) EXPECT_EQ(heads, std::vector<int64_t>(H, bl));  // = the baseline
        }
      }
    }
  }
  // AdaKV's alpha = 0.2: the heavy head takes more than its share, the near-empty one less.
  PolicyOptions ada{PolicyKind::kSnapKv};
  ada.allocator.per_head = true;
  ada.allocator.floor = 0.2;
  auto b = MakeKvPolicy(ada)->Budgets({L, P, p}, BudgetTarget::Tokens(90));
  ASSERT_TRUE(b.ok());
  EXPECT_GT(b->head_budgets[0][1], 30);
  EXPECT_LT(b->head_budgets[2][3], 30);
  EXPECT_GE(b->head_budgets[2][3], 6);  // floor(0.2 * 30)
  // Without each head's scores there is nothing to split by: a clear error.
  EXPECT_EQ(MakeKvPolicy(ada)->Budgets({L, P, {}}, BudgetTarget::Tokens(90)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace xkv
