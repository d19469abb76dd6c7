#include "allocator/budget_solver.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <numeric>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace xkv {
namespace {

// Validated problem: per-layer bounds and weights (1 per token, or bytes per token).
struct Problem {
  absl::Span<const LayerProfile> layers;
  std::vector<int64_t> floors;
  std::vector<int64_t> ceilings;
  std::vector<double> weight;  // density of slot k in layer l is gain[k] / weight[l]
  int64_t size() const { return static_cast<int64_t>(layers.size()); }
};

absl::StatusOr<Problem> MakeProblem(absl::Span<const LayerProfile> layers, const SolverOptions& o) {
  const int64_t L = static_cast<int64_t>(layers.size());
  if (L == 0) return absl::InvalidArgumentError("budget solver: no layers");
  if ((!o.floors.empty() && static_cast<int64_t>(o.floors.size()) != L) ||
      (!o.ceilings.empty() && static_cast<int64_t>(o.ceilings.size()) != L)) {
    return absl::InvalidArgumentError(
        absl::StrCat("budget solver: floors (", o.floors.size(), ") and ceilings (",
                     o.ceilings.size(), ") must be empty or have one entry per layer (", L, ")"));
  }
  Problem p{layers, {}, {}, std::vector<double>(L, 1.0)};
  for (int64_t l = 0; l < L; ++l) {
    const LayerProfile& lp = layers[l];
    const int64_t P = static_cast<int64_t>(lp.gain.size());
    if (lp.retention.size() != lp.gain.size() + 1 ||
        (P > 0 && !(lp.gain[0] < std::numeric_limits<double>::infinity() && lp.gain[P - 1] >= 0))) {
      return absl::InvalidArgumentError(
          absl::StrCat("budget solver: layer ", l, " has a malformed profile (", P, " gains, ",
                       lp.retention.size(), " retention entries; gains must be finite and >= 0)"));
    }
    const int64_t lo = o.floors.empty() ? 0 : o.floors[l];
    const int64_t hi = o.ceilings.empty() ? P : o.ceilings[l];
    if (lo < 0 || lo > hi || hi > P) {
      return absl::InvalidArgumentError(
          absl::StrCat("budget solver: layer ", l, " floor ", lo, " and ceiling ", hi,
                       " must satisfy 0 <= floor <= ceiling <= P = ", P));
    }
    p.floors.push_back(lo);
    p.ceilings.push_back(hi);
  }
  return p;
}

int64_t Sum(const std::vector<int64_t>& v) {
  return std::accumulate(v.begin(), v.end(), int64_t{0});
}

double Retention(const Problem& p, const std::vector<int64_t>& b) {
  double r = 0.0;
  for (int64_t l = 0; l < p.size(); ++l) r += p.layers[l].retention[b[l]];
  return r;
}

BudgetResult MakeResult(const Problem& p, std::vector<int64_t> b) {
  BudgetResult r;
  r.total_tokens = Sum(b);
  r.total_retention = Retention(p, b);
  r.average_retention = r.total_retention / static_cast<double>(p.size());
  r.budgets = std::move(b);
  return r;
}

// #{k in [lo, hi) : gain[k] / w >= lambda} + lo, for a non-increasing curve whose answer is
// known to lie in [lo, hi].
int64_t CountAtLeast(const std::vector<double>& gain, double w, int64_t lo, int64_t hi,
                     double lambda) {
  auto it = std::partition_point(gain.begin() + lo, gain.begin() + hi,
                                 [&](double g) { return g / w >= lambda; });
  return it - gain.begin();
}

// Result of the threshold search: lambda* and, per layer, the raw (unclamped) counts of slots
// with density >= lambda* (`at`) and > lambda* (`above`).
struct Threshold {
  double lambda = 0.0;
  std::vector<int64_t> at;
  std::vector<int64_t> above;
};

std::vector<int64_t> Clamp(const Problem& p, const std::vector<int64_t>& raw) {
  std::vector<int64_t> b(raw.size());
  for (size_t l = 0; l < raw.size(); ++l) b[l] = std::clamp(raw[l], p.floors[l], p.ceilings[l]);
  return b;
}

// Largest lambda >= 0 with accept(b(lambda)) true. Requires accept monotone (true for small
// lambda), accept(b(0)) true, and accept false above the largest density.
template <typename Accept>
Threshold FindThreshold(const Problem& p, Accept accept) {
  const int64_t L = p.size();
  double max_density = 0.0;
  Threshold t;
  t.at.resize(L);
  t.above.assign(L, 0);
  for (int64_t l = 0; l < L; ++l) {
    const auto& g = p.layers[l].gain;
    t.at[l] = static_cast<int64_t>(g.size());  // count at lambda = 0
    if (!g.empty()) max_density = std::max(max_density, g[0] / p.weight[l]);
  }
  uint64_t lo = 0;                                         // bits of 0.0: accepted
  uint64_t hi = std::bit_cast<uint64_t>(max_density) + 1;  // above every density: rejected
  std::vector<int64_t> raw(L);
  while (hi - lo > 1) {
    const uint64_t mid = lo + (hi - lo) / 2;
    const double lambda = std::bit_cast<double>(mid);
    for (int64_t l = 0; l < L; ++l) {
      raw[l] = CountAtLeast(p.layers[l].gain, p.weight[l], t.above[l], t.at[l], lambda);
    }
    if (accept(Clamp(p, raw))) {
      lo = mid;
      t.at.swap(raw);
    } else {
      hi = mid;
      t.above.swap(raw);
    }
  }
  t.lambda = std::bit_cast<double>(lo);
  return t;
}

// Budgets at the threshold's strict level plus the first `ties` tied slots in layer order.
std::vector<int64_t> FillTies(const Problem& p, const Threshold& t, int64_t ties) {
  std::vector<int64_t> b = Clamp(p, t.above);
  const std::vector<int64_t> at = Clamp(p, t.at);
  for (int64_t l = 0; l < p.size() && ties > 0; ++l) {
    const int64_t add = std::min(ties, at[l] - b[l]);
    b[l] += add;
    ties -= add;
  }
  return b;
}

}  // namespace

