// Per-request KV decisions of the coordinator (DESIGN.md §3): the budgets of one request — either
// known up front (baselines, the sampled store's running mean) or solved globally over every
// stage's gain curves (xkv). The spec and the planner are allocator/kv_spec.h's, shared with the
// CLI and the eval harness; this file only adapts the worker contract's gain curves to it.
#ifndef XKV_COORDINATOR_KV_BUDGETING_H_
#define XKV_COORDINATOR_KV_BUDGETING_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "allocator/kv_policy.h"
#include "allocator/kv_spec.h"
#include "coordinator/kv_manager.h"
#include "kernels/cpu/importance.h"
#include "xkv/v1/worker.pb.h"

namespace xkv {

// Budgets from the gains of every layer ([L], ordered by layer). A layer with total_mass 0 has
// nothing to lose (retention 1 at every budget). Per-(layer, KV head) budgets solve over the
// layers' head_scores (the stages send them for StepSequence.per_head).
absl::StatusOr<PolicyBudgets> SolveFromGains(absl::Span<const xkv::v1::LayerGains> gains,
                                             int64_t prefix_len, int64_t bytes_per_token,
                                             const KvSettings& settings);
// Budgets that do not depend on scores (baselines). FAILED_PRECONDITION for xkv.
absl::StatusOr<PolicyBudgets> BudgetsUpFront(int num_layers, int64_t prefix_len,
                                             int64_t bytes_per_token, const KvSettings& settings);
// AverageRetention (allocator/kv_policy.h) of the budgets on the gain curves, for reporting.
double RetentionOf(absl::Span<const xkv::v1::LayerGains> gains, absl::Span<const int64_t> budgets,
                   AllocatorKind allocator = AllocatorKind::kPaper);

// The Worker CompactSpec for budgets of every layer (and of every KV head with per-head budgets).
xkv::v1::CompactSpec MakeCompactSpec(const PolicyBudgets& budgets, const KvSettings& settings);

// The window scoring of a request's observed steps (StepSequence.scoring): ScoringFor
// (model/kv_allocation.h), the rule `xkv eval`'s methods use, on `base` (the service's window,
// granularity and the baselines' pool kernel). The stages score each sequence with its own.
xkv::v1::SequenceScoring MakeSequenceScoring(const KvSettings& settings,
                                             const ImportanceOptions& base);

// What the stages report a sequence holds (worker LayerSize, by layer), for the KV ledger.
std::vector<KvLayerHeld> LayersHeld(absl::Span<const xkv::v1::LayerSize> sizes);

}  // namespace xkv

#endif  // XKV_COORDINATOR_KV_BUDGETING_H_
