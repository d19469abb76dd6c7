#include "allocator/kv_policy.h"

#include <algorithm>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "allocator/kv_spec.h"
#include "gtest/gtest.h"

namespace xkv {
namespace {

void ExpectInvalid(const absl::Status& s, const std::string& fragment) {
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find(fragment), std::string::npos) << s.message();
}

int64_t Sum(const std::vector<int64_t>& v) {
  return std::accumulate(v.begin(), v.end(), int64_t{0});
}

TEST(ParsePolicyTest, NamesRoundTrip) {
  for (auto kind : {PolicyKind::kFull, PolicyKind::kStreaming, PolicyKind::kSnapKv,
                    PolicyKind::kPyramidKv, PolicyKind::kXkv}) {
    auto parsed = ParsePolicy(PolicyName(kind));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, kind);
  }
  EXPECT_EQ(*ParsePolicy("SnapKV"), PolicyKind::kSnapKv);
  ExpectInvalid(ParsePolicy("h2o").status(), "unknown KV policy 'h2o'; allowed: full");
}

TEST(ParseProfileModeTest, ParsesAndValidatesRate) {
  EXPECT_EQ(ParseProfileMode("per_request")->kind, ProfileModeKind::kPerRequest);
  EXPECT_EQ(ParseProfileMode("one_pass")->kind, ProfileModeKind::kOnePass);
  auto sampled = ParseProfileMode("sampled:0.25");
  ASSERT_TRUE(sampled.ok());
  EXPECT_EQ(sampled->kind, ProfileModeKind::kSampled);
  EXPECT_EQ(sampled->sample_rate, 0.25);
  EXPECT_EQ(ProfileModeName(*sampled), "sampled:0.25");
  EXPECT_EQ(ParseProfileMode("sampled:1")->sample_rate, 1.0);
  for (const char* bad :
       {"sampled:0", "sampled:1.5", "sampled:-0.1", "sampled:abc", "sampled:", "sampled:nan"}) {
    ExpectInvalid(ParseProfileMode(bad).status(), "must be a number in (0, 1]");
  }
  ExpectInvalid(ParseProfileMode("always").status(), "unknown profile mode 'always'");
}

TEST(RoundBudgetsToTotalTest, ExactTotalsAndCaps) {
  EXPECT_EQ(RoundBudgetsToTotal(std::vector<double>{1, 1, 1}, 10, 8),
            (std::vector<int64_t>{4, 3, 3}));
  EXPECT_EQ(RoundBudgetsToTotal(std::vector<double>{10, 1, 1}, 12, 5),
            (std::vector<int64_t>{5, 4, 3}));
  EXPECT_EQ(RoundBudgetsToTotal(std::vector<double>{0, 0}, 3, 5), (std::vector<int64_t>{2, 1}));
  std::mt19937 rng(9);
  for (int trial = 0; trial < 2000; ++trial) {
    const int L = 1 + rng() % 8;
    const int64_t cap = rng() % 50;
    std::vector<double> w(L);
    for (double& x : w) x = (rng() % 4 == 0) ? 0.0 : std::uniform_real_distribution<>(0, 3)(rng);
    const int64_t total = cap * L == 0 ? 0 : rng() % (cap * L + 1);
    const std::vector<int64_t> b = RoundBudgetsToTotal(w, total, cap);
    EXPECT_EQ(Sum(b), total);
    for (int64_t x : b) EXPECT_TRUE(x >= 0 && x <= cap);
  }
}

TEST(KvPolicyTest, FullKeepsEverything) {
  auto policy = MakeKvPolicy({PolicyKind::kFull});
  EXPECT_EQ(policy->selection(), SelectionRule::kAll);
  auto b = policy->Budgets({3, 100}, BudgetTarget::Tokens(10));
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->budgets, (std::vector<int64_t>{100, 100, 100}));
}

