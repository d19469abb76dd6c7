// XKV allocation (DESIGN.md §3.3–3.4): from one prompt's collected importance scores, per-layer
// budgets (any policy, via MakeKvPolicy) and per layer per KV head the cache slots to keep — the
// top-b_l prefix tokens of that head plus the w window tokens — then compaction of a KvCache.
//
// Units: a layer budget b_l counts kept PREFIX tokens (positions [0, P), P = T - w); every layer
// keeps the w window tokens [P, T) on top, so layer l holds b_l + w tokens per KV head after
// eviction. A byte target M bounds sum_l bytes_per_token * b_l (the budgets, as in the solver),
// with bytes_per_token = config.KvBytesPerTokenPerLayer(sizeof(float)) (the CPU cache is fp32);
// the window costs L * w * bytes_per_token on top. Token and byte targets above a full cache clamp
// to it (ResolveTarget, allocator/kv_spec.h).
//
// Nothing is evicted (the plan keeps everything and says why in `note`) for policy `full` and for
// prompts with T <= w (no prefix to evict; for T < w not even scores exist).
#ifndef XKV_MODEL_KV_ALLOCATION_H_
#define XKV_MODEL_KV_ALLOCATION_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "allocator/kv_policy.h"
#include "allocator/kv_spec.h"
#include "model/importance_collector.h"
#include "model/kv_cache.h"
#include "model/model_config.h"

