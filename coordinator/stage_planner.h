// Stage planning (architecture.md §5): split L layers into S contiguous, non-empty stages so
// that the most expensive stage is as cheap as possible (exact min-max partition). A layer's cost
// is its weight bytes plus the KV bytes it is expected to hold at the configured concurrency with
// the current allocation profile (per-layer kept fraction of the prompt); the embedding is charged
// to the first stage and the final norm + lm_head to the last. Because decode is memory-bandwidth
// bound, equal bytes also means roughly equal step time.
//
// Exactness: PartitionLayers is a dynamic program over (stages used, layers covered), O(S·L²) with
// prefix sums — exact by construction (L ≤ a few hundred). Ties between optimal partitions are
// broken towards the lexicographically smallest vector of stage end indices.
#ifndef XKV_COORDINATOR_STAGE_PLANNER_H_
#define XKV_COORDINATOR_STAGE_PLANNER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace xkv {

// What the planner needs to know about the model.
struct ModelCostInputs {
  std::vector<int64_t> weight_bytes;        // [L] bytes of layer l's weights as loaded
  std::vector<int64_t> kv_bytes_per_token;  // [L] K+V bytes one token costs in layer l's cache
  int64_t first_stage_bytes = 0;            // token embedding (held by stage 0)
  int64_t last_stage_bytes = 0;             // final norm + lm_head (held by stage S-1)
};

struct StagePlannerOptions {
  int num_stages = 1;
  int64_t concurrency = 8;                // expected concurrent sequences
  int64_t expected_prompt_tokens = 2048;  // T of a typical request
  int64_t expected_new_tokens = 256;      // generated tokens of a typical request
  int window = 8;                         // w: tokens every layer keeps on top of its budget
  int block_tokens = 16;                  // KV is paged in blocks of this many tokens
  // Re-plan when the current partition's bottleneck under the new costs exceeds the optimum by
  // more than this fraction (ShouldReplan).
  double replan_threshold = 0.10;
};

struct StageRange {
  int layer_begin = 0;  // first layer of the stage
  int layer_end = 0;    // one past the last layer
  int64_t weight_bytes = 0;
  int64_t kv_bytes = 0;  // expected KV bytes at the planned concurrency
  int64_t cost = 0;      // weight_bytes + kv_bytes (+ embedding / lm_head on the end stages)
};

struct StagePlan {
  std::vector<StageRange> stages;  // [S], contiguous, covering [0, L)
  int64_t bottleneck = 0;          // max stage cost
  int64_t total_cost = 0;
};

// Expected KV bytes per layer: concurrency · blocks(b_l + w + new) · block_tokens · bytes_l with
// b_l = kept_fraction[l] · (T - w), blocks rounded up. kept_fraction: [L] in [0, 1]; empty = 1
// (a full cache). INVALID_ARGUMENT on size mismatches or fractions outside [0, 1].
absl::StatusOr<std::vector<int64_t>> ExpectedKvBytes(const ModelCostInputs& model,
                                                     absl::Span<const double> kept_fraction,
                                                     const StagePlannerOptions& options);

// Exact min-max partition of `layer_costs` (≥ 0) into `num_stages` contiguous non-empty ranges;
// first/last_stage_extra are added to stage 0 / stage S-1. INVALID_ARGUMENT when num_stages is
// outside [1, L] or a cost is negative. Returns the end index of every stage ([S], last = L).
absl::StatusOr<std::vector<int>> PartitionLayers(absl::Span<const int64_t> layer_costs,
                                                 int num_stages, int64_t first_stage_extra = 0,
                                                 int64_t last_stage_extra = 0);

// The full plan: costs from ExpectedKvBytes, partition, per-stage bytes.
absl::StatusOr<StagePlan> PlanStages(const ModelCostInputs& model,
                                     absl::Span<const double> kept_fraction,
                                     const StagePlannerOptions& options);

// The same stage boundaries as `plan`, re-costed with new inputs.
absl::StatusOr<StagePlan> RecostPlan(const StagePlan& plan, const ModelCostInputs& model,
                                     absl::Span<const double> kept_fraction,
                                     const StagePlannerOptions& options);

// True when `current`, re-costed under the new profile, has a bottleneck more than
// options.replan_threshold above the optimal plan's. *optimal (optional) receives that plan.
absl::StatusOr<bool> ShouldReplan(const StagePlan& current, const ModelCostInputs& model,
                                  absl::Span<const double> kept_fraction,
                                  const StagePlannerOptions& options, StagePlan* optimal = nullptr);

// "[0,10) [10,20) [20,30)".
std::string DescribePlan(const StagePlan& plan);

}  // namespace xkv

#endif  // XKV_COORDINATOR_STAGE_PLANNER_H_
