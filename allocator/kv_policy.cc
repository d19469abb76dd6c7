#include "allocator/kv_policy.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <numeric>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "allocator/kv_spec.h"
#include "base/status_macros.h"

namespace xkv {
namespace {

constexpr std::pair<PolicyKind, absl::string_view> kPolicyNames[] = {
    {PolicyKind::kFull, "full"},     {PolicyKind::kStreaming, "streaming"},
    {PolicyKind::kSnapKv, "snapkv"}, {PolicyKind::kPyramidKv, "pyramidkv"},
    {PolicyKind::kXkv, "xkv"},
};

}  // namespace

absl::StatusOr<PolicyKind> ParsePolicy(absl::string_view name) {
  const std::string lower = absl::AsciiStrToLower(name);
  for (const auto& [kind, text] : kPolicyNames) {
    if (lower == text) return kind;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown KV policy '", name, "'; allowed: full, streaming, snapkv, pyramidkv, xkv"));
}

absl::string_view PolicyName(PolicyKind kind) {
  for (const auto& [k, text] : kPolicyNames) {
    if (k == kind) return text;
  }
  return "unknown";
}

absl::StatusOr<ProfileMode> ParseProfileMode(absl::string_view text) {
  if (text == "per_request") return ProfileMode{ProfileModeKind::kPerRequest, 1.0};
  if (text == "one_pass") return ProfileMode{ProfileModeKind::kOnePass, 1.0};
  if (text == "reconstruct") return ProfileMode{ProfileModeKind::kReconstruct, 1.0};
  absl::string_view rate_text = text;
  if (absl::ConsumePrefix(&rate_text, "sampled:")) {
    double rate = 0.0;
    if (!absl::SimpleAtod(rate_text, &rate) || !(rate > 0.0 && rate <= 1.0)) {
      return absl::InvalidArgumentError(absl::StrCat("profile mode '", text, "': sample rate '",
                                                     rate_text, "' must be a number in (0, 1]"));
    }
    return ProfileMode{ProfileModeKind::kSampled, rate};
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown profile mode '", text,
                   "'; allowed: per_request, one_pass, sampled:<rate in (0, 1]>, reconstruct"));
}

std::string ProfileModeName(const ProfileMode& mode) {
  switch (mode.kind) {
    case ProfileModeKind::kPerRequest:
      return "per_request";
    case ProfileModeKind::kOnePass:
      return "one_pass";
    case ProfileModeKind::kSampled:
      return absl::StrCat("sampled:", mode.sample_rate);
    case ProfileModeKind::kReconstruct:
      return "reconstruct";
  }
  return "unknown";
}

std::vector<int64_t> RoundBudgetsToTotal(absl::Span<const double> weights, int64_t total,
                                         int64_t cap) {
  const size_t L = weights.size();
  std::vector<double> x(L, 0.0);
  std::vector<bool> capped(L, false);
  // Water-filling: scale the uncapped weights to the remaining total; cap any that overflow.
  for (size_t round = 0; round <= L; ++round) {
    double remaining = static_cast<double>(total), mass = 0.0;
    size_t free = 0;
    for (size_t l = 0; l < L; ++l) {
      if (capped[l])
        remaining -= static_cast<double>(cap);
      else
        mass += weights[l], ++free;
    }
    if (free == 0) break;
    bool changed = false;
    for (size_t l = 0; l < L; ++l) {
      if (capped[l]) continue;
      x[l] = mass > 0.0 ? remaining * weights[l] / mass : remaining / static_cast<double>(free);
      if (x[l] > static_cast<double>(cap)) capped[l] = changed = true;
    }
    if (!changed) break;
  }
  std::vector<int64_t> b(L);
  std::vector<size_t> order(L);
  int64_t left = total;
  for (size_t l = 0; l < L; ++l) {
    x[l] = capped[l] ? static_cast<double>(cap) : std::clamp(x[l], 0.0, static_cast<double>(cap));
    b[l] = static_cast<int64_t>(std::floor(x[l]));
    left -= b[l];
    order[l] = l;
  }
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t c) {
    return x[a] - std::floor(x[a]) > x[c] - std::floor(x[c]);
  });
  // Largest remainder; repeated passes only absorb floating-point drift.
  while (left != 0) {
    bool moved = false;
    for (size_t i = 0; i < L && left != 0; ++i) {
      const size_t l = left > 0 ? order[i] : order[L - 1 - i];
      if (left > 0 && b[l] < cap)
        ++b[l], --left, moved = true;
      else if (left < 0 && b[l] > 0)
        --b[l], ++left, moved = true;
    }
    if (!moved) break;  // total outside [0, L*cap]: caller's precondition
  }
  return b;
}