TEST(KvPolicyTest, SnapKvAndStreamingAreUniform) {
  for (auto kind : {PolicyKind::kSnapKv, PolicyKind::kStreaming}) {
    auto policy = MakeKvPolicy({kind});
    EXPECT_FALSE(policy->needs_profile());
    auto b = policy->Budgets({3, 8}, BudgetTarget::Tokens(10));
    ASSERT_TRUE(b.ok());
    EXPECT_EQ(b->budgets, (std::vector<int64_t>{4, 3, 3}));
    EXPECT_EQ(b->total_tokens, 10);
    ExpectInvalid(policy->Budgets({3, 8}, BudgetTarget::Tokens(25)).status(),
                  "total tokens 25 must be in [0, 24]");
    ExpectInvalid(policy->Budgets({3, 8}, BudgetTarget::Retention(0.9)).status(),
                  "needs policy xkv");
  }
  EXPECT_EQ(MakeKvPolicy({PolicyKind::kStreaming})->selection(), SelectionRule::kSinksAndRecent);
  EXPECT_EQ(MakeKvPolicy({PolicyKind::kSnapKv})->selection(), SelectionRule::kTopScore);
}

TEST(KvPolicyTest, PyramidIsLinearlyDecreasingWithExactTotal) {
  auto policy = MakeKvPolicy({PolicyKind::kPyramidKv});
  auto b = policy->Budgets({32, 1000}, BudgetTarget::Tokens(3200));
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->total_tokens, 3200);
  // a = 100, b_min = 100/20 = 5, b_max = 195.
  EXPECT_NEAR(b->budgets[0], 195, 1);
  EXPECT_NEAR(b->budgets[31], 5, 1);
  for (int l = 1; l < 32; ++l) EXPECT_LE(b->budgets[l], b->budgets[l - 1]);
  // Large budgets: b_max clamps to P, b_min = 2a - P.
  auto big = policy->Budgets({4, 100}, BudgetTarget::Tokens(320));
  ASSERT_TRUE(big.ok());
  EXPECT_EQ(big->budgets, (std::vector<int64_t>{100, 87, 73, 60}));
}

TEST(KvPolicyTest, BaselinesFitByteTargets) {
  const std::vector<int64_t> bytes = {4, 8, 8, 4};
  for (auto kind : {PolicyKind::kSnapKv, PolicyKind::kPyramidKv, PolicyKind::kStreaming}) {
    auto policy = MakeKvPolicy({kind});
    for (int64_t M : {0, 7, 100, 1000, 2400, 5000}) {
      auto b = policy->Budgets({4, 100, {}, bytes}, BudgetTarget::Bytes(M));
      ASSERT_TRUE(b.ok());
      EXPECT_LE(b->total_bytes, M);
      EXPECT_GT(b->total_bytes + 8 * 4, std::min<int64_t>(M, 2400)) << "leaves room for a token";
    }
    ExpectInvalid(policy->Budgets({4, 100}, BudgetTarget::Bytes(100)).status(), "bytes per token");
  }
}

std::vector<LayerProfile> Profiles() {
  return {LayerProfileFromGains({0.9, 0.05, 0.03, 0.02}).value(),
          LayerProfileFromGains({0.4, 0.3, 0.2, 0.1}).value(),
          LayerProfileFromGains({0.25, 0.25, 0.25, 0.25}).value()};
}

