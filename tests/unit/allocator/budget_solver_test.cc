#include "allocator/budget_solver.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace xkv {
namespace {

constexpr double kTol = 1e-9;
constexpr double kNegInf = -std::numeric_limits<double>::infinity();

struct Instance {
  std::vector<LayerProfile> layers;
  SolverOptions options;
  std::vector<int64_t> lo, hi;  // effective floors/ceilings
};

// Tiny random instance: L in [1,4], P in [0,6] (P shared or per layer), scores quantised to a few
// levels so that ties (equal gains, within and across layers) are frequent.
Instance RandomInstance(std::mt19937& rng) {
  Instance in;
  const int L = 1 + rng() % 4;
  const bool shared_p = rng() % 2;
  const int64_t P0 = rng() % 7;
  for (int l = 0; l < L; ++l) {
    const int heads = 1 + rng() % 3;
    const int64_t P = shared_p ? P0 : rng() % 7;
    const int levels = 1 + rng() % 5;
    std::vector<float> scores(heads * P);
    for (float& s : scores) s = static_cast<float>(rng() % levels) * 0.25f;
    in.layers.push_back(BuildLayerProfile(scores, heads, P).value());
    const int64_t lo = (rng() % 3 == 0) ? rng() % (P + 1) : 0;
    const int64_t hi = (rng() % 3 == 0) ? lo + rng() % (P - lo + 1) : P;
    in.lo.push_back(lo);
    in.hi.push_back(hi);
  }
  if (rng() % 2) {
    in.options.floors = in.lo;
    in.options.ceilings = in.hi;
  } else {
    for (int l = 0; l < L; ++l) in.lo[l] = 0, in.hi[l] = in.layers[l].prefix_len;
  }
  return in;
}

// Exact DP: best[n] = max sum_l R_l(b_l) over allocations with sum b_l = n (summed in layer order,
// the solver's order). -inf when infeasible.
std::vector<double> BestByTotal(const Instance& in) {
  std::vector<double> best = {0.0};
  for (size_t l = 0; l < in.layers.size(); ++l) {
    std::vector<double> next(best.size() + in.hi[l], kNegInf);
    for (size_t n = 0; n < best.size(); ++n) {
      if (best[n] == kNegInf) continue;
      for (int64_t b = in.lo[l]; b <= in.hi[l]; ++b) {
        next[n + b] = std::max(next[n + b], best[n] + in.layers[l].retention[b]);
      }
    }
    best.swap(next);
  }
  return best;
}

// Exact DP over bytes: max retention with sum bytes_l b_l <= M.
double BestByBytes(const Instance& in, const std::vector<int64_t>& bytes, int64_t M) {
  std::vector<double> best(M + 1, kNegInf);
  best[0] = 0.0;
  for (size_t l = 0; l < in.layers.size(); ++l) {
    std::vector<double> next(M + 1, kNegInf);
    for (int64_t m = 0; m <= M; ++m) {
      if (best[m] == kNegInf) continue;
      for (int64_t b = in.lo[l]; b <= in.hi[l] && m + b * bytes[l] <= M; ++b) {
        next[m + b * bytes[l]] =
            std::max(next[m + b * bytes[l]], best[m] + in.layers[l].retention[b]);
      }
    }
    best.swap(next);
  }
  return *std::max_element(best.begin(), best.end());
}

// The paper's loop: start at the floors, repeatedly give one slot to the layer with the largest
// next gain (ties: lower layer).
double GreedyObjective(const Instance& in, int64_t N) {
  std::vector<int64_t> b = in.lo;
  for (int64_t n = std::accumulate(b.begin(), b.end(), int64_t{0}); n < N; ++n) {
    int best = -1;
    for (size_t l = 0; l < b.size(); ++l) {
      if (b[l] < in.hi[l] &&
          (best < 0 || in.layers[l].gain[b[l]] > in.layers[best].gain[b[best]])) {
        best = static_cast<int>(l);
      }
    }
    ++b[best];
  }
  double r = 0;
  for (size_t l = 0; l < b.size(); ++l) r += in.layers[l].retention[b[l]];
  return r;
}

void ExpectWithinBounds(const Instance& in, const BudgetResult& r) {
  ASSERT_EQ(r.budgets.size(), in.layers.size());
  for (size_t l = 0; l < r.budgets.size(); ++l) {
    EXPECT_GE(r.budgets[l], in.lo[l]);
    EXPECT_LE(r.budgets[l], in.hi[l]);
  }
  EXPECT_EQ(r.total_tokens, std::accumulate(r.budgets.begin(), r.budgets.end(), int64_t{0}));
}

TEST(BudgetSolverTest, TotalTokensMatchesDpAndGreedyOnRandomInstances) {
  std::mt19937 rng(20240601);
  int checked = 0;
  for (int trial = 0; trial < 1500; ++trial) {
    const Instance in = RandomInstance(rng);
    const std::vector<double> best = BestByTotal(in);
    const int64_t lo = std::accumulate(in.lo.begin(), in.lo.end(), int64_t{0});
    for (int64_t N = lo; N < static_cast<int64_t>(best.size()); ++N) {
      auto r = SolveForTotalTokens(in.layers, N, in.options);
      ASSERT_TRUE(r.ok()) << r.status();
      ExpectWithinBounds(in, *r);
      ASSERT_EQ(r->total_tokens, N);
      EXPECT_NEAR(r->total_retention, best[N], kTol) << "trial " << trial << " N " << N;
      EXPECT_NEAR(r->total_retention, GreedyObjective(in, N), kTol);
      EXPECT_NEAR(r->average_retention * in.layers.size(), r->total_retention, kTol);
      ++checked;
    }
  }
  EXPECT_GT(checked, 5000);
}

TEST(BudgetSolverTest, RetentionModeIsMinimalOnRandomInstances) {
  std::mt19937 rng(77);
  int reachable = 0, unreachable = 0;
  for (int trial = 0; trial < 1500; ++trial) {
    const Instance in = RandomInstance(rng);
    const std::vector<double> best = BestByTotal(in);
    const double L = static_cast<double>(in.layers.size());
    const double need_slack = L * 1e-12;
    for (double R : {1.0, 0.999, 0.9, 0.75, 0.5, 0.3, 0.1, 0.01,
                     std::uniform_real_distribution<double>(1e-6, 1.0)(rng)}) {
      auto r = SolveForRetention(in.layers, R, in.options);
      ASSERT_TRUE(r.ok()) << r.status();
      ExpectWithinBounds(in, *r);
      const double need = L * R - need_slack;
      int64_t minimal = -1;
      for (size_t n = 0; n < best.size() && minimal < 0; ++n) {
        if (best[n] != kNegInf && best[n] >= need) minimal = static_cast<int64_t>(n);
      }
      if (minimal < 0) {
        EXPECT_FALSE(r->reachable);
        EXPECT_EQ(r->budgets, in.hi);
        ++unreachable;
        continue;
      }
      ++reachable;
      EXPECT_TRUE(r->reachable);
      EXPECT_GE(r->total_retention, need);
      EXPECT_EQ(r->total_tokens, minimal) << "trial " << trial << " R " << R;
      // One token fewer in total cannot reach the target (by exhaustive DP).
      if (minimal > 0 && best[minimal - 1] != kNegInf) {
        EXPECT_LT(best[minimal - 1], need);
      }
    }
  }
  EXPECT_GT(reachable, 5000);
  EXPECT_GT(unreachable, 100);
}

TEST(BudgetSolverTest, BytesModeAgainstDp) {
  std::mt19937 rng(99);
  int exact = 0;
  for (int trial = 0; trial < 1200; ++trial) {
    const Instance in = RandomInstance(rng);
    std::vector<int64_t> bytes(in.layers.size());
    for (int64_t& b : bytes) b = 1 + rng() % 3;
    int64_t floor_bytes = 0, ceil_bytes = 0;
    for (size_t l = 0; l < bytes.size(); ++l) {
      floor_bytes += bytes[l] * in.lo[l];
      ceil_bytes += bytes[l] * in.hi[l];
    }
    for (int64_t M = floor_bytes; M <= ceil_bytes + 2; ++M) {
      auto r = SolveForBytes(in.layers, bytes, M, in.options);
      ASSERT_TRUE(r.ok()) << r.status();
      ExpectWithinBounds(in, *r);
      EXPECT_LE(r->total_bytes, M);
      const double opt = BestByBytes(in, bytes, M);
      EXPECT_LE(r->total_retention, opt + kTol);
      EXPECT_GE(r->total_retention + r->optimality_gap_bound, opt - kTol) << "trial " << trial;
      if (r->optimality_gap_bound == 0.0) {
        EXPECT_NEAR(r->total_retention, opt, kTol);
        ++exact;
      }
    }
  }
  EXPECT_GT(exact, 1000);
}

TEST(BudgetSolverTest, EqualBytesReducesToTotalTokens) {
  std::mt19937 rng(5);
  for (int trial = 0; trial < 300; ++trial) {
    const Instance in = RandomInstance(rng);
    const int64_t beta = 1 + rng() % 4;
    const std::vector<int64_t> bytes(in.layers.size(), beta);
    const int64_t lo = std::accumulate(in.lo.begin(), in.lo.end(), int64_t{0});
    const int64_t hi = std::accumulate(in.hi.begin(), in.hi.end(), int64_t{0});
    for (int64_t M = lo * beta; M <= hi * beta + beta; ++M) {
      auto r = SolveForBytes(in.layers, bytes, M, in.options);
      ASSERT_TRUE(r.ok());
      auto a = SolveForTotalTokens(in.layers, std::min(M / beta, hi), in.options);
      ASSERT_TRUE(a.ok());
      EXPECT_EQ(r->budgets, a->budgets);
      EXPECT_EQ(r->optimality_gap_bound, 0.0);
      EXPECT_EQ(r->total_bytes, a->total_tokens * beta);
    }
  }
}

TEST(BudgetSolverTest, LargeRealValuedInstanceMatchesGreedy) {
  std::mt19937 rng(11);
  Instance in;
  for (int l = 0; l < 32; ++l) {
    std::vector<float> scores(2 * 1500);
    std::exponential_distribution<float> expo(0.5f + l % 7);
    for (float& s : scores) s = std::pow(expo(rng), 1.0f + l % 5);
    in.layers.push_back(BuildLayerProfile(scores, 2, 1500).value());
    in.lo.push_back(0);
    in.hi.push_back(1500);
  }
  for (int64_t N : {1, 100, 4800, 24000, 47999, 48000}) {
    auto r = SolveForTotalTokens(in.layers, N);
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r->total_tokens, N);
    EXPECT_NEAR(r->total_retention, GreedyObjective(in, N), 1e-9);
  }
}