double AverageRetention(absl::Span<const LayerProfile> profiles, absl::Span<const int64_t> budgets,
                        AllocatorKind allocator) {
  const size_t L = std::min(profiles.size(), budgets.size());
  if (L == 0) return 1.0;
  double kept = 0.0, mass = 0.0;
  for (size_t l = 0; l < L; ++l) {
    const std::vector<double>& ret = profiles[l].retention;
    const int64_t b = std::clamp<int64_t>(budgets[l], 0, static_cast<int64_t>(ret.size()) - 1);
    const double r = ret.empty() ? 1.0 : ret[b];
    const double w = allocator != AllocatorKind::kPaper ? profiles[l].total_mass : 1.0;
    kept += w * r;
    mass += w;
  }
  return mass > 0.0 ? kept / mass : 1.0;
}

AllocatorKind RetentionDefinition(const PolicyOptions& policy) {
  return policy.kind == PolicyKind::kXkv ? policy.allocator.kind : AllocatorKind::kPaper;
}

namespace {

// The k-th largest of x[0, n) (1 <= k <= n). Finite non-negative rows (pooled scores) use a radix
// select on the bit patterns, which order like the values (3 histogram passes, O(n)); any other
// row falls back to std::nth_element. -0 and +0 are the same value either way.
float KthLargest(const float* x, int64_t n, int64_t k) {
  bool plain = n >= 256;
  for (int64_t i = 0; plain && i < n; ++i) plain = std::isfinite(x[i]) && x[i] >= 0.0f;
  if (!plain) {
    std::vector<float> v(x, x + n);
    std::nth_element(v.begin(), v.begin() + (k - 1), v.end(), std::greater<float>());
    return v[k - 1];
  }
  uint32_t prefix = 0, mask = 0;
  for (const auto [shift, bits] : {std::pair{21, 11}, std::pair{10, 11}, std::pair{0, 10}}) {
    const uint32_t digit_mask = (1u << bits) - 1;
    std::vector<int64_t> count(digit_mask + 1, 0);
    for (int64_t i = 0; i < n; ++i) {
      uint32_t key;
      std::memcpy(&key, &x[i], sizeof(key));
      key &= 0x7fffffffu;  // -0 -> +0
      if ((key & mask) == prefix) ++count[(key >> shift) & digit_mask];
    }
    uint32_t d = digit_mask;
    while (count[d] < k) k -= count[d--];  // the k-th largest lies in digit d
    prefix |= d << shift;
    mask |= digit_mask << shift;
  }
  float out;
  std::memcpy(&out, &prefix, sizeof(out));
  return out;
}

}  // namespace