TEST(KvPolicyTest, XkvUsesTheSolver) {
  const std::vector<LayerProfile> profiles = Profiles();
  PolicyOptions paper{PolicyKind::kXkv};
  paper.allocator.kind = AllocatorKind::kPaper;
  auto policy = MakeKvPolicy(paper);
  EXPECT_TRUE(policy->needs_profile());
  auto b = policy->Budgets({3, 4, profiles}, BudgetTarget::Tokens(6));
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->budgets, SolveForTotalTokens(profiles, 6)->budgets);
  ASSERT_TRUE(b->average_retention.has_value());
  auto snap =
      MakeKvPolicy({PolicyKind::kSnapKv})->Budgets({3, 4, profiles}, BudgetTarget::Tokens(6));
  ASSERT_TRUE(snap.ok());
  EXPECT_GT(*b->average_retention, *snap->average_retention);  // same tokens, more retained
  auto r = policy->Budgets({3, 4, profiles}, BudgetTarget::Retention(0.8));
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->reachable);
  EXPECT_GE(*r->average_retention, 0.8 - 1e-12);
  EXPECT_EQ(r->budgets, SolveForRetention(profiles, 0.8)->budgets);
  const std::vector<int64_t> bytes = {2, 1, 1};
  auto m = policy->Budgets({3, 4, profiles, bytes}, BudgetTarget::Bytes(7));
  ASSERT_TRUE(m.ok());
  EXPECT_LE(m->total_bytes, 7);
  ExpectInvalid(policy->Budgets({3, 4}, BudgetTarget::Tokens(6)).status(), "needs one importance");
  ExpectInvalid(policy->Budgets({3, 4, profiles}, BudgetTarget::Retention(0)).status(),
                "must be in (0, 1]");
}

// Raw curves: layer l's gains are its sorted scores divided by S_l; the global allocator multiplies
// S_l back, so a layer with ten times the mass wins slots the paper would give away.
std::vector<LayerProfile> MassProfiles() {
  std::vector<LayerProfile> p = {LayerProfileFromGains({0.5, 0.3, 0.1, 0.1}).value(),
                                 LayerProfileFromGains({0.3, 0.3, 0.2, 0.2}).value(),
                                 LayerProfileFromGains({0.25, 0.25, 0.25, 0.25}).value()};
  p[0].total_mass = 1.0;
  p[1].total_mass = 10.0;
  p[2].total_mass = 1.0;
  return p;
}

TEST(KvPolicyTest, GlobalAllocatorRanksRawScoresWithinFloorAndCap) {
  const std::vector<LayerProfile> profiles = MassProfiles();
  PolicyOptions o{PolicyKind::kXkv};
  o.allocator.floor = 0.0;
  o.allocator.cap = 64.0;
  auto free = MakeKvPolicy(o)->Budgets({3, 4, profiles}, BudgetTarget::Tokens(6));
  ASSERT_TRUE(free.ok()) << free.status();
  // Raw densities: layer 1 has 3,3,2,2; layer 0 0.5,0.3,0.1,0.1; layer 2 0.25 each.
  EXPECT_EQ(free->budgets, (std::vector<int64_t>{2, 4, 0}));
  // The paper's normalised gains pick layer 0's 0.5 and 0.3 first.
  PolicyOptions paper{PolicyKind::kXkv};
  paper.allocator.kind = AllocatorKind::kPaper;
  auto p = MakeKvPolicy(paper)->Budgets({3, 4, profiles}, BudgetTarget::Tokens(6));
  ASSERT_TRUE(p.ok());
  EXPECT_NE(p->budgets, free->budgets);
  // A cap of 1x the uniform share (2) and a floor of 0.5x (1).
  o.allocator.floor = 0.5;
  o.allocator.cap = 1.0;
  auto capped = MakeKvPolicy(o)->Budgets({3, 4, profiles}, BudgetTarget::Tokens(6));
  ASSERT_TRUE(capped.ok());
  EXPECT_EQ(capped->budgets, (std::vector<int64_t>{2, 2, 2}));
  // floor = 1 is uniform SnapKV.
  o.allocator.floor = 1.0;
  o.allocator.cap = 4.0;
  auto uniform = MakeKvPolicy(o)->Budgets({3, 4, profiles}, BudgetTarget::Tokens(9));
  ASSERT_TRUE(uniform.ok());
  EXPECT_EQ(uniform->budgets, (std::vector<int64_t>{3, 3, 3}));
  // Bytes as the cost: 2 bytes per token per layer, 12 bytes = 6 tokens.
  const std::vector<int64_t> bytes = {2, 2, 2};
  o.allocator.floor = 0.0;
  o.allocator.cap = 64.0;
  auto m = MakeKvPolicy(o)->Budgets({3, 4, profiles, bytes}, BudgetTarget::Bytes(12));
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->budgets, free->budgets);
  EXPECT_EQ(m->total_bytes, 12);
  // Retention here is the fraction of all layers' mass kept (layer 1 holds 10 of 12).
  auto r = MakeKvPolicy(o)->Budgets({3, 4, profiles}, BudgetTarget::Retention(0.8));
  ASSERT_TRUE(r.ok());
  EXPECT_GE(*r->average_retention, 0.8 - 1e-12);
  EXPECT_NEAR(AverageRetention(profiles, r->budgets, AllocatorKind::kGlobal), *r->average_retention,
              1e-12);
}

