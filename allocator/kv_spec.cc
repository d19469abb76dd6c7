#include "allocator/kv_spec.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace xkv {
namespace {

absl::Status OutOfRange(absl::string_view field, double value, absl::string_view range) {
  return absl::InvalidArgumentError(absl::StrCat(field, " is ", value, "; it must be in ", range));
}

constexpr int64_t kInt64Max = std::numeric_limits<int64_t>::max();
constexpr int64_t kInt64Min = std::numeric_limits<int64_t>::min();

}  // namespace

absl::StatusOr<AllocatorKind> ParseAllocator(absl::string_view name) {
  const std::string lower = absl::AsciiStrToLower(name);
  if (lower == "global") return AllocatorKind::kGlobal;
  if (lower == "paper") return AllocatorKind::kPaper;
  if (lower == "heads") return AllocatorKind::kHeads;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown allocator '", name, "'; allowed: global, paper, heads"));
}

absl::string_view AllocatorName(AllocatorKind kind) {
  switch (kind) {
    case AllocatorKind::kGlobal:
      return "global";
    case AllocatorKind::kPaper:
      return "paper";
    case AllocatorKind::kHeads:
      return "heads";
  }
  return "global";
}

double DefaultFloor(AllocatorKind kind) {
  return kind == AllocatorKind::kHeads ? kHeadsFloor : AllocatorParams{}.floor;
}

AllocatorKind DefaultAllocator(const KvSettings& s) {
  const bool heads = s.policy == PolicyKind::kXkv && !s.allocator.head_weights.empty() &&
                     s.target.kind != KvTarget::Kind::kRetention && !s.allocator.per_head &&
                     s.profile.kind != ProfileModeKind::kReconstruct;
  return heads ? AllocatorKind::kHeads : AllocatorKind::kGlobal;
}

void ResolveDefaultAllocator(KvSettings& s) {
  if (s.allocator.kind_by_default) s.allocator.kind = DefaultAllocator(s);
  if (s.allocator.floor_by_default) s.allocator.floor = DefaultFloor(s.allocator.kind);
}

absl::StatusOr<bool> ParsePerHead(absl::string_view text) {
  const std::string lower = absl::AsciiStrToLower(text);
  if (lower == "1" || lower == "true") return true;
  if (lower == "0" || lower == "false") return false;
  return absl::InvalidArgumentError(
      absl::StrCat("per_head is '", text, "'; allowed: 1, true, 0, false"));
}

std::string TargetName(const KvTarget& t) {
  switch (t.kind) {
    case KvTarget::Kind::kRetention:
      return absl::StrCat("retention=", t.value);
    case KvTarget::Kind::kTokens:
      return absl::StrCat("tokens=", t.amount);
    case KvTarget::Kind::kBytes:
      return absl::StrCat("bytes=", t.amount);
    case KvTarget::Kind::kFraction:
      return absl::StrCat("fraction=", t.value);
  }
  return "";
}

absl::Status ValidateRetention(double retention, absl::string_view field) {
  if (retention > 0 && retention <= 1) return absl::OkStatus();
  return OutOfRange(field, retention, "(0, 1]");
}

absl::Status ValidateFraction(double fraction, absl::string_view field) {
  return ValidateRetention(fraction, field);  // the same range, (0, 1]
}

absl::Status ValidateWindow(int64_t window, absl::string_view field) {
  if (window >= kMinWindow && window <= kMaxWindow) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(field, " is ", window, "; it must be in [", kMinWindow, ", ", kMaxWindow, "]"));
}

absl::Status ValidateFloor(double floor, absl::string_view field) {
  if (floor >= kMinFloor && floor <= kMaxFloor) return absl::OkStatus();
  return OutOfRange(field, floor, absl::StrCat("[", kMinFloor, ", ", kMaxFloor, "]"));
}

absl::Status ValidateCap(double cap, absl::string_view field) {
  if (cap >= kMinCap && cap <= kMaxCap) return absl::OkStatus();
  return OutOfRange(field, cap, absl::StrCat("[", kMinCap, ", ", kMaxCap, "]"));
}

absl::Status ValidateRecent(double recent, absl::string_view field) {
  if (recent >= 0.0 && recent <= 1.0) return absl::OkStatus();
  return OutOfRange(field, recent, "[0, 1]");
}