absl::StatusOr<std::vector<std::vector<int64_t>>> SelectKeptTokens(absl::Span<const float> scores,
                                                                   int heads, int64_t prefix_len,
                                                                   int64_t budget,
                                                                   SelectionRule rule,
                                                                   int sink_tokens, double recent) {
  if (heads < 1 || prefix_len < 0 || budget < 0 || budget > prefix_len || sink_tokens < 0 ||
      !(recent >= 0.0 && recent <= 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("select kept tokens: budget ", budget,
                     " must be in [0, prefix_len=", prefix_len, "], heads ", heads,
                     " >= 1, sink_tokens ", sink_tokens, " >= 0, recent ", recent, " in [0, 1]"));
  }
  if ((rule == SelectionRule::kTopScore || rule == SelectionRule::kSinksAndTopScore) &&
      static_cast<int64_t>(scores.size()) != heads * prefix_len) {
    return absl::InvalidArgumentError(
        absl::StrCat("select kept tokens: ", scores.size(),
                     " scores, expected heads*prefix_len = ", heads * prefix_len));
  }
  std::vector<std::vector<int64_t>> kept(heads);
  for (int h = 0; h < heads; ++h) {
    std::vector<int64_t>& out = kept[h];
    if (rule == SelectionRule::kAll) {
      out.resize(prefix_len);
      std::iota(out.begin(), out.end(), int64_t{0});
    } else if (rule == SelectionRule::kSinksAndRecent) {
      const int64_t sinks = std::min<int64_t>(sink_tokens, budget);
      for (int64_t j = 0; j < sinks; ++j) out.push_back(j);
      for (int64_t j = prefix_len - (budget - sinks); j < prefix_len; ++j) out.push_back(j);
    } else {
      // kSinksAndTopScore: the first `sinks` slots unconditionally, the rest ranked among
      // [sinks, P). Ranking: the k-th largest score v (a selection over the values, not an index
      // sort), then one pass in slot order: every score above v, and the lowest slots among
      // those equal to v until k are kept (ties: lower slot first). O(P) per head.
      // With `recent`, the last r prefix slots are kept too and ranking covers [sinks, P - r).
      const int64_t sinks =
          rule == SelectionRule::kSinksAndTopScore ? std::min<int64_t>(sink_tokens, budget) : 0;
      const int64_t r =
          static_cast<int64_t>(std::floor(recent * static_cast<double>(budget - sinks)));
      out.reserve(budget);
      for (int64_t j = 0; j < sinks; ++j) out.push_back(j);
      const int64_t k = budget - sinks - r, n = prefix_len - sinks - r;
      if (k > 0) {
        const float* row = scores.data() + h * prefix_len + sinks;
        const float v = KthLargest(row, n, k);
        int64_t ties = k;
        for (int64_t j = 0; j < n; ++j) ties -= row[j] > v;
        for (int64_t j = 0; j < n; ++j) {
          if (row[j] > v || (row[j] == v && ties-- > 0)) out.push_back(sinks + j);
        }
      }
      for (int64_t j = prefix_len - r; j < prefix_len; ++j) out.push_back(j);
    }
  }
  return kept;
}

namespace {

absl::Status CheckInput(const PolicyInput& in, const BudgetTarget& target, bool needs_profile) {
  if (in.num_layers < 1 || in.prefix_len < 0) {
    return absl::InvalidArgumentError(absl::StrCat("KV policy: num_layers ", in.num_layers,
                                                   " must be >= 1 and prefix_len ", in.prefix_len,
                                                   " >= 0"));
  }
  if (!in.profiles.empty() && static_cast<int>(in.profiles.size()) != in.num_layers) {
    return absl::InvalidArgumentError(absl::StrCat("KV policy: ", in.profiles.size(),
                                                   " profiles for ", in.num_layers, " layers"));
  }
  if (needs_profile && in.profiles.empty()) {
    return absl::InvalidArgumentError("KV policy xkv needs one importance profile per layer");
  }
  if (target.kind == BudgetTarget::Kind::kBytes &&
      static_cast<int>(in.bytes_per_token.size()) != in.num_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV policy: a byte target needs bytes per token for each of the ",
                     in.num_layers, " layers (got ", in.bytes_per_token.size(), ")"));
  }
  return absl::OkStatus();
}

void Finish(const PolicyInput& in, SelectionRule rule, AllocatorKind allocator,
            PolicyBudgets& out) {
  out.rule = rule;
  out.total_tokens = std::accumulate(out.budgets.begin(), out.budgets.end(), int64_t{0});
  out.total_bytes = 0;
  if (static_cast<int>(in.bytes_per_token.size()) == in.num_layers) {
    for (int l = 0; l < in.num_layers; ++l)
      out.total_bytes += in.bytes_per_token[l] * out.budgets[l];
  }
  if (!in.profiles.empty() && rule != SelectionRule::kSinksAndRecent) {
    out.average_retention = AverageRetention(in.profiles, out.budgets, allocator);
  }
}

