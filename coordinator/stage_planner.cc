#include "coordinator/stage_planner.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace xkv {
namespace {

constexpr int64_t kInf = std::numeric_limits<int64_t>::max();

absl::Status ValidateOptions(const ModelCostInputs& model, const StagePlannerOptions& options) {
  const size_t L = model.weight_bytes.size();
  if (L == 0) return absl::InvalidArgumentError("stage planner: the model has no layers");
  if (model.kv_bytes_per_token.size() != L) {
    return absl::InvalidArgumentError(absl::StrCat("stage planner: kv_bytes_per_token has ",
                                                   model.kv_bytes_per_token.size(),
                                                   " entries, expected one per layer (", L, ")"));
  }
  if (options.concurrency < 0 || options.expected_prompt_tokens < 0 ||
      options.expected_new_tokens < 0 || options.window < 0) {
    return absl::InvalidArgumentError(
        "stage planner: concurrency, expected tokens and window must be >= 0");
  }
  if (options.block_tokens <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("stage planner: block_tokens must be >= 1, got ", options.block_tokens));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::vector<int64_t>> ExpectedKvBytes(const ModelCostInputs& model,
                                                     absl::Span<const double> kept_fraction,
                                                     const StagePlannerOptions& options) {
  RETURN_IF_ERROR(ValidateOptions(model, options));
  const size_t L = model.weight_bytes.size();
  if (!kept_fraction.empty() && kept_fraction.size() != L) {
    return absl::InvalidArgumentError(absl::StrCat("stage planner: the profile has ",
                                                   kept_fraction.size(), " layers, the model ", L));
  }
  const int64_t window = std::min<int64_t>(options.window, options.expected_prompt_tokens);
  const int64_t prefix = options.expected_prompt_tokens - window;
  std::vector<int64_t> bytes(L);
  for (size_t l = 0; l < L; ++l) {
    const double f = kept_fraction.empty() ? 1.0 : kept_fraction[l];
    if (!(f >= 0.0 && f <= 1.0)) {
      return absl::InvalidArgumentError(
          absl::StrCat("stage planner: kept fraction of layer ", l, " is ", f, ", not in [0, 1]"));
    }
    const int64_t kept = static_cast<int64_t>(std::ceil(f * static_cast<double>(prefix)));
    const int64_t tokens = kept + window + options.expected_new_tokens;
    const int64_t blocks = (tokens + options.block_tokens - 1) / options.block_tokens;
    bytes[l] = options.concurrency * blocks * options.block_tokens * model.kv_bytes_per_token[l];
  }
  return bytes;
}

absl::StatusOr<std::vector<int>> PartitionLayers(absl::Span<const int64_t> layer_costs,
                                                 int num_stages, int64_t first_stage_extra,
                                                 int64_t last_stage_extra) {
  const int L = static_cast<int>(layer_costs.size());
  const int S = num_stages;
  if (S < 1 || S > L) {
    return absl::InvalidArgumentError(absl::StrCat("stage planner: ", S, " stages for ", L,
                                                   " layers; need 1 <= stages <= layers"));
  }
  std::vector<int64_t> prefix(L + 1, 0);
  for (int l = 0; l < L; ++l) {
    if (layer_costs[l] < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("stage planner: layer ", l, " has negative cost ", layer_costs[l]));
    }
    prefix[l + 1] = prefix[l] + layer_costs[l];
  }
  auto cost = [&](int s, int i, int j) {
    return prefix[j] - prefix[i] + (s == 0 ? first_stage_extra : 0) +
           (s == S - 1 ? last_stage_extra : 0);
  };
  // best[s][i]: min over partitions of layers [i, L) into stages s..S-1 of the max stage cost.
  std::vector<std::vector<int64_t>> best(S + 1, std::vector<int64_t>(L + 1, kInf));
  best[S][L] = 0;
  for (int s = S - 1; s >= 0; --s) {
    const int stages_after = S - 1 - s;
    for (int i = s; i + stages_after < L; ++i) {
      int64_t b = kInf;
      for (int j = i + 1; j + stages_after <= L; ++j) {
        if (best[s + 1][j] == kInf) continue;
        b = std::min(b, std::max(cost(s, i, j), best[s + 1][j]));
      }
      best[s][i] = b;
    }
  }
  // Forward reconstruction: each stage ends at the smallest j that keeps the optimum.
  const int64_t target = best[0][0];
  std::vector<int> ends;
  int i = 0;
  for (int s = 0; s < S; ++s) {
    const int stages_after = S - 1 - s;
    for (int j = i + 1; j + stages_after <= L; ++j) {
      if (best[s + 1][j] != kInf && cost(s, i, j) <= target && best[s + 1][j] <= target) {
        ends.push_back(j);
        i = j;
        break;
      }
    }
  }
  return ends;
}

absl::StatusOr<StagePlan> RecostPlan(const StagePlan& plan, const ModelCostInputs& model,
                                     absl::Span<const double> kept_fraction,
                                     const StagePlannerOptions& options) {
  ASSIGN_OR_RETURN(std::vector<int64_t> kv, ExpectedKvBytes(model, kept_fraction, options));
  const int S = static_cast<int>(plan.stages.size());
  StagePlan out;
  for (int s = 0; s < S; ++s) {
    StageRange r;
    r.layer_begin = plan.stages[s].layer_begin;
    r.layer_end = plan.stages[s].layer_end;
    if (r.layer_begin < 0 || r.layer_end > static_cast<int>(kv.size()) ||
        r.layer_begin >= r.layer_end) {
      return absl::InvalidArgumentError(absl::StrCat("stage planner: stage ", s, " range [",
                                                     r.layer_begin, ",", r.layer_end,
                                                     ") does not fit the model"));
    }
    for (int l = r.layer_begin; l < r.layer_end; ++l) {
      r.weight_bytes += model.weight_bytes[l];
      r.kv_bytes += kv[l];
    }
    if (s == 0) r.weight_bytes += model.first_stage_bytes;
    if (s == S - 1) r.weight_bytes += model.last_stage_bytes;
    r.cost = r.weight_bytes + r.kv_bytes;
    out.bottleneck = std::max(out.bottleneck, r.cost);
    out.total_cost += r.cost;
    out.stages.push_back(r);
  }
  return out;
}

absl::StatusOr<StagePlan> PlanStages(const ModelCostInputs& model,
                                     absl::Span<const double> kept_fraction,
                                     const StagePlannerOptions& options) {
  ASSIGN_OR_RETURN(std::vector<int64_t> kv, ExpectedKvBytes(model, kept_fraction, options));
  std::vector<int64_t> costs(kv.size());
  for (size_t l = 0; l < kv.size(); ++l) costs[l] = model.weight_bytes[l] + kv[l];
  ASSIGN_OR_RETURN(
      std::vector<int> ends,
      PartitionLayers(costs, options.num_stages, model.first_stage_bytes, model.last_stage_bytes));
  StagePlan skeleton;
  int begin = 0;
  for (int end : ends) {
    skeleton.stages.push_back(StageRange{begin, end});
    begin = end;
  }
  return RecostPlan(skeleton, model, kept_fraction, options);
}

absl::StatusOr<bool> ShouldReplan(const StagePlan& current, const ModelCostInputs& model,
                                  absl::Span<const double> kept_fraction,
                                  const StagePlannerOptions& options, StagePlan* optimal) {
  ASSIGN_OR_RETURN(StagePlan recosted, RecostPlan(current, model, kept_fraction, options));
  ASSIGN_OR_RETURN(StagePlan best, PlanStages(model, kept_fraction, options));
  const bool replan = static_cast<double>(recosted.bottleneck) >
                      static_cast<double>(best.bottleneck) * (1.0 + options.replan_threshold);
  if (optimal != nullptr) *optimal = std::move(best);
  return replan;
}

std::string DescribePlan(const StagePlan& plan) {
  std::string out;
  for (const StageRange& r : plan.stages) {
    if (!out.empty()) out += " ";
    absl::StrAppend(&out, "[", r.layer_begin, ",", r.layer_end, ")");
  }
  return out;
}

}  // namespace xkv