absl::Status ValidatePoolKernel(int64_t kernel, absl::string_view field) {
  if (kernel >= 1 && kernel <= kMaxPoolKernel && kernel % 2 == 1) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      field, " is ", kernel, "; it must be an odd number in [1, ", kMaxPoolKernel, "]"));
}

absl::Status ValidateSinkTokens(int64_t sinks, absl::string_view field) {
  if (sinks >= 0 && sinks <= kMaxSinkTokens) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(field, " is ", sinks, "; it must be in [0, ", kMaxSinkTokens, "]"));
}

absl::Status ValidatePolicyTarget(PolicyKind policy, const KvTarget& target) {
  if (target.kind != KvTarget::Kind::kRetention || policy == PolicyKind::kXkv ||
      policy == PolicyKind::kFull) {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "a retention target (", target.value, ") needs policy xkv, not '", PolicyName(policy),
      "'; give that policy budget_tokens, budget_bytes or ", "budget_fraction"));
}

absl::Status ValidateSettings(const KvSettings& s) {
  switch (s.target.kind) {
    case KvTarget::Kind::kRetention:
      RETURN_IF_ERROR(ValidateRetention(s.target.value));
      break;
    case KvTarget::Kind::kFraction:
      RETURN_IF_ERROR(ValidateFraction(s.target.value));
      break;
    case KvTarget::Kind::kTokens:
    case KvTarget::Kind::kBytes:
      if (s.target.amount < 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            s.target.kind == KvTarget::Kind::kTokens ? "budget_tokens" : "budget_bytes", " is ",
            s.target.amount, "; it must be >= 0"));
      }
      break;
  }
  RETURN_IF_ERROR(ValidatePolicyTarget(s.policy, s.target));
  RETURN_IF_ERROR(ValidateFloor(s.allocator.floor));
  RETURN_IF_ERROR(ValidateCap(s.allocator.cap));
  const bool adakv = s.policy == PolicyKind::kSnapKv || s.policy == PolicyKind::kPyramidKv;
  if (s.allocator.kind == AllocatorKind::kHeads) {
    if (s.policy != PolicyKind::kXkv) {
      return absl::InvalidArgumentError(
          absl::StrCat("allocator heads needs policy xkv, not '", PolicyName(s.policy), "'"));
    }
    if (s.target.kind == KvTarget::Kind::kRetention) return HeadsRetentionError();
  }
  if (!(s.allocator.head_power >= kMinHeadPower && s.allocator.head_power <= kMaxHeadPower)) {
    return OutOfRange("head power", s.allocator.head_power,
                      absl::StrCat("[", kMinHeadPower, ", ", kMaxHeadPower, "]"));
  }
  for (size_t i = 0; i < s.allocator.head_weights.size(); ++i) {
    const double w = s.allocator.head_weights[i];
    if (!(std::isfinite(w) && w > 0.0)) {
      return OutOfRange(absl::StrCat("head weight [", i, "]"), w, "(0, inf), finite");
    }
  }
  if (s.allocator.per_head && !adakv &&
      (s.policy != PolicyKind::kXkv || s.allocator.kind != AllocatorKind::kGlobal)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "per_head budgets need policy xkv with allocator global, or snapkv / pyramidkv (AdaKV's "
        "split of each layer's budget over its heads; allocator heads is per head already, "
        "without it); got policy '",
        PolicyName(s.policy), "', allocator '", AllocatorName(s.allocator.kind), "'"));
  }
  RETURN_IF_ERROR(ValidateSinkTokens(s.sink_tokens));
  RETURN_IF_ERROR(ValidateRecent(s.allocator.recent));
  for (size_t l = 0; l < s.allocator.layer_weights.size(); ++l) {
    const double w = s.allocator.layer_weights[l];
    if (!(std::isfinite(w) && w > 0.0)) {
      return OutOfRange(absl::StrCat("layer weight [", l, "]"), w, "(0, inf), finite");
    }
  }
  if (s.allocator.recent > 0 && s.policy != PolicyKind::kXkv) {
    return absl::InvalidArgumentError(absl::StrCat(
        "recent (", s.allocator.recent, ") needs policy xkv, not '", PolicyName(s.policy), "'"));
  }
  if (s.profile.kind == ProfileModeKind::kSampled &&
      !(s.profile.sample_rate > 0 && s.profile.sample_rate <= 1)) {
    return OutOfRange("profile sample rate", s.profile.sample_rate, "(0, 1]");
  }
  if (s.profile.kind == ProfileModeKind::kReconstruct && !NeedsScores(s.policy)) {
    return absl::InvalidArgumentError(
        absl::StrCat("profile mode reconstruct ranks tokens by score; policy '",
                     PolicyName(s.policy), "' does not (use snapkv, pyramidkv or xkv)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<KvSettings> ApplyOverride(const KvSettings& base, const KvPolicyOverride& o) {
  const int targets = o.retention.has_value() + o.budget_tokens.has_value() +
                      o.budget_bytes.has_value() + o.budget_fraction.has_value();
  if (targets > 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("set at most one KV budget target (retention, budget_tokens, budget_bytes, ",
                     "budget_fraction); got ", targets));
  }
  KvSettings s = base;
  if (!o.policy.empty()) {
    ASSIGN_OR_RETURN(s.policy, ParsePolicy(o.policy));
    // A baseline named without a target cannot take the base's retention target.
    if (s.policy != PolicyKind::kXkv && s.target.kind == KvTarget::Kind::kRetention &&
        targets == 0) {
      s.target = KvTarget::Fraction(std::min(1.0, s.target.value));
    }
  }
  if (o.retention) s.target = KvTarget::Retention(*o.retention);
  if (o.budget_tokens) s.target = KvTarget::Tokens(*o.budget_tokens);
  if (o.budget_bytes) s.target = KvTarget::Bytes(*o.budget_bytes);
  if (o.budget_fraction) s.target = KvTarget::Fraction(*o.budget_fraction);
  if (!o.profile_mode.empty()) {
    ASSIGN_OR_RETURN(s.profile, ParseProfileMode(o.profile_mode));
  }
  if (!o.allocator.empty()) {
    ASSIGN_OR_RETURN(s.allocator.kind, ParseAllocator(o.allocator));
    s.allocator.kind_by_default = false;
    // Another allocator named without a floor takes its own default, not the base's.
    if (s.allocator.kind != base.allocator.kind) s.allocator.floor_by_default = true;
  }
  if (o.floor) {
    s.allocator.floor = *o.floor;
    s.allocator.floor_by_default = false;
  }
  if (o.cap) s.allocator.cap = *o.cap;
  if (o.per_head) s.allocator.per_head = *o.per_head;
  // No allocator named here or in the base: the default rule, for this target and policy.
  ResolveDefaultAllocator(s);
  if (!o.per_head && (s.policy != PolicyKind::kXkv || s.allocator.kind != AllocatorKind::kGlobal)) {
    s.allocator.per_head = false;  // a base's per-head default does not apply to this policy
  }
  // The service solves per-head budgets with xkv's global allocator only; AdaKV-style
  // snapkv / pyramidkv with per_head is an `xkv eval` method.
  if (s.allocator.per_head &&
      (s.policy != PolicyKind::kXkv || s.allocator.kind != AllocatorKind::kGlobal)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "per_head budgets need policy xkv with allocator global in the service (snapkv / "
        "pyramidkv take per_head in xkv eval only); got policy '",
        PolicyName(s.policy), "', allocator '", AllocatorName(s.allocator.kind), "'"));
  }
  RETURN_IF_ERROR(ValidateSettings(s));
  return s;
}