// PyramidKV's shape (Cai et al. 2024, pyramidkv_utils.py): with the average a = N/L per layer,
// b_min = a / beta and b_max = 2a - b_min (so the mean is a); if b_max exceeds the prefix, b_max =
// P and b_min = 2a - P. Layer l (0 = bottom) gets b_max - l (b_max - b_min) / (L - 1). Their code
// floors every step; here the real values are rounded by largest remainder so the total is
// exactly N.
std::vector<double> PyramidWeights(int64_t total, int L, int64_t P, double beta) {
  if (L == 1 || total == 0) return std::vector<double>(L, 1.0);
  const double a = static_cast<double>(total) / L;
  double b_min = a / beta, b_max = 2.0 * a - b_min;
  if (b_max > static_cast<double>(P)) {
    b_max = static_cast<double>(P);
    b_min = 2.0 * a - b_max;
  }
  std::vector<double> x(L);
  for (int l = 0; l < L; ++l) x[l] = std::max(0.0, b_max - l * (b_max - b_min) / (L - 1));
  return x;
}

absl::StatusOr<std::vector<LayerProfile>> RawCurves(absl::Span<const LayerProfile> profiles,
                                                    absl::Span<const double> weights = {});
absl::StatusOr<std::vector<LayerProfile>> HeadProfiles(absl::Span<const LayerProfile> profiles);

// AdaKV's split of each layer's budget over its KV heads (Feng et al. 2024, kvpress's AdaKVPress):
// layer l keeps H * b_l head tokens, the top ones across its heads' scores (one threshold per
// layer: the exact solver over the layer's H curves), each head at least floor(alpha * b_l) and at
// most P. The layer's budget itself is not changed. Fills head_budgets and sets budgets[l] to the
// layer's largest head budget; average_retention is the mean over layers of each layer's kept
// share of its score mass.
absl::Status SplitLayersOverHeads(const PolicyInput& in, double alpha, PolicyBudgets& out) {
  ASSIGN_OR_RETURN(const std::vector<LayerProfile> heads, HeadProfiles(in.profiles));
  const int H = in.profiles[0].heads;
  out.head_budgets.assign(in.num_layers, std::vector<int64_t>(H));
  double retention = 0.0;
  for (int l = 0; l < in.num_layers; ++l) {
    const absl::Span<const LayerProfile> layer =
        absl::MakeConstSpan(heads).subspan(static_cast<size_t>(l) * H, H);
    ASSIGN_OR_RETURN(const std::vector<LayerProfile> curves, RawCurves(layer));
    const int64_t b = out.budgets[l];
    SolverOptions bounds;
    bounds.floors.assign(
        H, std::min<int64_t>(in.prefix_len, static_cast<int64_t>(std::floor(alpha * b))));
    bounds.ceilings.assign(H, in.prefix_len);
    ASSIGN_OR_RETURN(const BudgetResult r, SolveForTotalTokens(curves, b * H, bounds));
    out.head_budgets[l] = r.budgets;
    out.budgets[l] = *std::max_element(r.budgets.begin(), r.budgets.end());
    retention += AverageRetention(layer, r.budgets, AllocatorKind::kGlobal);
  }
  out.average_retention = retention / in.num_layers;
  return absl::OkStatus();
}

class BaselinePolicy : public KvPolicy {
 public:
  explicit BaselinePolicy(const PolicyOptions& options) : options_(options) {}
  PolicyKind kind() const override { return options_.kind; }
  bool needs_profile() const override { return false; }
  SelectionRule selection() const override {
    switch (options_.kind) {
      case PolicyKind::kFull:
        return SelectionRule::kAll;
      case PolicyKind::kStreaming:
        return SelectionRule::kSinksAndRecent;
      default:
        return SelectionRule::kTopScore;
    }
  }

