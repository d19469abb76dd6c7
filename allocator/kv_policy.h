// KV cache policies behind one interface (DESIGN.md §3.6): per-layer budgets of kept prefix tokens
// (the same unit for every policy, so comparisons are at equal tokens/bytes) plus the rule that
// picks which tokens a layer keeps. The w window tokens are always kept on top of the budget.
#ifndef XKV_ALLOCATOR_KV_POLICY_H_
#define XKV_ALLOCATOR_KV_POLICY_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "allocator/budget_solver.h"
#include "allocator/importance_profile.h"

namespace xkv {

enum class PolicyKind { kFull, kStreaming, kSnapKv, kPyramidKv, kXkv };

// "full" | "streaming" | "snapkv" | "pyramidkv" | "xkv" (case-insensitive).
absl::StatusOr<PolicyKind> ParsePolicy(absl::string_view name);
absl::string_view PolicyName(PolicyKind kind);

// Where the importance profile comes from (DESIGN.md §3.5). kReconstruct (KVzip): the scores come
// from re-reading the prompt after its prefill (model/reconstruct_scorer.h), about one extra
// prefill; query-agnostic. `xkv eval` only for now; the service and `xkv generate` refuse it.
enum class ProfileModeKind { kPerRequest, kOnePass, kSampled, kReconstruct };
struct ProfileMode {
  ProfileModeKind kind = ProfileModeKind::kPerRequest;
  double sample_rate = 1.0;  // ρ in (0, 1]; only meaningful for kSampled
};
// "per_request" | "one_pass" | "sampled:<ρ>" with ρ in (0, 1] | "reconstruct".
absl::StatusOr<ProfileMode> ParseProfileMode(absl::string_view text);
std::string ProfileModeName(const ProfileMode& mode);

// How a layer chooses its kept prefix tokens for a budget b.
enum class SelectionRule {
  kAll,               // keep the whole prefix (full)
  kTopScore,          // per head the b highest pooled scores, ties by lower index
  kSinksAndRecent,    // the first sink tokens and the last b - sinks prefix tokens (streaming)
  kSinksAndTopScore,  // the first sink tokens, then per head the b - sinks highest scores (xkv)
};

// How xkv splits a budget over layers (DESIGN.md §3.3).
enum class AllocatorKind {
  // Raw scores (never divided by a layer's own total), one threshold over all layers with bytes as
  // the cost, each layer within [floor·s_l, cap·s_l] of its uniform share s_l (floor 1 = uniform).
  kGlobal,
  // The paper: gains divided by each layer's total S_l, no floors or caps.
  kPaper,
  // Per-model head budgets (HeadKV / DuoAttention style, docs/quality-heads.md): budgets per
  // (layer, KV head) fixed by calibrated head weights w_lh (AllocatorParams::head_weights, `xkv
  // calibrate --heads 1`), not by the prompt: each head floor·s (s its uniform share), the rest of
  // the target split in proportion to w_lh, each head at most the prefix (the excess goes to the
  // others). The prompt's scores only choose the tokens inside each head. Token or byte targets.
  kHeads,
};
struct AllocatorParams {
  AllocatorKind kind = AllocatorKind::kGlobal;
  double floor = 0.75;  // alpha in [0, 1]: per-layer floor as a fraction of the uniform share
  double cap = 4.0;     // in [1, 64]: per-layer cap as a multiple of the uniform share
  // Budgets per (layer, KV head) instead of per layer. xkv (global allocator only): one threshold
  // over every head's own raw score curve, bytes as the cost (a head's token costs
  // bytes_per_token / H), each (layer, head) within [floor·s, cap·s] of its uniform share s (so
  // every layer stays within its cap); floor 1 = uniform SnapKV. snapkv / pyramidkv: AdaKV — each
  // layer keeps its budget b_l, split over its heads by one threshold per layer, each head at
  // least floor·b_l (AdaKV's alpha = 0.2). Needs each head's scores (LayerProfile::
  // sorted_scores with one row per KV head).
  bool per_head = false;
  // in [0, 1]: the share of each head's ranked budget (after the sinks) given to the most recent
  // prefix tokens instead of the top scores (H2O's recent half; 0 = scores only). xkv only.
  double recent = 0.0;
  // Per-layer sensitivity weights w_l > 0 (model/layer_calibration.h, `xkv calibrate`): the global
  // allocator (per layer and per head) multiplies layer l's raw score curves by w_l before the one
  // threshold; floors and caps are unchanged. Empty = none (the same budgets as before, bit for
  // bit). The paper allocator and the baselines ignore them.
  std::vector<double> layer_weights;
  // Per-(layer, KV head) weights w_lh > 0, [L * H] layer-major (model/layer_calibration.h, `xkv
  // calibrate --heads 1`): allocator kHeads's shares. Empty for the other allocators.
  std::vector<double> head_weights;
  // Allocator kHeads: the shares follow w_lh ^ head_power (1: the weights as measured; below 1
  // flatter, above sharper). 1.5: the GPU dev split's pick among 0.5 / 0.75 / 1 / 1.5
  // (docs/quality-heads.md, session 14). In [kMinHeadPower, kMaxHeadPower] (kv_spec.h); `xkv
  // eval`'s hpow= for dev searches.
  double head_power = 1.5;
  // Nothing named (serve / generate flags, a request, an eval method without allocator=): the
  // default rule picks `kind` for each spec (kv_spec.h ResolveDefaultAllocator), and a floor not
  // named follows the kind (DefaultFloor).
  bool kind_by_default = false;
  bool floor_by_default = false;
};

// The one rule text: allocator kHeads takes no retention target (its budgets do not depend on
// the prompt's scores). ValidateSettings refuses it at the edge; the policy keeps it as a backstop.
absl::Status HeadsRetentionError();

// Whether the budgets are per (layer, KV head): per_head, or allocator kHeads (stages must then
// hold a count per KV head).
inline bool PerHeadBudgets(const AllocatorParams& a) {
  return a.per_head || a.kind == AllocatorKind::kHeads;
}

// Exactly one of the three budget targets.
struct BudgetTarget {
  enum class Kind { kTotalTokens, kRetention, kBytes };
  Kind kind = Kind::kTotalTokens;
  int64_t total_tokens = 0;  // kTotalTokens: sum over layers of kept prefix tokens
  double retention = 1.0;    // kRetention: average retention R in (0, 1]; xkv only
  int64_t total_bytes = 0;   // kBytes: sum over layers of bytes_per_token[l] * b_l
  static BudgetTarget Tokens(int64_t n) { return {Kind::kTotalTokens, n, 1.0, 0}; }
  static BudgetTarget Retention(double r) { return {Kind::kRetention, 0, r, 0}; }
  static BudgetTarget Bytes(int64_t m) { return {Kind::kBytes, 0, 1.0, m}; }
};

struct PolicyInput {
  int num_layers = 0;
  int64_t prefix_len = 0;                     // P = T - w
  absl::Span<const LayerProfile> profiles;    // [L]; required by xkv, optional otherwise
  absl::Span<const int64_t> bytes_per_token;  // [L]; required by kBytes targets
};

struct PolicyOptions {
  PolicyKind kind = PolicyKind::kXkv;
  int sink_tokens = 4;         // streaming: attention sinks kept at the start of the prompt
  double pyramid_beta = 20.0;  // pyramidkv: b_min = (N/L) / beta (PyramidKV's default beta)
  AllocatorParams allocator;   // xkv
  SolverOptions solver;        // xkv paper: explicit per-layer floors/ceilings (tests, benches)
};

struct PolicyBudgets {
  // [L] kept prefix tokens per layer; with per-head budgets the layer's LARGEST head budget (the
  // slots a per-layer store must cover).
  std::vector<int64_t> budgets;
  // [L][H] kept prefix tokens per (layer, KV head) with per-head budgets; empty otherwise (every
  // head of layer l keeps budgets[l]). total_tokens is then ceil(sum_{l,h} b_lh / H) and
  // total_bytes sum_{l,h} b_lh * bytes_per_token[l] / H.
  std::vector<std::vector<int64_t>> head_budgets;
  SelectionRule rule = SelectionRule::kTopScore;
  int64_t total_tokens = 0;
  int64_t total_bytes = 0;  // when bytes_per_token was given
  // AverageRetention of the budgets when profiles were given and the rule ranks by score.
  std::optional<double> average_retention;
  bool reachable = true;  // xkv retention target: false when even full layers miss it
};

class KvPolicy {
 public:
  virtual ~KvPolicy() = default;
  virtual PolicyKind kind() const = 0;
  virtual bool needs_profile() const = 0;
  virtual SelectionRule selection() const = 0;
  // INVALID_ARGUMENT for a target outside its range or inputs of the wrong size.
  virtual absl::StatusOr<PolicyBudgets> Budgets(const PolicyInput& input,
                                                const BudgetTarget& target) const = 0;
};

std::unique_ptr<KvPolicy> MakeKvPolicy(const PolicyOptions& options);

// Per head, the sorted (ascending) prefix indices a layer keeps for `budget`.
// scores: fp32 [heads, prefix_len] pooled importance (unused by kAll / kSinksAndRecent).
// recent (the ranking rules): the share of the ranked budget (after the sinks) kept as the most
// recent prefix tokens, floor(recent * (budget - sinks)); the rest goes to the top scores before
// them.
absl::StatusOr<std::vector<std::vector<int64_t>>> SelectKeptTokens(
    absl::Span<const float> scores, int heads, int64_t prefix_len, int64_t budget,
    SelectionRule rule, int sink_tokens = 4, double recent = 0.0);

// The retention the budgets achieve, one definition for every caller: paper — the mean over
// layers of R_l(b_l); global — the fraction of all layers' raw score mass kept,
// sum_l S_l R_l(b_l) / sum_l S_l (1 when there is no mass). Budgets beyond a curve count as all.
double AverageRetention(absl::Span<const LayerProfile> profiles, absl::Span<const int64_t> budgets,
                        AllocatorKind allocator);
// The definition a policy reports: its allocator's for xkv, the paper's for the baselines.
AllocatorKind RetentionDefinition(const PolicyOptions& policy);

// Integer budgets proportional to non-negative `weights` (all-zero weights = uniform), each
// clamped to [0, cap] with the excess redistributed, summing exactly to `total` (largest
// remainder, ties by lower index). Requires 0 <= total <= weights.size() * cap.
std::vector<int64_t> RoundBudgetsToTotal(absl::Span<const double> weights, int64_t total,
                                         int64_t cap);

}  // namespace xkv

#endif  // XKV_ALLOCATOR_KV_POLICY_H_