absl::Status CheckHeadWeights(const KvSettings& s) {
  if (s.policy != PolicyKind::kXkv || s.allocator.kind != AllocatorKind::kHeads ||
      !s.allocator.head_weights.empty()) {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(
      "allocator heads needs the model's head weights: --calibration FILE written by `xkv "
      "calibrate --heads 1`");
}

absl::Status ValidateKvOverride(const KvPolicyOverride& o) {
  return ApplyOverride(KvSettings{}, o).status();
}

bool NeedsScores(PolicyKind policy) {
  return policy == PolicyKind::kSnapKv || policy == PolicyKind::kPyramidKv ||
         policy == PolicyKind::kXkv;
}

bool NeedsProfile(PolicyKind policy) { return policy == PolicyKind::kXkv; }

PolicyOptions ToPolicyOptions(const KvSettings& settings) {
  PolicyOptions p;
  p.kind = settings.policy;
  p.sink_tokens = settings.sink_tokens;
  p.pyramid_beta = settings.pyramid_beta;
  p.allocator = settings.allocator;
  return p;
}

int64_t SaturatingMul(int64_t a, int64_t b) {
  int64_t r = 0;
  if (!__builtin_mul_overflow(a, b, &r)) return r;
  return (a < 0) != (b < 0) ? kInt64Min : kInt64Max;
}

int64_t SaturatingAdd(int64_t a, int64_t b) {
  int64_t r = 0;
  if (!__builtin_add_overflow(a, b, &r)) return r;
  return a < 0 ? kInt64Min : kInt64Max;
}

BudgetTarget ResolveTarget(const KvTarget& target, int64_t prefix_len, int num_layers,
                           int64_t bytes_per_token) {
  const int64_t full = SaturatingMul(std::max<int64_t>(prefix_len, 0), num_layers);
  switch (target.kind) {
    case KvTarget::Kind::kRetention:
      return BudgetTarget::Retention(target.value);
    case KvTarget::Kind::kTokens:
      return BudgetTarget::Tokens(std::clamp<int64_t>(target.amount, 0, full));
    case KvTarget::Kind::kBytes:
      return BudgetTarget::Bytes(
          std::clamp<int64_t>(target.amount, 0, SaturatingMul(full, bytes_per_token)));
    case KvTarget::Kind::kFraction: {
      const double f = std::clamp(target.value, 0.0, 1.0);
      return BudgetTarget::Tokens(std::min<int64_t>(
          full, static_cast<int64_t>(std::llround(f * static_cast<double>(full)))));
    }
  }
  return BudgetTarget::Retention(1.0);
}

absl::StatusOr<PolicyBudgets> PlanBudgets(absl::Span<const LayerProfile> profiles,
                                          const KvSettings& spec, const BudgetShape& shape) {
  RETURN_IF_ERROR(ValidateSettings(spec));
  if (shape.num_layers < 1 || shape.prefix_len < 0 || shape.bytes_per_token < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "plan budgets: num_layers ", shape.num_layers, " must be >= 1, prefix_len ",
        shape.prefix_len, " >= 0 and bytes_per_token ", shape.bytes_per_token, " >= 1"));
  }
  if (NeedsProfile(spec.policy) && static_cast<int>(profiles.size()) != shape.num_layers) {
    return absl::FailedPreconditionError(
        absl::StrCat("plan budgets: policy xkv needs the importance profiles of all ",
                     shape.num_layers, " layers (got ", profiles.size(), ")"));
  }
  const std::vector<int64_t> bytes(shape.num_layers, shape.bytes_per_token);
  const PolicyInput input{
      shape.num_layers, shape.prefix_len,
      spec.policy == PolicyKind::kStreaming ? absl::Span<const LayerProfile>() : profiles, bytes};
  return MakeKvPolicy(ToPolicyOptions(spec))
      ->Budgets(input, ResolveTarget(spec.target, shape.prefix_len, shape.num_layers,
                                     shape.bytes_per_token));
}

absl::StatusOr<PolicyBudgets> SampledBudgets(const ProfileStore& store, const KvSettings& spec,
                                             const BudgetShape& shape) {
  PolicyBudgets out;
  const BudgetTarget t =
      ResolveTarget(spec.target, shape.prefix_len, shape.num_layers, shape.bytes_per_token);
  switch (t.kind) {
    case BudgetTarget::Kind::kRetention: {
      ASSIGN_OR_RETURN(out.budgets, store.BudgetsFor(shape.prefix_len));
      break;
    }
    case BudgetTarget::Kind::kTotalTokens: {
      ASSIGN_OR_RETURN(out.budgets, store.BudgetsFor(shape.prefix_len, t.total_tokens));
      break;
    }
    case BudgetTarget::Kind::kBytes: {
      ASSIGN_OR_RETURN(out.budgets,
                       store.BudgetsFor(shape.prefix_len, t.total_bytes / shape.bytes_per_token));
      break;
    }
  }
  out.rule = MakeKvPolicy(ToPolicyOptions(spec))->selection();
  for (int64_t b : out.budgets) out.total_tokens += b;
  out.total_bytes = SaturatingMul(out.total_tokens, shape.bytes_per_token);
  return out;
}

}  // namespace xkv