  absl::StatusOr<PolicyBudgets> Budgets(const PolicyInput& in,
                                        const BudgetTarget& target) const override {
    RETURN_IF_ERROR(CheckInput(in, target, false));
    PolicyBudgets out;
    const int64_t max_total = in.num_layers * in.prefix_len;
    if (options_.kind == PolicyKind::kFull) {
      out.budgets.assign(in.num_layers, in.prefix_len);
    } else if (target.kind == BudgetTarget::Kind::kRetention) {
      // A baseline here: the rule and its one error text live in allocator/kv_spec.
      RETURN_IF_ERROR(ValidatePolicyTarget(options_.kind, KvTarget::Retention(target.retention)));
      return absl::InternalError("a baseline took a retention target");
    } else if (target.kind == BudgetTarget::Kind::kTotalTokens) {
      if (target.total_tokens < 0 || target.total_tokens > max_total) {
        return absl::InvalidArgumentError(absl::StrCat("total tokens ", target.total_tokens,
                                                       " must be in [0, ", max_total,
                                                       "] (layers x prefix length)"));
      }
      out.budgets = Shape(target.total_tokens, in);
    } else {
      if (target.total_bytes < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("KV bytes ", target.total_bytes, " must be >= 0"));
      }
      // Largest total whose shape fits the bytes.
      int64_t lo = 0, hi = max_total + 1;
      while (hi - lo > 1) {
        const int64_t mid = lo + (hi - lo) / 2;
        (Bytes(Shape(mid, in), in) <= target.total_bytes ? lo : hi) = mid;
      }
      out.budgets = Shape(lo, in);
    }
    Finish(in, selection(), RetentionDefinition(options_), out);
    if (options_.allocator.per_head && selection() == SelectionRule::kTopScore) {
      if (in.profiles.empty()) {
        return absl::InvalidArgumentError(
            "per-head budgets (AdaKV) need one importance profile per layer");
      }
      RETURN_IF_ERROR(SplitLayersOverHeads(in, options_.allocator.floor, out));
    }
    return out;
  }

 private:
  std::vector<int64_t> Shape(int64_t total, const PolicyInput& in) const {
    const std::vector<double> w =
        options_.kind == PolicyKind::kPyramidKv
            ? PyramidWeights(total, in.num_layers, in.prefix_len, options_.pyramid_beta)
            : std::vector<double>(in.num_layers, 1.0);
    return RoundBudgetsToTotal(w, total, in.prefix_len);
  }
  static int64_t Bytes(const std::vector<int64_t>& b, const PolicyInput& in) {
    int64_t s = 0;
    for (size_t l = 0; l < b.size(); ++l) s += b[l] * in.bytes_per_token[l];
    return s;
  }

  PolicyOptions options_;
};

// The global allocator's curves: each layer's gains times its own mass S_l (the raw scores'
// column sums, comparable across layers), scaled by L / sum_l S_l so that a retention target R
// means "keep the fraction R of all layers' score mass" (sum_l R_l = L when everything is kept).
// With weights ([curves], empty = none) curve i's mass counts w_i times: w_i S_i everywhere, so a
// retention target keeps that share of the weighted mass.
absl::StatusOr<std::vector<LayerProfile>> RawCurves(absl::Span<const LayerProfile> profiles,
                                                    absl::Span<const double> weights) {
  auto mass_of = [&](size_t i) {
    return weights.empty() ? profiles[i].total_mass : profiles[i].total_mass * weights[i];
  };
  double mass = 0.0;
  for (size_t i = 0; i < profiles.size(); ++i) mass += mass_of(i);
  const double scale = mass > 0.0 ? static_cast<double>(profiles.size()) / mass : 0.0;
  std::vector<LayerProfile> out;
  out.reserve(profiles.size());
  for (size_t i = 0; i < profiles.size(); ++i) {
    const LayerProfile& p = profiles[i];
    std::vector<double> g(p.gain.size());
    const double f = mass_of(i) * scale;
    for (size_t k = 0; k < g.size(); ++k) g[k] = p.gain[k] * f;  // monotone: stays sorted
    ASSIGN_OR_RETURN(LayerProfile raw, LayerProfileFromGains(std::move(g)));
    out.push_back(std::move(raw));
  }
  return out;
}

