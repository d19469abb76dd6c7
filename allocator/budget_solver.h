// Per-layer KV budget solvers (DESIGN.md §3.3). Every layer l has a non-increasing gain curve
// g_l(1..P_l) and retention R_l(b) = sum_{k<=b} g_l(k) (allocator/importance_profile.h); budgets
// b_l are kept prefix tokens per layer, within floors/ceilings min_l <= b_l <= max_l <= P_l.
//
// All three problems are separable concave, so a threshold solution is optimal: for a level λ,
//   b_l(λ) = clamp(#{k : g_l(k) / w_l >= λ}, min_l, max_l)      (w_l = 1, or bytes per token)
// computed by binary search on each curve. λ* is found by bisection over the bit patterns of
// non-negative doubles (which order like the doubles themselves): at most 64 probes, each
// O(L log P) and narrowing per-layer brackets, so exact (λ* is a gain value) and never iterating
// over tokens. Slots whose gain equals λ* (ties) are handed out in layer-index order (lower layer
// first) until the target is met exactly.
#ifndef XKV_ALLOCATOR_BUDGET_SOLVER_H_
#define XKV_ALLOCATOR_BUDGET_SOLVER_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "allocator/importance_profile.h"

namespace xkv {

struct SolverOptions {
  std::vector<int64_t> floors;    // [L] min_l >= 0; empty = all 0
  std::vector<int64_t> ceilings;  // [L] max_l in [min_l, P_l]; empty = all P_l
  // Retention mode: the target counts as met when sum_l R_l(b_l) >= L*R - L*retention_slack
  // (absorbs prefix-sum rounding, so R = 1 is reachable with every token kept).
  double retention_slack = 1e-12;
  // Bytes mode: cap on the greedy top-up steps after the threshold (see SolveForBytes).
  int64_t max_fill_steps = 1 << 16;
};

struct BudgetResult {
  std::vector<int64_t> budgets;    // [L] b_l
  int64_t total_tokens = 0;        // sum_l b_l
  int64_t total_bytes = 0;         // sum_l bytes_l * b_l (bytes mode; 0 otherwise)
  double total_retention = 0.0;    // sum_l R_l(b_l)
  double average_retention = 0.0;  // total_retention / L
  bool reachable = true;           // retention mode: false when even the ceilings miss the target
  // Bytes mode with unequal bytes per layer: the optimum is <= total_retention + this (0 = exact).
  double optimality_gap_bound = 0.0;
};

// (a) Maximise sum_l R_l(b_l) subject to sum_l b_l = total_tokens (the N largest gains overall).
// INVALID_ARGUMENT when total_tokens is outside [sum floors, sum ceilings].
absl::StatusOr<BudgetResult> SolveForTotalTokens(absl::Span<const LayerProfile> layers,
                                                 int64_t total_tokens,
                                                 const SolverOptions& options = {});

// (b) Minimise sum_l b_l subject to sum_l R_l(b_l) >= L * average_retention, R in (0, 1]. When the
// ceilings cannot reach it, returns the ceilings with reachable = false.
absl::StatusOr<BudgetResult> SolveForRetention(absl::Span<const LayerProfile> layers,
                                               double average_retention,
                                               const SolverOptions& options = {});

// (c) Maximise sum_l R_l(b_l) subject to sum_l bytes_per_token[l] * b_l <= total_bytes.
// Equal bytes per layer: exactly (a) with N = min(total_bytes / bytes, sum ceilings).
// Unequal bytes (a knapsack): threshold on gain per byte g_l(k)/bytes_l, ties by layer order while
// they fit, then a greedy top-up of the leftover bytes (best gain per byte among slots that still
// fit, at most options.max_fill_steps). By Lagrangian duality the threshold part T is optimal among
// all allocations with bytes <= bytes(T), and optimum <= R(result) + λ*·(M - bytes(T)) - (R(result)
// - R(T)), reported as optimality_gap_bound. Exactness condition: the result is exact when the
// threshold part uses all M bytes, or λ* = 0, or the top-up closes the bound (gap bound 0).
// INVALID_ARGUMENT when total_bytes < sum_l bytes_l * min_l.
absl::StatusOr<BudgetResult> SolveForBytes(absl::Span<const LayerProfile> layers,
                                           absl::Span<const int64_t> bytes_per_token,
                                           int64_t total_bytes, const SolverOptions& options = {});

}  // namespace xkv

#endif  // XKV_ALLOCATOR_BUDGET_SOLVER_H_
