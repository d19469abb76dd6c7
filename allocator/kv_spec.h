// The one XKV spec (DESIGN.md §3): which policy, which budget target, where the profile comes
// from and the allocator's parameters — parsed and validated HERE for every entry point (`xkv
// generate`, `xkv eval`, `xkv serve`'s defaults, the Generate request's override and the admin
// RPC), with one error text per rule. PlanBudgets turns a spec and the layers' importance profiles
// into per-layer budgets; the CLI, the eval harness and the coordinator all call it.
//
// Units: a layer budget b_l counts kept PREFIX tokens (positions [0, P), P = T - w); the w window
// tokens are kept on top. Targets from the network are int64 and may be absurd (2^63 - 1): they
// are clamped to a full cache with saturating arithmetic, never through a double.
#ifndef XKV_ALLOCATOR_KV_SPEC_H_
#define XKV_ALLOCATOR_KV_SPEC_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "allocator/importance_profile.h"
#include "allocator/kv_policy.h"
#include "allocator/profile_store.h"

namespace xkv {

// Allowed ranges (inclusive) of the allocator's parameters and of the observation window.
inline constexpr int64_t kMinWindow = 8, kMaxWindow = 64;
inline constexpr double kMinFloor = 0.0, kMaxFloor = 1.0;
inline constexpr double kMinCap = 1.0, kMaxCap = 64.0;
inline constexpr int64_t kMaxSinkTokens = 64;
inline constexpr int64_t kMaxPoolKernel = 63;  // odd pooling kernels in [1, kMaxPoolKernel]
// Policy xkv's defaults without extra prefill, chosen on the dev split (docs/quality-default.md):
// the observation window w and the max-pooling kernel of its raw window scores (a kept position
// brings its +-15 neighbours: whole numbers and codes, not their first digits). The allocator's
// defaults (floor, cap, per layer, no recent share) are AllocatorParams' (allocator/kv_policy.h);
// the sinks are KvSettings::sink_tokens.
inline constexpr int64_t kDefaultWindow = 8;
inline constexpr int kXkvPoolKernel = 31;
// Allocator heads's floor when none is given: no share below the weights' (chosen on the dev
// split, docs/quality-heads.md). The global allocator's is AllocatorParams' (0.75).
inline constexpr double kHeadsFloor = 0.0;
inline constexpr double kMinHeadPower = 0.25, kMaxHeadPower = 4.0;
// The floor an allocator takes when none is given.
double DefaultFloor(AllocatorKind kind);

// "global" | "paper" | "heads" (case-insensitive).
absl::StatusOr<AllocatorKind> ParseAllocator(absl::string_view name);
absl::string_view AllocatorName(AllocatorKind kind);
// Per-(layer, KV head) budgets on or off: "1" | "true" | "0" | "false" (case-insensitive).
absl::StatusOr<bool> ParsePerHead(absl::string_view text);

// A budget target in the public API's units. Exactly one kind.
struct KvTarget {
  enum class Kind { kRetention, kTokens, kBytes, kFraction };
  Kind kind = Kind::kRetention;
  double value = 0.9;  // kRetention: R in (0, 1]; kFraction: kept fraction of the prefix, (0, 1]
  int64_t amount = 0;  // kTokens: N >= 0 (sum of kept prefix tokens); kBytes: M >= 0 (their bytes)
  static KvTarget Retention(double r) { return {Kind::kRetention, r, 0}; }
  static KvTarget Fraction(double f) { return {Kind::kFraction, f, 0}; }
  static KvTarget Tokens(int64_t n) { return {Kind::kTokens, 0.0, n}; }
  static KvTarget Bytes(int64_t m) { return {Kind::kBytes, 0.0, m}; }
};
std::string TargetName(const KvTarget& target);  // "retention=0.9", "tokens=512", …

// The whole spec of one request (or of the service's default).
struct KvSettings {
  PolicyKind policy = PolicyKind::kXkv;
  KvTarget target;
  ProfileMode profile;
  AllocatorParams allocator;  // xkv only
  int sink_tokens = 4;        // streaming's sinks; xkv keeps them outside the ranking
  double pyramid_beta = 20.0;
};

// The allocator a spec takes when none is named: heads for policy xkv with the deployment's head
// weights (`--calibration` from `xkv calibrate --heads 1`), a token / byte / fraction target, per-
// layer scoring (per_head 0) and the window's profile (not reconstruct) — the dev split's pick,
// docs/quality-heads.md; global otherwise (no weights, a retention target, per_head, reconstruct).
AllocatorKind DefaultAllocator(const KvSettings& s);
// Applies DefaultAllocator / DefaultFloor where s.allocator says they were not named.
void ResolveDefaultAllocator(KvSettings& s);

// A per-request (or admin) change to a KvSettings; empty/unset fields keep the base's values.
struct KvPolicyOverride {
  std::string policy;  // "full" | "streaming" | "snapkv" | "pyramidkv" | "xkv"; "" = base's
  std::optional<double> retention;        // (0, 1], xkv only
  std::optional<int64_t> budget_tokens;   // >= 0: sum over layers of kept prefix tokens
  std::optional<int64_t> budget_bytes;    // >= 0: bytes of the kept prefix tokens of all layers
  std::optional<double> budget_fraction;  // (0, 1]: kept fraction of the prompt prefix
  std::string profile_mode;      // "per_request" | "one_pass" | "sampled:<rho>" | "reconstruct"; ""
                                 // = base's
  std::string allocator;         // "global" | "paper" | "heads"; "" = base's
  std::optional<double> floor;   // alpha in [0, 1]
  std::optional<double> cap;     // in [1, 64]: multiple of the uniform share
  std::optional<bool> per_head;  // budgets per (layer, KV head); xkv with allocator global only
};

// The single rules (each INVALID_ARGUMENT names the field, the value and the allowed range).
absl::Status ValidateRetention(double retention, absl::string_view field = "retention");
absl::Status ValidateFraction(double fraction, absl::string_view field = "budget_fraction");
absl::Status ValidateWindow(int64_t window, absl::string_view field = "window");
absl::Status ValidateFloor(double floor, absl::string_view field = "floor");
absl::Status ValidateCap(double cap, absl::string_view field = "cap");
absl::Status ValidateSinkTokens(int64_t sinks, absl::string_view field = "sink_tokens");
absl::Status ValidateRecent(double recent, absl::string_view field = "recent");
absl::Status ValidatePoolKernel(int64_t kernel, absl::string_view field = "pool kernel");
// A retention target needs policy xkv (or full, which keeps everything).
absl::Status ValidatePolicyTarget(PolicyKind policy, const KvTarget& target);
// Every field of a complete spec.
absl::Status ValidateSettings(const KvSettings& settings);

// Allocator heads's weights are the deployment's (--calibration), not a request's: checked where a
// request's settings meet the service's (the coordinator, `xkv generate`), not by ValidateSettings.
// INVALID_ARGUMENT for policy xkv with allocator heads and no head weights.
absl::Status CheckHeadWeights(const KvSettings& s);

// `base` with the override's fields applied, validated (ValidateSettings; per_head with xkv's
// global allocator only: the service's rule, eval's AdaKV baselines aside). Naming a baseline
// without a target turns the base's retention target into the same kept fraction.
absl::StatusOr<KvSettings> ApplyOverride(const KvSettings& base, const KvPolicyOverride& o);
// The override alone, as a Generate request or the admin RPC carries it to the service:
// ApplyOverride onto a default spec (every profile mode runs everywhere, reconstruct included;
// per_head too, where the stages hold per-head counts: Coordinator::CheckStagesHold).
absl::Status ValidateKvOverride(const KvPolicyOverride& o);

// True when the policy selects tokens by importance score (snapkv, pyramidkv, xkv).
bool NeedsScores(PolicyKind policy);
// True when the budgets depend on the request's own profile (xkv).
bool NeedsProfile(PolicyKind policy);

PolicyOptions ToPolicyOptions(const KvSettings& settings);

// Saturating int64 arithmetic (clamps at the int64 range instead of overflowing).
int64_t SaturatingMul(int64_t a, int64_t b);
int64_t SaturatingAdd(int64_t a, int64_t b);

// The allocator's target for a prompt with prefix P over L layers: a fraction f becomes
// round(f·P·L) tokens; token and byte targets are clamped to a full cache (overflow-safe).
BudgetTarget ResolveTarget(const KvTarget& target, int64_t prefix_len, int num_layers,
                           int64_t bytes_per_token);

// What the budgets are for.
struct BudgetShape {
  int num_layers = 0;
  int64_t prefix_len = 0;       // P
  int64_t bytes_per_token = 0;  // per layer (every layer has the same KV heads here)
};

// THE planner: per-layer budgets for `spec` (any policy). profiles: [L], required by xkv, used by
// the others only to report the retention achieved (may be empty).
absl::StatusOr<PolicyBudgets> PlanBudgets(absl::Span<const LayerProfile> profiles,
                                          const KvSettings& spec, const BudgetShape& shape);

// Sampled profile mode, a request that is not profiled: the store's running mean scaled to the
// spec's target (a retention target keeps the samples' mean kept fraction). FAILED_PRECONDITION
// before the first sample.
absl::StatusOr<PolicyBudgets> SampledBudgets(const ProfileStore& store, const KvSettings& spec,
                                             const BudgetShape& shape);

}  // namespace xkv

#endif  // XKV_ALLOCATOR_KV_SPEC_H_