// One profile per (layer, KV head), curve l*H + h: head h's own sorted scores (its row of
// LayerProfile::sorted_scores) with its own mass, so RawCurves puts every head on one scale.
absl::StatusOr<std::vector<LayerProfile>> HeadProfiles(absl::Span<const LayerProfile> profiles) {
  const int H = profiles.empty() ? 0 : profiles[0].heads;
  std::vector<LayerProfile> out;
  out.reserve(profiles.size() * std::max(H, 0));
  for (size_t l = 0; l < profiles.size(); ++l) {
    const LayerProfile& p = profiles[l];
    const int64_t P = static_cast<int64_t>(p.gain.size());
    if (H < 1 || p.heads != H || static_cast<int64_t>(p.sorted_scores.size()) != H * P) {
      return absl::FailedPreconditionError(absl::StrCat(
          "per-head budgets need every head's scores: layer ", l, " has ", p.heads, " heads and ",
          p.sorted_scores.size(), " sorted scores (want ", H, " x ", P,
          "); per-layer gain curves alone (the service's stages) cannot be split by head"));
    }
    for (int h = 0; h < H; ++h) {
      ASSIGN_OR_RETURN(
          LayerProfile head,
          BuildLayerProfile(absl::MakeConstSpan(p.sorted_scores).subspan(h * P, P), 1, P));
      out.push_back(std::move(head));
    }
  }
  return out;
}

// Per-layer [floor, cap] around the uniform share s_l of a token or byte target (retention
// targets have no share: [0, P]).
SolverOptions ShareBounds(const PolicyInput& in, const BudgetTarget& target,
                          const AllocatorParams& a) {
  SolverOptions o;
  if (target.kind == BudgetTarget::Kind::kRetention) return o;
  for (int l = 0; l < in.num_layers; ++l) {
    const double share =
        target.kind == BudgetTarget::Kind::kTotalTokens
            ? static_cast<double>(target.total_tokens) / in.num_layers
            : static_cast<double>(target.total_bytes) /
                  (static_cast<double>(in.num_layers) * static_cast<double>(in.bytes_per_token[l]));
    const double p = static_cast<double>(in.prefix_len);
    const int64_t lo = static_cast<int64_t>(std::floor(std::min(p, a.floor * share)));
    const int64_t hi = static_cast<int64_t>(std::ceil(std::min(p, a.cap * share)));
    o.floors.push_back(lo);
    o.ceilings.push_back(std::max(lo, hi));
  }
  return o;
}

// The solver for the target's kind (allocator/budget_solver.h).
absl::StatusOr<BudgetResult> Solve(absl::Span<const LayerProfile> curves,
                                   absl::Span<const int64_t> bytes_per_token,
                                   const BudgetTarget& target, const SolverOptions& solver) {
  switch (target.kind) {
    case BudgetTarget::Kind::kTotalTokens:
      return SolveForTotalTokens(curves, target.total_tokens, solver);
    case BudgetTarget::Kind::kRetention:
      return SolveForRetention(curves, target.retention, solver);
    case BudgetTarget::Kind::kBytes:
      return SolveForBytes(curves, bytes_per_token, target.total_bytes, solver);
  }
  return absl::InvalidArgumentError("unknown budget target kind");
}

class XkvPolicy : public KvPolicy {
 public:
  explicit XkvPolicy(const PolicyOptions& options) : options_(options) {}
  PolicyKind kind() const override { return PolicyKind::kXkv; }
  bool needs_profile() const override { return true; }
  SelectionRule selection() const override {
    return options_.sink_tokens > 0 ? SelectionRule::kSinksAndTopScore : SelectionRule::kTopScore;
  }

