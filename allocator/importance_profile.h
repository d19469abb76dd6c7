// Per-layer importance profile (DESIGN.md §3.2): from one layer's pooled scores [heads, P] build
// the total mass S_l, per-head descending scores, the gain curve g_l(k) and the retention R_l(b).
#ifndef XKV_ALLOCATOR_IMPORTANCE_PROFILE_H_
#define XKV_ALLOCATOR_IMPORTANCE_PROFILE_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace xkv {

struct LayerProfile {
  int heads = 0;            // rows of the scores (KV heads, or query heads)
  int64_t prefix_len = 0;   // P = T - w: evictable prompt positions
  double total_mass = 0.0;  // S_l = sum of all scores of the layer
  // fp32 [heads, P]: each head's scores sorted descending. Empty when built from gains only.
  std::vector<float> sorted_scores;
  // [P]: gain[k-1] = g_l(k) = sum_h (k-th largest score of head h) / S_l; non-increasing, >= 0.
  std::vector<double> gain;
  // [P+1]: retention[b] = R_l(b) = sum_{k<=b} g_l(k); non-decreasing. When S_l == 0 there is no
  // mass to lose: all gains are 0 and retention[b] = 1 for every b (0/0 taken as "all retained").
  std::vector<double> retention;
};

// scores: fp32 [heads, prefix_len], non-negative and finite (LaunchImportance's output).
absl::StatusOr<LayerProfile> BuildLayerProfile(absl::Span<const float> scores, int heads,
                                               int64_t prefix_len);

// A profile from a gain curve alone (synthetic curves, benchmarks, tests, the coordinator after it
// received a stage's gains). gains: [P], non-negative, finite, non-increasing; retention is their
// prefix sum. total_mass is set to 1.
absl::StatusOr<LayerProfile> LayerProfileFromGains(std::vector<double> gains);

}  // namespace xkv

#endif  // XKV_ALLOCATOR_IMPORTANCE_PROFILE_H_