TEST(BudgetSolverTest, AllTiesAreBrokenByLayerIndex) {
  std::vector<LayerProfile> layers;
  for (int l = 0; l < 3; ++l)
    layers.push_back(LayerProfileFromGains({0.25, 0.25, 0.25, 0.25}).value());
  auto r = SolveForTotalTokens(layers, 6);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->budgets, (std::vector<int64_t>{4, 2, 0}));
  auto q = SolveForRetention(layers, 0.5);
  ASSERT_TRUE(q.ok());
  EXPECT_EQ(q->budgets, (std::vector<int64_t>{4, 2, 0}));
  EXPECT_NEAR(q->average_retention, 0.5, 1e-15);
}

TEST(BudgetSolverTest, ConcentratedLayerGetsFewerTokens) {
  std::vector<LayerProfile> layers = {LayerProfileFromGains({0.9, 0.05, 0.03, 0.02}).value(),
                                      LayerProfileFromGains({0.3, 0.3, 0.2, 0.2}).value()};
  auto r = SolveForTotalTokens(layers, 4);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->budgets, (std::vector<int64_t>{1, 3}));
}

TEST(BudgetSolverTest, UnreachableRetentionReturnsCeilings) {
  std::vector<LayerProfile> layers = {LayerProfileFromGains({0.5, 0.3, 0.2}).value(),
                                      LayerProfileFromGains({0.6, 0.4}).value()};
  SolverOptions o;
  o.ceilings = {2, 1};
  auto r = SolveForRetention(layers, 0.95, o);
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(r->reachable);
  EXPECT_EQ(r->budgets, (std::vector<int64_t>{2, 1}));
  EXPECT_NEAR(r->average_retention, (0.8 + 0.6) / 2, 1e-15);
  auto full = SolveForRetention(layers, 1.0);
  ASSERT_TRUE(full.ok());
  EXPECT_TRUE(full->reachable);
  EXPECT_EQ(full->budgets, (std::vector<int64_t>{3, 2}));
}

