#include "coordinator/kv_budgeting.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "allocator/importance_profile.h"
#include "base/status_macros.h"
#include "model/kv_allocation.h"

namespace xkv {
namespace {

// Per-(layer, KV head) curves: the stage's sorted scores of each KV head [heads, P] become the
// profile's rows (HeadProfiles in allocator/kv_policy.cc solves over them).
absl::Status SetHeadScores(const xkv::v1::LayerGains& g, int64_t prefix_len, LayerProfile& p) {
  if (g.head_scores_size() == 0) return absl::OkStatus();
  if (prefix_len < 1 || g.head_scores_size() % prefix_len != 0) {
    return absl::InternalError(absl::StrCat("layer ", g.layer(), ": the stage sent ",
                                            g.head_scores_size(), " per-head scores for ",
                                            prefix_len, " prefix tokens"));
  }
  p.heads = static_cast<int>(g.head_scores_size() / prefix_len);
  p.sorted_scores.assign(g.head_scores().begin(), g.head_scores().end());
  return absl::OkStatus();
}

// The profile of one layer's gain curve as the worker sent it (gains already divided by S_l).
absl::StatusOr<LayerProfile> ProfileOf(const xkv::v1::LayerGains& g, int64_t prefix_len) {
  LayerProfile p;
  if (g.total_mass() <= 0) {
    p.heads = g.heads();
    p.prefix_len = prefix_len;
    p.gain.assign(prefix_len, 0.0);
    p.retention.assign(prefix_len + 1, 1.0);
  } else {
    std::vector<double> gains(g.gains().begin(), g.gains().end());
    gains.resize(prefix_len, 0.0);  // missing tail gains are 0 (curves are non-increasing)
    ASSIGN_OR_RETURN(p, LayerProfileFromGains(std::move(gains)));
    p.heads = g.heads();
    p.total_mass = g.total_mass();  // the global allocator weighs layers by their own mass
  }
  RETURN_IF_ERROR(SetHeadScores(g, prefix_len, p));
  return p;
}

absl::StatusOr<std::vector<LayerProfile>> ProfilesOf(absl::Span<const xkv::v1::LayerGains> gains,
                                                     int64_t prefix_len) {
  std::vector<LayerProfile> profiles;
  profiles.reserve(gains.size());
  for (const auto& g : gains) {
    ASSIGN_OR_RETURN(LayerProfile p, ProfileOf(g, prefix_len));
    profiles.push_back(std::move(p));
  }
  return profiles;
}

}  // namespace

absl::StatusOr<PolicyBudgets> SolveFromGains(absl::Span<const xkv::v1::LayerGains> gains,
                                             int64_t prefix_len, int64_t bytes_per_token,
                                             const KvSettings& settings) {
  ASSIGN_OR_RETURN(std::vector<LayerProfile> profiles, ProfilesOf(gains, prefix_len));
  return PlanBudgets(profiles, settings,
                     {static_cast<int>(gains.size()), prefix_len, bytes_per_token});
}

absl::StatusOr<PolicyBudgets> BudgetsUpFront(int num_layers, int64_t prefix_len,
                                             int64_t bytes_per_token, const KvSettings& settings) {
  if (NeedsProfile(settings.policy)) {
    return absl::FailedPreconditionError("xkv budgets need the request's profile");
  }
  return PlanBudgets({}, settings, {num_layers, prefix_len, bytes_per_token});
}

double RetentionOf(absl::Span<const xkv::v1::LayerGains> gains, absl::Span<const int64_t> budgets,
                   AllocatorKind allocator) {
  if (gains.empty() || gains.size() != budgets.size()) return 1.0;
  int64_t prefix_len = 0;
  for (const auto& g : gains) prefix_len = std::max<int64_t>(prefix_len, g.gains_size());
  absl::StatusOr<std::vector<LayerProfile>> profiles = ProfilesOf(gains, prefix_len);
  if (!profiles.ok()) return 1.0;
  return std::min(1.0, AverageRetention(*profiles, budgets, allocator));
}

xkv::v1::CompactSpec MakeCompactSpec(const PolicyBudgets& budgets, const KvSettings& settings) {
  xkv::v1::CompactSpec spec;
  for (size_t l = 0; l < budgets.budgets.size(); ++l) {
    xkv::v1::LayerBudget* b = spec.add_budgets();
    b->set_layer(static_cast<int>(l));
    b->set_kept_prefix(budgets.budgets[l]);
    if (l < budgets.head_budgets.size()) {
      b->mutable_head_kept_prefix()->Add(budgets.head_budgets[l].begin(),
                                         budgets.head_budgets[l].end());
    }
  }
  spec.mutable_selection()->set_policy(std::string(PolicyName(settings.policy)));
  spec.mutable_selection()->set_sink_tokens(settings.sink_tokens);
  return spec;
}

xkv::v1::SequenceScoring MakeSequenceScoring(const KvSettings& settings,
                                             const ImportanceOptions& base) {
  const ImportanceOptions scoring = ScoringFor(settings, base);
  xkv::v1::SequenceScoring out;
  out.set_reduce(scoring.reduce == ScoreReduce::kMax ? xkv::v1::SCORE_REDUCE_MAX
                                                     : xkv::v1::SCORE_REDUCE_SUM);
  out.set_pool(scoring.pool == ScorePool::kMax ? xkv::v1::SCORE_POOL_MAX : xkv::v1::SCORE_POOL_AVG);
  out.set_pool_kernel(scoring.pool_kernel);
  return out;
}

std::vector<KvLayerHeld> LayersHeld(absl::Span<const xkv::v1::LayerSize> sizes) {
  std::vector<KvLayerHeld> held;
  held.reserve(sizes.size());
  for (const xkv::v1::LayerSize& l : sizes) {
    held.push_back(
        {l.layer(), l.tokens(), l.blocks(), {l.head_tokens().begin(), l.head_tokens().end()}});
  }
  return held;
}

}  // namespace xkv