TEST(KvPolicyTest, XkvKeepsSinksOutsideTheRanking) {
  PolicyOptions o{PolicyKind::kXkv};
  EXPECT_EQ(MakeKvPolicy(o)->selection(), SelectionRule::kSinksAndTopScore);
  o.sink_tokens = 0;
  EXPECT_EQ(MakeKvPolicy(o)->selection(), SelectionRule::kTopScore);
  //                                 sinks (low scores)   ranked
  const std::vector<float> scores = {0.0f, 0.1f, 0.0f, 0.9f, 0.2f, 0.8f};
  auto kept = SelectKeptTokens(scores, 1, 6, 4, SelectionRule::kSinksAndTopScore, 2);
  ASSERT_TRUE(kept.ok());
  EXPECT_EQ((*kept)[0], (std::vector<int64_t>{0, 1, 3, 5}));
  // A budget below the sinks keeps the first tokens only.
  EXPECT_EQ((*SelectKeptTokens(scores, 1, 6, 1, SelectionRule::kSinksAndTopScore, 2))[0],
            (std::vector<int64_t>{0}));
}

TEST(KvPolicyTest, XkvRecentShareKeepsTheLastPrefixTokens) {
  //                                 sinks       ranked                         recent
  const std::vector<float> scores = {0.0f, 0.1f, 0.9f, 0.2f, 0.8f, 0.3f, 0.0f, 0.0f, 0.1f, 0.0f};
  // Budget 6: 2 sinks, floor(0.5 * 4) = 2 recent (8, 9), the 2 top scores before them (2, 4).
  auto kept = SelectKeptTokens(scores, 1, 10, 6, SelectionRule::kSinksAndTopScore, 2, 0.5);
  ASSERT_TRUE(kept.ok()) << kept.status();
  EXPECT_EQ((*kept)[0], (std::vector<int64_t>{0, 1, 2, 4, 8, 9}));
  // recent = 1 is streaming (sinks + the most recent); 0 is the scores alone.
  EXPECT_EQ((*SelectKeptTokens(scores, 1, 10, 6, SelectionRule::kSinksAndTopScore, 2, 1.0))[0],
            (std::vector<int64_t>{0, 1, 6, 7, 8, 9}));
  EXPECT_EQ((*SelectKeptTokens(scores, 1, 10, 6, SelectionRule::kSinksAndTopScore, 2, 0.0))[0],
            (std::vector<int64_t>{0, 1, 2, 3, 4, 5}));
  const absl::Status bad =
      SelectKeptTokens(scores, 1, 10, 6, SelectionRule::kSinksAndTopScore, 2, 1.5).status();
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.message().find("recent 1.5 in [0, 1]"), std::string::npos) << bad;
  // The spec's rule: [0, 1], xkv only.
  KvSettings s;
  s.allocator.recent = 0.5;
  EXPECT_TRUE(ValidateSettings(s).ok());
  s.allocator.recent = -0.5;
  EXPECT_NE(ValidateSettings(s).message().find("recent is -0.5; it must be in [0, 1]"),
            std::string::npos);
  s.allocator.recent = 0.5;
  s.policy = PolicyKind::kSnapKv;
  s.target = KvTarget::Fraction(0.2);
  EXPECT_NE(ValidateSettings(s).message().find("recent (0.5) needs policy xkv, not 'snapkv'"),
            std::string::npos);
}