void ExpectInvalid(const absl::Status& s, const std::string& fragment) {
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find(fragment), std::string::npos) << s.message();
}

TEST(BudgetSolverTest, RejectsBadInputs) {
  std::vector<LayerProfile> layers = {LayerProfileFromGains({0.5, 0.3, 0.2}).value(),
                                      LayerProfileFromGains({0.6, 0.4, 0.0}).value()};
  SolverOptions o;
  o.floors = {1, 1};
  o.ceilings = {3, 2};
  ExpectInvalid(SolveForTotalTokens(layers, 1, o).status(), "total tokens 1 must be in [2, 5]");
  ExpectInvalid(SolveForTotalTokens(layers, 6, o).status(), "total tokens 6 must be in [2, 5]");
  ExpectInvalid(SolveForTotalTokens(layers, -1).status(), "[0, 6]");
  ExpectInvalid(SolveForRetention(layers, 0.0).status(), "retention target 0 must be in (0, 1]");
  ExpectInvalid(SolveForRetention(layers, 1.5).status(), "1.5 must be in (0, 1]");
  ExpectInvalid(SolveForRetention(layers, std::nan("")).status(), "must be in (0, 1]");
  ExpectInvalid(SolveForBytes(layers, std::vector<int64_t>{4, 8}, 11, o).status(),
                "KV bytes 11 must be >= 12");
  ExpectInvalid(SolveForBytes(layers, std::vector<int64_t>{4}, 100).status(), "one per layer");
  ExpectInvalid(SolveForBytes(layers, std::vector<int64_t>{4, 0}, 100).status(), "must be >= 1");
  ExpectInvalid(SolveForTotalTokens({}, 0).status(), "no layers");
  SolverOptions bad;
  bad.floors = {2, 0};
  bad.ceilings = {1, 3};
  ExpectInvalid(SolveForTotalTokens(layers, 2, bad).status(), "layer 0 floor 2 and ceiling 1");
  bad.floors = {0, 0};
  bad.ceilings = {3, 4};
  ExpectInvalid(SolveForTotalTokens(layers, 2, bad).status(), "ceiling 4");
  bad.floors = {-1, 0};
  bad.ceilings = {};
  ExpectInvalid(SolveForTotalTokens(layers, 2, bad).status(), "floor -1");
  bad.floors = {0};
  ExpectInvalid(SolveForTotalTokens(layers, 2, bad).status(), "one entry per layer");
}

}  // namespace
}  // namespace xkv