  absl::StatusOr<PolicyBudgets> Budgets(const PolicyInput& in,
                                        const BudgetTarget& target) const override {
    RETURN_IF_ERROR(CheckInput(in, target, true));
    if (options_.allocator.kind == AllocatorKind::kHeads) return CalibratedHeadBudgets(in, target);
    if (options_.allocator.per_head) return HeadBudgets(in, target);
    const bool global = options_.allocator.kind == AllocatorKind::kGlobal;
    std::vector<LayerProfile> raw;
    if (global) {
      ASSIGN_OR_RETURN(const std::vector<double> weights, LayerWeights(in.num_layers, 1));
      ASSIGN_OR_RETURN(raw, RawCurves(in.profiles, weights));
    }
    const absl::Span<const LayerProfile> curves = global ? raw : in.profiles;
    const SolverOptions solver =
        global ? ShareBounds(in, target, options_.allocator) : options_.solver;
    ASSIGN_OR_RETURN(BudgetResult r, Solve(curves, in.bytes_per_token, target, solver));
    PolicyBudgets out;
    out.budgets = std::move(r.budgets);
    out.reachable = r.reachable;
    Finish(in, selection(), RetentionDefinition(options_), out);
    return out;
  }

 private:
  // The allocator's layer weights, each repeated for the layer's `per_layer` curves (empty when
  // there are none). INVALID_ARGUMENT when they do not match the model's layers.
  absl::StatusOr<std::vector<double>> LayerWeights(int num_layers, int per_layer) const {
    const std::vector<double>& w = options_.allocator.layer_weights;
    if (w.empty()) return w;
    if (static_cast<int>(w.size()) != num_layers) {
      return absl::InvalidArgumentError(absl::StrCat("layer weights: ", w.size(),
                                                     " weights for a model of ", num_layers,
                                                     " layers (a calibration of another model?)"));
    }
    std::vector<double> out;
    out.reserve(w.size() * per_layer);
    for (double x : w) out.insert(out.end(), per_layer, x);
    return out;
  }

  // Per-(layer, KV head) budgets: the same solver over L*H curves (head h of layer l is curve
  // l*H + h), each curve a head's own raw scores; a token target N becomes N*H head tokens, a
  // byte target stays in bytes with bytes_per_token[l] / H per head token.
  absl::StatusOr<PolicyBudgets> HeadBudgets(const PolicyInput& in,
                                            const BudgetTarget& target) const {
    if (options_.allocator.kind != AllocatorKind::kGlobal) {
      return absl::InvalidArgumentError("per-head budgets need allocator global, not paper");
    }
    ASSIGN_OR_RETURN(std::vector<LayerProfile> heads, HeadProfiles(in.profiles));
    const int H = in.profiles[0].heads;
    std::vector<int64_t> head_bytes;
    for (int64_t b : in.bytes_per_token) {
      if (b % H != 0) {
        return absl::InvalidArgumentError(absl::StrCat("per-head budgets: bytes per token ", b,
                                                       " not divisible by ", H, " KV heads"));
      }
      head_bytes.insert(head_bytes.end(), H, b / H);
    }
    const PolicyInput hin{in.num_layers * H, in.prefix_len, {}, head_bytes};
    BudgetTarget ht = target;
    if (target.kind == BudgetTarget::Kind::kTotalTokens) {
      ht.total_tokens = SaturatingMul(target.total_tokens, H);
    }
    ASSIGN_OR_RETURN(const std::vector<double> weights, LayerWeights(in.num_layers, H));
    ASSIGN_OR_RETURN(std::vector<LayerProfile> curves, RawCurves(heads, weights));
    const SolverOptions solver = ShareBounds(hin, ht, options_.allocator);
    ASSIGN_OR_RETURN(const BudgetResult r, Solve(curves, head_bytes, ht, solver));
    PolicyBudgets out;
    out.rule = selection();
    out.reachable = r.reachable;
    out.head_budgets.assign(in.num_layers, std::vector<int64_t>(H));
    out.budgets.assign(in.num_layers, 0);
    int64_t head_tokens = 0;
    for (int l = 0; l < in.num_layers; ++l) {
      for (int h = 0; h < H; ++h) {
        const int64_t b = r.budgets[static_cast<size_t>(l) * H + h];
        out.head_budgets[l][h] = b;
        out.budgets[l] = std::max(out.budgets[l], b);
        head_tokens += b;
        if (!head_bytes.empty()) out.total_bytes += b * head_bytes[static_cast<size_t>(l) * H];
      }
    }
    out.total_tokens = (head_tokens + H - 1) / H;
    out.average_retention = AverageRetention(heads, r.budgets, AllocatorKind::kGlobal);
    return out;
  }

