// Per-request KV decisions of the coordinator (DESIGN.md §3): the service's current policy
// settings (admin-settable), their per-request override, and the budgets of one request — either
// known up front (baselines, the sampled store's running mean) or solved globally over every
// stage's gain curves (xkv), with allocator/kv_policy.h, as model/kv_allocation.h does in one
// process.
#ifndef XKV_COORDINATOR_KV_BUDGETING_H_
#define XKV_COORDINATOR_KV_BUDGETING_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "allocator/kv_policy.h"
#include "coordinator/generate_params.h"
#include "xkv/v1/worker.pb.h"

namespace xkv {

// A budget target in the public API's units.
struct KvTarget {
  enum class Kind { kRetention, kTokens, kBytes, kFraction };
  Kind kind = Kind::kRetention;
  double value = 0.9;  // R, N, M, or the kept fraction of the prefix
};

struct KvSettings {
  PolicyKind policy = PolicyKind::kXkv;
  KvTarget target;
  ProfileMode profile;
  int sink_tokens = 4;
  double pyramid_beta = 20.0;
};

// The settings for one request: `base` with the override's non-empty fields (already validated).
absl::StatusOr<KvSettings> ApplyOverride(const KvSettings& base, const KvPolicyOverride& o);
// INVALID_ARGUMENT for a combination no policy takes (e.g. retention with snapkv).
absl::Status ValidateSettings(const KvSettings& settings);

PolicyOptions ToPolicyOptions(const KvSettings& settings);
// The allocator's target for a prompt with prefix P over L layers (a fraction f becomes
// round(f·P·L) tokens; byte targets are clamped to a full cache).
BudgetTarget ToBudgetTarget(const KvTarget& target, int64_t prefix_len, int num_layers,
                            int64_t bytes_per_token);

std::string TargetName(const KvTarget& target);  // "retention=0.9", "tokens=512", …

// True when the policy needs the request's own gain curves to choose budgets.
bool NeedsProfile(const KvSettings& settings);

// Budgets from the gains of every layer ([L], ordered by layer). A layer with total_mass 0 has
// nothing to lose (retention 1 at every budget).
absl::StatusOr<PolicyBudgets> SolveFromGains(absl::Span<const xkv::v1::LayerGains> gains,
                                             int64_t prefix_len, int64_t bytes_per_token,
                                             const KvSettings& settings);
// Budgets that do not depend on scores (baselines). FAILED_PRECONDITION for xkv.
absl::StatusOr<PolicyBudgets> BudgetsUpFront(int num_layers, int64_t prefix_len,
                                             int64_t bytes_per_token, const KvSettings& settings);
// sum_l R_l(b_l) / L from gain curves, for reporting.
double RetentionOf(absl::Span<const xkv::v1::LayerGains> gains, absl::Span<const int64_t> budgets);

// The Worker CompactSpec for budgets of every layer.
xkv::v1::CompactSpec MakeCompactSpec(absl::Span<const int64_t> budgets, const KvSettings& settings);

// KV blocks per layer a request reserves: ceil((kept + window + max_new) / block_tokens) with
// kept = budgets[l] (or the whole prefix when budgets is empty).
std::vector<int64_t> BlocksFor(int num_layers, int64_t prompt_len, int window, int64_t max_new,
                               int block_tokens, absl::Span<const int64_t> budgets = {});

}  // namespace xkv

#endif  // XKV_COORDINATOR_KV_BUDGETING_H_