absl::StatusOr<BudgetResult> SolveForTotalTokens(absl::Span<const LayerProfile> layers,
                                                 int64_t total_tokens,
                                                 const SolverOptions& options) {
  ASSIGN_OR_RETURN(Problem p, MakeProblem(layers, options));
  const int64_t lo = Sum(p.floors), hi = Sum(p.ceilings);
  if (total_tokens < lo || total_tokens > hi) {
    return absl::InvalidArgumentError(absl::StrCat("total tokens ", total_tokens, " must be in [",
                                                   lo, ", ", hi,
                                                   "] (sum of layer floors, sum of ceilings)"));
  }
  if (total_tokens == lo) return MakeResult(p, p.floors);
  const Threshold t =
      FindThreshold(p, [&](const std::vector<int64_t>& b) { return Sum(b) >= total_tokens; });
  return MakeResult(p, FillTies(p, t, total_tokens - Sum(Clamp(p, t.above))));
}

absl::StatusOr<BudgetResult> SolveForRetention(absl::Span<const LayerProfile> layers,
                                               double average_retention,
                                               const SolverOptions& options) {
  if (!(average_retention > 0.0 && average_retention <= 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("retention target ", average_retention, " must be in (0, 1]"));
  }
  ASSIGN_OR_RETURN(Problem p, MakeProblem(layers, options));
  const double L = static_cast<double>(p.size());
  const double need = L * average_retention - L * options.retention_slack;
  auto met = [&](const std::vector<int64_t>& b) { return Retention(p, b) >= need; };
  if (!met(p.ceilings)) {
    BudgetResult r = MakeResult(p, p.ceilings);
    r.reachable = false;
    return r;
  }
  if (met(p.floors)) return MakeResult(p, p.floors);
  const Threshold t = FindThreshold(p, met);
  // Smallest number of tied slots (handed out in layer order) that meets the target.
  int64_t lo = 0, hi = Sum(Clamp(p, t.at)) - Sum(Clamp(p, t.above));  // met(hi), !met(lo)
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    (met(FillTies(p, t, mid)) ? hi : lo) = mid;
  }
  return MakeResult(p, FillTies(p, t, hi));
}