  // Allocator kHeads: per-(layer, KV head) budgets from the calibrated head weights alone. The
  // target in head tokens T (a token target N: N * H; a byte target: bytes / the head token's
  // bytes, equal for every layer); each head floor(min(P, floor * T / (L * H))), the rest
  // proportional to w_lh, at most P each (RoundBudgetsToTotal).
  absl::StatusOr<PolicyBudgets> CalibratedHeadBudgets(const PolicyInput& in,
                                                      const BudgetTarget& target) const {
    // The weights' count gives the KV heads (the profiles may hold query-head rows); the
    // calibration file matched the model's layers and KV heads when it was loaded, and the
    // compaction checks each layer's head budgets against the cache's KV heads.
    const std::vector<double>& w = options_.allocator.head_weights;
    const int64_t n = static_cast<int64_t>(w.size());
    if (n == 0 || n % in.num_layers != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "allocator heads: ", n, " head weights do not split over ", in.num_layers,
          " layers (one per layer and KV head; `xkv calibrate --heads 1` writes them)"));
    }
    const int H = static_cast<int>(n / in.num_layers);
    int64_t head_cost = 0;
    for (int64_t b : in.bytes_per_token) {
      if (b % H != 0 || (head_cost != 0 && b / H != head_cost)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "allocator heads: bytes per token must be equal for every layer and divisible by ", H,
            " KV heads (got ", b, ")"));
      }
      head_cost = b / H;
    }
    int64_t total = 0;
    switch (target.kind) {
      case BudgetTarget::Kind::kTotalTokens:
        total = SaturatingMul(target.total_tokens, H);
        break;
      case BudgetTarget::Kind::kBytes:
        if (head_cost <= 0) {
          return absl::InvalidArgumentError("allocator heads: a byte target needs bytes per token");
        }
        total = target.total_bytes / head_cost;
        break;
      case BudgetTarget::Kind::kRetention:
        return HeadsRetentionError();
    }
    const int64_t P = in.prefix_len;
    total = std::clamp<int64_t>(total, 0, SaturatingMul(n, P));
    const double share = static_cast<double>(total) / static_cast<double>(n);
    const int64_t base =
        std::min<int64_t>(P, static_cast<int64_t>(std::floor(options_.allocator.floor * share)));
    std::vector<double> shares = w;
    if (options_.allocator.head_power != 1.0) {
      for (double& x : shares) x = std::pow(x, options_.allocator.head_power);
    }
    const std::vector<int64_t> extra = RoundBudgetsToTotal(shares, total - base * n, P - base);
    PolicyBudgets out;
    out.rule = selection();
    out.head_budgets.assign(in.num_layers, std::vector<int64_t>(H));
    out.budgets.assign(in.num_layers, 0);
    int64_t head_tokens = 0;
    for (int l = 0; l < in.num_layers; ++l) {
      for (int h = 0; h < H; ++h) {
        const int64_t b = base + extra[static_cast<size_t>(l) * H + h];
        out.head_budgets[l][h] = b;
        out.budgets[l] = std::max(out.budgets[l], b);
        head_tokens += b;
      }
    }
    out.total_tokens = (head_tokens + H - 1) / H;
    out.total_bytes = head_tokens * head_cost;
    return out;
  }

  PolicyOptions options_;
};

}  // namespace

absl::Status HeadsRetentionError() {
  return absl::InvalidArgumentError(
      "allocator heads takes a token, byte or fraction budget, not a retention target (its "
      "budgets do not depend on the prompt's scores)");
}

std::unique_ptr<KvPolicy> MakeKvPolicy(const PolicyOptions& options) {
  if (options.kind == PolicyKind::kXkv) return std::make_unique<XkvPolicy>(options);
  return std::make_unique<BaselinePolicy>(options);
}

}  // namespace xkv