TEST(SelectKeptTokensTest, TopScoreWithTiesByLowerIndex) {
  const std::vector<float> scores = {0.1f, 0.5f, 0.5f, 0.2f, 0.5f,   // head 0
                                     0.9f, 0.0f, 0.0f, 0.0f, 0.3f};  // head 1
  auto kept = SelectKeptTokens(scores, 2, 5, 2, SelectionRule::kTopScore);
  ASSERT_TRUE(kept.ok());
  EXPECT_EQ((*kept)[0], (std::vector<int64_t>{1, 2}));
  EXPECT_EQ((*kept)[1], (std::vector<int64_t>{0, 4}));
  auto three = SelectKeptTokens(scores, 2, 5, 3, SelectionRule::kTopScore);
  EXPECT_EQ((*three)[1], (std::vector<int64_t>{0, 1, 4}));
}

TEST(SelectKeptTokensTest, TopScoreMatchesStableSortOnRandomScores) {
  std::mt19937 rng(4);
  for (int trial = 0; trial < 300; ++trial) {
    const int64_t P = 1 + rng() % 40;
    const int64_t b = rng() % (P + 1);
    std::vector<float> scores(P);
    for (float& s : scores) s = static_cast<float>(rng() % 6);
    auto kept = SelectKeptTokens(scores, 1, P, b, SelectionRule::kTopScore);
    ASSERT_TRUE(kept.ok());
    std::vector<int64_t> order(P);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t a, int64_t c) { return scores[a] > scores[c]; });
    order.resize(b);
    std::sort(order.begin(), order.end());
    EXPECT_EQ((*kept)[0], order);
  }
}

// Long rows take the radix-select path: same rule (top scores, ties to the lower slot), with heavy
// ties, zeros and -0.
TEST(SelectKeptTokensTest, LongRowsMatchStableSort) {
  std::mt19937 rng(5);
  for (int trial = 0; trial < 40; ++trial) {
    const int64_t P = 256 + rng() % 5000;
    const int64_t b = trial % 5 == 0 ? P : rng() % (P + 1);
    std::vector<float> scores(P);
    for (float& s : scores) {
      const uint32_t r = rng() % 100;
      s = r < 10 ? (r % 2 ? 0.0f : -0.0f) : (r < 60 ? 0.125f * (r % 7) : r * 1e-3f * (rng() % 3));
    }
    auto kept = SelectKeptTokens(scores, 1, P, b, SelectionRule::kTopScore);
    ASSERT_TRUE(kept.ok());
    std::vector<int64_t> order(P);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t a, int64_t c) { return scores[a] > scores[c]; });
    order.resize(b);
    std::sort(order.begin(), order.end());
    ASSERT_EQ((*kept)[0], order) << "P " << P << " budget " << b;
  }
}

TEST(SelectKeptTokensTest, StreamingAndFull) {
  auto s = SelectKeptTokens({}, 2, 10, 6, SelectionRule::kSinksAndRecent);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ((*s)[0], (std::vector<int64_t>{0, 1, 2, 3, 8, 9}));
  EXPECT_EQ((*s)[1], (*s)[0]);
  EXPECT_EQ((*SelectKeptTokens({}, 1, 10, 3, SelectionRule::kSinksAndRecent))[0],
            (std::vector<int64_t>{0, 1, 2}));
  EXPECT_EQ((*SelectKeptTokens({}, 1, 4, 0, SelectionRule::kAll))[0],
            (std::vector<int64_t>{0, 1, 2, 3}));
  ExpectInvalid(SelectKeptTokens({}, 1, 4, 5, SelectionRule::kSinksAndRecent).status(),
                "budget 5 must be in [0, prefix_len=4]");
  ExpectInvalid(
      SelectKeptTokens(std::vector<float>{1, 2}, 1, 4, 1, SelectionRule::kTopScore).status(),
      "expected heads*prefix_len = 4");
}

}  // namespace
}  // namespace xkv