namespace {

// Greedy top-up of `leftover` bytes: repeatedly the next slot with the best gain per byte that
// still fits (ties: lower layer). Returns the gain added.
double TopUp(const Problem& p, absl::Span<const int64_t> bytes, int64_t max_steps,
             std::vector<int64_t>& b, int64_t& leftover) {
  double added = 0.0;
  for (int64_t step = 0; step < max_steps; ++step) {
    int64_t best = -1;
    double best_density = -1.0;
    for (int64_t l = 0; l < p.size(); ++l) {
      if (b[l] >= p.ceilings[l] || bytes[l] > leftover) continue;
      const double d = p.layers[l].gain[b[l]] / p.weight[l];
      if (d > best_density) best = l, best_density = d;
    }
    if (best < 0) break;
    added += p.layers[best].gain[b[best]];
    ++b[best];
    leftover -= bytes[best];
  }
  return added;
}

int64_t Bytes(absl::Span<const int64_t> bytes, const std::vector<int64_t>& b) {
  int64_t s = 0;
  for (size_t l = 0; l < b.size(); ++l) s += bytes[l] * b[l];
  return s;
}

}  // namespace

absl::StatusOr<BudgetResult> SolveForBytes(absl::Span<const LayerProfile> layers,
                                           absl::Span<const int64_t> bytes_per_token,
                                           int64_t total_bytes, const SolverOptions& options) {
  ASSIGN_OR_RETURN(Problem p, MakeProblem(layers, options));
  if (static_cast<int64_t>(bytes_per_token.size()) != p.size()) {
    return absl::InvalidArgumentError(absl::StrCat("bytes per token has ", bytes_per_token.size(),
                                                   " entries, expected one per layer (", p.size(),
                                                   ")"));
  }
  for (int64_t l = 0; l < p.size(); ++l) {
    if (bytes_per_token[l] < 1) {
      return absl::InvalidArgumentError(absl::StrCat("bytes per token of layer ", l, " is ",
                                                     bytes_per_token[l], ", must be >= 1"));
    }
    p.weight[l] = static_cast<double>(bytes_per_token[l]);
  }
  const int64_t floor_bytes = Bytes(bytes_per_token, p.floors);
  if (total_bytes < floor_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "KV bytes ", total_bytes, " must be >= ", floor_bytes, " (the layer floors' bytes)"));
  }
  BudgetResult r;
  if (Bytes(bytes_per_token, p.ceilings) <= total_bytes) {
    r = MakeResult(p, p.ceilings);
  } else if (std::all_of(bytes_per_token.begin(), bytes_per_token.end(),
                         [&](int64_t x) { return x == bytes_per_token[0]; })) {
    ASSIGN_OR_RETURN(r, SolveForTotalTokens(layers, total_bytes / bytes_per_token[0], options));
  } else {
    // accept = "overflows M"; lambda* is the largest density level that does not fit completely.
    const Threshold t = FindThreshold(
        p, [&](const std::vector<int64_t>& b) { return Bytes(bytes_per_token, b) > total_bytes; });
    std::vector<int64_t> b = Clamp(p, t.above);
    const std::vector<int64_t> at = Clamp(p, t.at);
    int64_t leftover = total_bytes - Bytes(bytes_per_token, b);
    for (int64_t l = 0; l < p.size(); ++l) {
      const int64_t add = std::min(at[l] - b[l], leftover / bytes_per_token[l]);
      b[l] += add;
      leftover -= add * bytes_per_token[l];
    }
    const double bound = t.lambda * static_cast<double>(leftover);
    const double added = TopUp(p, bytes_per_token, options.max_fill_steps, b, leftover);
    r = MakeResult(p, std::move(b));
    r.optimality_gap_bound = std::max(0.0, bound - added);
  }
  r.total_bytes = Bytes(bytes_per_token, r.budgets);
  return r;
}

}  // namespace xkv
