#include "coordinator/kv_budgeting.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "allocator/importance_profile.h"
#include "base/status_macros.h"

namespace xkv {

absl::StatusOr<KvSettings> ApplyOverride(const KvSettings& base, const KvPolicyOverride& o) {
  KvSettings s = base;
  if (!o.policy.empty()) {
    ASSIGN_OR_RETURN(s.policy, ParsePolicy(o.policy));
    // A baseline named without a target cannot take the service's retention target.
    if (s.policy != PolicyKind::kXkv && s.target.kind == KvTarget::Kind::kRetention &&
        !o.retention.has_value()) {
      s.target = {KvTarget::Kind::kFraction, std::min(1.0, s.target.value)};
    }
  }
  if (o.retention) s.target = {KvTarget::Kind::kRetention, *o.retention};
  if (o.budget_tokens) s.target = {KvTarget::Kind::kTokens, static_cast<double>(*o.budget_tokens)};
  if (o.budget_bytes) s.target = {KvTarget::Kind::kBytes, static_cast<double>(*o.budget_bytes)};
  if (o.budget_fraction) s.target = {KvTarget::Kind::kFraction, *o.budget_fraction};
  if (!o.profile_mode.empty()) {
    ASSIGN_OR_RETURN(s.profile, ParseProfileMode(o.profile_mode));
  }
  RETURN_IF_ERROR(ValidateSettings(s));
  return s;
}

absl::Status ValidateSettings(const KvSettings& s) {
  if (s.target.kind == KvTarget::Kind::kRetention && s.policy != PolicyKind::kXkv &&
      s.policy != PolicyKind::kFull) {
    return absl::InvalidArgumentError(
        absl::StrCat("a retention target needs policy xkv, not ", std::string(PolicyName(s.policy)),
                     "; give that policy budget_tokens, budget_bytes or budget_fraction"));
  }
  return absl::OkStatus();
}

PolicyOptions ToPolicyOptions(const KvSettings& settings) {
  PolicyOptions p;
  p.kind = settings.policy;
  p.sink_tokens = settings.sink_tokens;
  p.pyramid_beta = settings.pyramid_beta;
  return p;
}

BudgetTarget ToBudgetTarget(const KvTarget& target, int64_t prefix_len, int num_layers,
                            int64_t bytes_per_token) {
  const int64_t full = prefix_len * num_layers;
  switch (target.kind) {
    case KvTarget::Kind::kRetention:
      return BudgetTarget::Retention(target.value);
    case KvTarget::Kind::kTokens:
      return BudgetTarget::Tokens(std::min<int64_t>(static_cast<int64_t>(target.value), full));
    case KvTarget::Kind::kBytes:
      return BudgetTarget::Bytes(
          std::min<int64_t>(static_cast<int64_t>(target.value), full * bytes_per_token));
    case KvTarget::Kind::kFraction:
      return BudgetTarget::Tokens(
          std::min<int64_t>(full, std::llround(target.value * static_cast<double>(full))));
  }
  return BudgetTarget::Retention(1.0);
}

std::string TargetName(const KvTarget& t) {
  switch (t.kind) {
    case KvTarget::Kind::kRetention:
      return absl::StrCat("retention=", t.value);
    case KvTarget::Kind::kTokens:
      return absl::StrCat("tokens=", static_cast<int64_t>(t.value));
    case KvTarget::Kind::kBytes:
      return absl::StrCat("bytes=", static_cast<int64_t>(t.value));
    case KvTarget::Kind::kFraction:
      return absl::StrCat("fraction=", t.value);
  }
  return "";
}

bool NeedsProfile(const KvSettings& settings) { return settings.policy == PolicyKind::kXkv; }

namespace {

absl::StatusOr<LayerProfile> ProfileOf(const xkv::v1::LayerGains& g, int64_t prefix_len) {
  std::vector<double> gains(g.gains().begin(), g.gains().end());
  gains.resize(prefix_len, 0.0);  // missing tail gains are 0 (curves are non-increasing)
  if (g.total_mass() <= 0) {
    LayerProfile p;
    p.heads = g.heads();
    p.prefix_len = prefix_len;
    p.gain.assign(prefix_len, 0.0);
    p.retention.assign(prefix_len + 1, 1.0);
    return p;
  }
  return LayerProfileFromGains(std::move(gains));
}

}  // namespace

absl::StatusOr<PolicyBudgets> SolveFromGains(absl::Span<const xkv::v1::LayerGains> gains,
                                             int64_t prefix_len, int64_t bytes_per_token,
                                             const KvSettings& settings) {
  const int L = static_cast<int>(gains.size());
  std::vector<LayerProfile> profiles;
  for (const auto& g : gains) {
    ASSIGN_OR_RETURN(LayerProfile p, ProfileOf(g, prefix_len));
    profiles.push_back(std::move(p));
  }
  std::vector<int64_t> bytes(L, bytes_per_token);
  PolicyInput input{L, prefix_len, profiles, bytes};
  std::unique_ptr<KvPolicy> policy = MakeKvPolicy(ToPolicyOptions(settings));
  return policy->Budgets(input, ToBudgetTarget(settings.target, prefix_len, L, bytes_per_token));
}

absl::StatusOr<PolicyBudgets> BudgetsUpFront(int num_layers, int64_t prefix_len,
                                             int64_t bytes_per_token, const KvSettings& settings) {
  if (NeedsProfile(settings)) {
    return absl::FailedPreconditionError("xkv budgets need the request's profile");
  }
  std::vector<int64_t> bytes(num_layers, bytes_per_token);
  PolicyInput input{num_layers, prefix_len, {}, bytes};
  std::unique_ptr<KvPolicy> policy = MakeKvPolicy(ToPolicyOptions(settings));
  return policy->Budgets(input,
                         ToBudgetTarget(settings.target, prefix_len, num_layers, bytes_per_token));
}

double RetentionOf(absl::Span<const xkv::v1::LayerGains> gains, absl::Span<const int64_t> budgets) {
  if (gains.empty() || gains.size() != budgets.size()) return 1.0;
  double total = 0;
  for (size_t l = 0; l < gains.size(); ++l) {
    if (gains[l].total_mass() <= 0) {
      total += 1.0;
      continue;
    }
    double r = 0;
    for (int64_t k = 0; k < budgets[l] && k < gains[l].gains_size(); ++k) r += gains[l].gains(k);
    total += std::min(r, 1.0);
  }
  return total / static_cast<double>(gains.size());
}

xkv::v1::CompactSpec MakeCompactSpec(absl::Span<const int64_t> budgets,
                                     const KvSettings& settings) {
  xkv::v1::CompactSpec spec;
  for (size_t l = 0; l < budgets.size(); ++l) {
    xkv::v1::LayerBudget* b = spec.add_budgets();
    b->set_layer(static_cast<int>(l));
    b->set_kept_prefix(budgets[l]);
  }
  spec.mutable_selection()->set_policy(std::string(PolicyName(settings.policy)));
  spec.mutable_selection()->set_sink_tokens(settings.sink_tokens);
  return spec;
}

std::vector<int64_t> BlocksFor(int num_layers, int64_t prompt_len, int window, int64_t max_new,
                               int block_tokens, absl::Span<const int64_t> budgets) {
  const int64_t w = std::min<int64_t>(window, prompt_len);
  const int64_t prefix = prompt_len - w;
  std::vector<int64_t> blocks(num_layers);
  for (int l = 0; l < num_layers; ++l) {
    const int64_t kept = budgets.empty() ? prefix : std::min(prefix, budgets[l]);
    blocks[l] = (kept + w + max_new + block_tokens - 1) / block_tokens;
  }
  return blocks;
}

}  // namespace xkv