namespace xkv {

struct AllocationPlan {
  int layer_begin = 0;
  int layer_end = 0;
  int64_t prompt_len = 0;  // T
  int64_t prefix_len = 0;  // P = max(T - w, 0)
  int window = 0;          // w
  PolicyKind policy = PolicyKind::kXkv;
  bool compress = false;  // false: keep every token (policy full, or T <= w)
  std::string note;       // why nothing is evicted (when !compress)
  PolicyBudgets budgets;  // budgets.budgets[layer - layer_begin] = b_l
  // [layer - layer_begin][kv_head]: kept slots, strictly increasing, the last w are [P, T).
  // Empty when !compress.
  std::vector<std::vector<std::vector<int32_t>>> kept;
};

struct LayerAllocation {
  int layer = 0;
  // b_l; with per-head budgets the mean over the layer's KV heads, rounded up.
  int64_t kept_prefix = 0;
  // The layer's slots: b_l + w after eviction (T when nothing was evicted); with per-head budgets
  // its largest head's count (bytes_held counts each head's own rows).
  int64_t tokens_held = 0;
  int64_t bytes_held = 0;  // KvCache::BytesHeld(layer)
};

struct AllocationReport {
  PolicyKind policy = PolicyKind::kXkv;
  int64_t prompt_len = 0;
  int64_t prefix_len = 0;
  int window = 0;
  bool compressed = false;
  std::string note;
  std::vector<LayerAllocation> layers;
  int64_t kept_prefix_total = 0;  // sum_l b_l
  int64_t kv_bytes_held = 0;      // KvCache::BytesHeld() (capacity, fp32)
  int64_t kv_bytes_full = 0;      // L * T * bytes_per_token: an exact full cache of the prompt
  // sum_l R_l(b_l) / L from this prompt's own scores, when they exist and the rule keeps top
  // scores.
  std::optional<double> average_retention;
  bool reachable = true;  // false: an xkv retention target was unreachable (everything kept)
  bool profiled = false;  // the xkv solver ran on this request's own profile
  // Wall milliseconds. profile_ms: the scores-only mini-prefill (per_request; shared by the
  // batch) plus computing this request's scores; solve_ms: budgets + selection + compaction of
  // this request; prefill_ms: the real prefill step(s) (shared by the batch).
  double profile_ms = 0.0, solve_ms = 0.0, prefill_ms = 0.0;
};

// The selection rule of a policy (kAll / kSinksAndRecent / kTopScore / kSinksAndTopScore).
SelectionRule SelectionFor(const PolicyOptions& policy);

// THE scoring of a spec's observation window, for `xkv eval`'s methods and the service's requests
// alike (each request's own policy: the service default, its override or the admin's), on top of
// `base` (window, granularity, and the baselines' pool kernel):
//  - snapkv, pyramidkv, the paper allocator: SnapKV's sum over the window queries and the GQA
//    group, average pooling with base's kernel;
//  - xkv with the global allocator: the raw maximum (over the window queries and the group),
//    comparable across layers and heads, max pooling with kXkvPoolKernel (allocator/kv_spec.h;
//    chosen on the dev split, docs/quality-default.md);
//  - its reconstruct profile: the same maximum, pooled with base's kernel; the re-reading scores,
//    unpooled, replace the window's (the service and `xkv eval`'s profile=reconstruct; eval's
//    mix=max max-merges them with the window's).
// full and streaming rank no scores (base, summed and averaged). The window is the last w tokens
// of what is compressed: the whole prompt in the service.
ImportanceOptions ScoringFor(const KvSettings& spec, ImportanceOptions base);

// Per-layer profiles of complete scores (BuildLayerProfile per layer).
absl::StatusOr<std::vector<LayerProfile>> BuildProfiles(const CollectedScores& scores);

// The same with one row per KV head (query-head rows summed into their KV head): what
// per-(layer, KV head) budgets solve over (LayerProfile::sorted_scores [n_kv_heads, P]).
absl::StatusOr<std::vector<LayerProfile>> KvHeadProfiles(const CollectedScores& scores);

// Per-layer budgets for the layers of `scores` (PlanBudgets of allocator/kv_spec.h on their
// profiles). xkv needs complete scores (FAILED_PRECONDITION otherwise); baselines use them, when
// complete, only to report the retention achieved.
absl::StatusOr<PolicyBudgets> SolveBudgets(const CollectedScores& scores, const ModelConfig& config,
                                           const KvSettings& spec);

// Kept slots [kv_head] of one layer for budget b (prefix selection ∪ window [P, T)). Top-score
// selection needs that layer's scores; query-head scores are summed into their KV head.
// head_budgets: [n_kv_heads] per-head budgets (PolicyBudgets::head_budgets[layer]); when given,
// head h keeps its own head_budgets[h] prefix tokens and `budget` is unused.
absl::StatusOr<std::vector<std::vector<int32_t>>> KeptSlots(
    const CollectedScores& scores, int layer, int64_t budget, const PolicyOptions& policy,
    absl::Span<const int64_t> head_budgets = {});

// KeptSlots of every layer of the scores (budgets[layer - layer_begin]), computed on a few threads.
// head_budgets: PolicyBudgets::head_budgets ([L][n_kv_heads]) or empty.
absl::StatusOr<std::vector<std::vector<std::vector<int32_t>>>> KeptSlotsForLayers(
    const CollectedScores& scores, absl::Span<const int64_t> budgets, const PolicyOptions& policy,
    absl::Span<const std::vector<int64_t>> head_budgets = {});

// A plan with budgets and no kept slots yet (filled layer by layer with KeptSlots); a keep-all
// plan for policy full or T <= w.
AllocationPlan PlanSkeleton(const CollectedScores& scores, const KvSettings& spec,
                            PolicyBudgets budgets);
// After every layer's kept slots are in: fills budgets.average_retention from the scores (when
// complete and the rule keeps top scores) if the policy did not.
absl::Status FinishPlan(const CollectedScores& scores, const KvSettings& spec,
                        AllocationPlan* plan);

// Budgets + kept slots for every layer.
absl::StatusOr<AllocationPlan> PlanAllocation(const CollectedScores& scores,
                                              const ModelConfig& config, const KvSettings& spec);
// The same with budgets decided elsewhere (e.g. the sampled profile store's running mean).
absl::StatusOr<AllocationPlan> PlanWithBudgets(const CollectedScores& scores,
                                               const KvSettings& spec, PolicyBudgets budgets);

// Compacts one layer right after its prompt was written (length == prompt_len, else
// FAILED_PRECONDITION); releases the evicted memory.
absl::Status CompactLayer(KvCache& cache, int layer, int64_t prompt_len,
                          absl::Span<const std::vector<int32_t>> kept);
// Compacts every layer of the plan (no-op when !plan.compress).
absl::Status ApplyAllocation(KvCache& cache, const AllocationPlan& plan);

// A report of `plan` whose per-layer holdings come from `held(layer)` = {tokens, bytes}; the
// full-cache size counts bytes_per_token per token per layer. Any engine (CPU cache, GPU pool).
using LayerHeld = std::function<std::pair<int64_t, int64_t>(int layer)>;
AllocationReport MakeReport(const AllocationPlan& plan, const LayerHeld& held,
                            int64_t bytes_per_token);

// Sizes of `cache` after `plan` was applied: the tokens (and their bytes) each layer holds, not
// the capacity reserved beyond them.
AllocationReport MakeReport(const KvCache& cache, const AllocationPlan& plan,
                            const ModelConfig& config);

// Value-norm weighting (LAVa, arXiv 2509.09754): every prefix score of `scores` (KV-head rows)
// times the L2 norm of that token's value vector in `cache`, which must hold the scored prompt's
// tokens in every scored layer (FAILED_PRECONDITION otherwise). Sinks with near-zero values lose
// rank; a token that attends little but carries a large value gains.
absl::Status WeightByValueNorm(const KvCache& cache, CollectedScores* scores);

}  // namespace xkv

#endif  // XKV_MODEL_KV_ALLOCATION_H_
