#include "model/kv_allocation.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <functional>
#include <numeric>
#include <thread>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace xkv {
namespace {

// Calls fn(i) for i in [0, n) on up to 8 threads (inline when n or the machine is small).
void ParallelOverLayers(int n, const std::function<void(int)>& fn) {
  const int threads =
      std::min({n, 8, static_cast<int>(std::max(1u, std::thread::hardware_concurrency()))});
  if (threads <= 1 || n < 4) {
    for (int i = 0; i < n; ++i) fn(i);
    return;
  }
  std::atomic<int> next{0};
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) {
    pool.emplace_back([&] {
      for (int i = next++; i < n; i = next++) fn(i);
    });
  }
  for (int i = next++; i < n; i = next++) fn(i);
  for (std::thread& t : pool) t.join();
}

}  // namespace

namespace {

int64_t BytesPerToken(const ModelConfig& config) {
  return config.KvBytesPerTokenPerLayer(static_cast<int>(sizeof(float)));
}

bool KeepsEverything(const CollectedScores& scores, const PolicyOptions& policy) {
  return policy.kind == PolicyKind::kFull || scores.prompt_len <= scores.window;
}

std::string KeepAllNote(const CollectedScores& scores, const PolicyOptions& policy) {
  if (scores.prompt_len <= scores.window) {
    return absl::StrCat("prompt of ", scores.prompt_len, " tokens is not longer than the ",
                        "observation window w = ", scores.window, ": nothing to evict, kept whole");
  }
  return absl::StrCat("policy ", PolicyName(policy.kind), ": nothing evicted");
}

// Query-head rows [n_heads, P] summed into their KV heads [n_kv_heads, P] (pooling is linear, so
// this equals kKvHead scores up to rounding).
std::vector<float> SumIntoKvHeads(absl::Span<const float> rows, int heads, int n_kv_heads,
                                  int64_t P) {
  std::vector<float> out(static_cast<size_t>(n_kv_heads) * P, 0.0f);
  const int group = heads / n_kv_heads;
  for (int h = 0; h < heads; ++h) {
    const float* src = rows.data() + h * P;
    float* dst = out.data() + (h / group) * P;
    for (int64_t j = 0; j < P; ++j) dst[j] += src[j];
  }
  return out;
}

absl::Status CheckScoresCover(const CollectedScores& scores, int layer) {
  if (layer < scores.layer_begin || layer >= scores.layer_end) {
    return absl::InvalidArgumentError(absl::StrCat("kv allocation: layer ", layer, " outside [",
                                                   scores.layer_begin, ", ", scores.layer_end,
                                                   ")"));
  }
  if (scores.heads < 1 || scores.n_kv_heads < 1 || scores.heads % scores.n_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("kv allocation: score rows ", scores.heads,
                                                   " not a multiple of KV heads ",
                                                   scores.n_kv_heads));
  }
  return absl::OkStatus();
}

}  // namespace

SelectionRule SelectionFor(const PolicyOptions& policy) {
  return MakeKvPolicy(policy)->selection();
}

ImportanceOptions ScoringFor(const KvSettings& spec, ImportanceOptions base) {
  const bool raw = spec.policy == PolicyKind::kXkv && spec.allocator.kind != AllocatorKind::kPaper;
  base.reduce = raw ? ScoreReduce::kMax : ScoreReduce::kSum;
  base.pool = raw ? ScorePool::kMax : ScorePool::kAvg;
  if (raw && spec.profile.kind != ProfileModeKind::kReconstruct) base.pool_kernel = kXkvPoolKernel;
  return base;
}

absl::StatusOr<std::vector<LayerProfile>> BuildProfiles(const CollectedScores& scores) {
  if (!scores.complete()) {
    return absl::FailedPreconditionError("kv allocation: scores of some layers are missing");
  }
  // Layers are independent: build them on a few threads (the sorts dominate at long prompts).
  const int L = scores.num_layers();
  std::vector<absl::StatusOr<LayerProfile>> built(L, absl::UnknownError("not built"));
  ParallelOverLayers(L, [&](int i) {
    built[i] =
        BuildLayerProfile(scores.layer(scores.layer_begin + i), scores.heads, scores.prefix_len());
  });
  std::vector<LayerProfile> out;
  out.reserve(L);
  for (absl::StatusOr<LayerProfile>& p : built) {
    if (!p.ok()) return p.status();
    out.push_back(*std::move(p));
  }
  return out;
}

absl::StatusOr<std::vector<LayerProfile>> KvHeadProfiles(const CollectedScores& scores) {
  if (scores.heads == scores.n_kv_heads) return BuildProfiles(scores);
  if (!scores.complete()) {
    return absl::FailedPreconditionError("kv allocation: scores of some layers are missing");
  }
  // Per-head budgets are per KV head: query-head rows summed into their KV heads first.
  const int64_t P = scores.prefix_len();
  std::vector<LayerProfile> profiles;
  for (int l = scores.layer_begin; l < scores.layer_end; ++l) {
    ASSIGN_OR_RETURN(LayerProfile p, BuildLayerProfile(SumIntoKvHeads(scores.layer(l), scores.heads,
                                                                      scores.n_kv_heads, P),
                                                       scores.n_kv_heads, P));
    profiles.push_back(std::move(p));
  }
  return profiles;
}

absl::StatusOr<PolicyBudgets> SolveBudgets(const CollectedScores& scores, const ModelConfig& config,
                                           const KvSettings& spec) {
  RETURN_IF_ERROR(ValidateSettings(spec));
  const int L = scores.num_layers();
  const int64_t P = scores.prefix_len();
  if (L < 1) return absl::InvalidArgumentError("kv allocation: no layers");
  std::vector<LayerProfile> profiles;
  const bool have = scores.complete() && P > 0;
  if (NeedsProfile(spec.policy) && !have) {
    return absl::FailedPreconditionError(absl::StrCat(
        "kv allocation: policy xkv needs the importance scores of all ", L, " layers"));
  }
  if (have && NeedsScores(spec.policy)) {
    if (spec.allocator.per_head) {
      ASSIGN_OR_RETURN(profiles, KvHeadProfiles(scores));
    } else {
      ASSIGN_OR_RETURN(profiles, BuildProfiles(scores));
    }
  }
  return PlanBudgets(profiles, spec, {L, P, BytesPerToken(config)});
}

absl::StatusOr<std::vector<std::vector<int32_t>>> KeptSlots(
    const CollectedScores& scores, int layer, int64_t budget, const PolicyOptions& policy,
    absl::Span<const int64_t> head_budgets) {
  RETURN_IF_ERROR(CheckScoresCover(scores, layer));
  if (!head_budgets.empty() && static_cast<int>(head_budgets.size()) != scores.n_kv_heads) {
    return absl::InvalidArgumentError(absl::StrCat("kv allocation: ", head_budgets.size(),
                                                   " head budgets for ", scores.n_kv_heads,
                                                   " KV heads"));
  }
  const SelectionRule rule = SelectionFor(policy);
  const int64_t P = scores.prefix_len(), T = scores.prompt_len;
  std::vector<float> kv_rows;
  absl::Span<const float> rows;
  if (NeedsScores(policy.kind) && P > 0) {
    if (!scores.has_layer(layer)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "kv allocation: policy ", PolicyName(policy.kind), " needs the scores of layer ", layer));
    }
    rows = scores.layer(layer);
    if (scores.heads != scores.n_kv_heads) {
      kv_rows = SumIntoKvHeads(rows, scores.heads, scores.n_kv_heads, P);
      rows = kv_rows;
    }
  }
  std::vector<std::vector<int64_t>> prefix;
  if (head_budgets.empty()) {
    ASSIGN_OR_RETURN(prefix, SelectKeptTokens(rows, scores.n_kv_heads, P, budget, rule,
                                              policy.sink_tokens, policy.allocator.recent));
  } else {
    for (int h = 0; h < scores.n_kv_heads; ++h) {
      ASSIGN_OR_RETURN(
          std::vector<std::vector<int64_t>> one,
          SelectKeptTokens(rows.empty() ? rows : rows.subspan(h * P, P), 1, P, head_budgets[h],
                           rule, policy.sink_tokens, policy.allocator.recent));
      prefix.push_back(std::move(one[0]));
    }
  }
  std::vector<std::vector<int32_t>> kept(scores.n_kv_heads);
  for (int h = 0; h < scores.n_kv_heads; ++h) {
    kept[h].reserve(prefix[h].size() + (T - P));
    for (int64_t j : prefix[h]) kept[h].push_back(static_cast<int32_t>(j));
    for (int64_t j = P; j < T; ++j) kept[h].push_back(static_cast<int32_t>(j));
  }
  return kept;
}

absl::StatusOr<std::vector<std::vector<std::vector<int32_t>>>> KeptSlotsForLayers(
    const CollectedScores& scores, absl::Span<const int64_t> budgets, const PolicyOptions& policy,
    absl::Span<const std::vector<int64_t>> head_budgets) {
  const int L = scores.num_layers();
  if (static_cast<int>(budgets.size()) != L ||
      (!head_budgets.empty() && static_cast<int>(head_budgets.size()) != L)) {
    return absl::InvalidArgumentError(absl::StrCat("kv allocation: ", budgets.size(), " budgets (",
                                                   head_budgets.size(), " per head) for ", L,
                                                   " layers"));
  }
  std::vector<absl::StatusOr<std::vector<std::vector<int32_t>>>> kept(
      L, absl::UnknownError("not selected"));
  ParallelOverLayers(L, [&](int i) {
    kept[i] = KeptSlots(scores, scores.layer_begin + i, budgets[i], policy,
                        head_budgets.empty() ? absl::Span<const int64_t>() : head_budgets[i]);
  });
  std::vector<std::vector<std::vector<int32_t>>> out;
  out.reserve(L);
  for (auto& k : kept) {
    if (!k.ok()) return k.status();
    out.push_back(*std::move(k));
  }
  return out;
}

AllocationPlan PlanSkeleton(const CollectedScores& scores, const KvSettings& spec,
                            PolicyBudgets budgets) {
  const PolicyOptions policy = ToPolicyOptions(spec);
  AllocationPlan plan;
  plan.layer_begin = scores.layer_begin;
  plan.layer_end = scores.layer_end;
  plan.prompt_len = scores.prompt_len;
  plan.prefix_len = scores.prefix_len();
  plan.window = scores.window;
  plan.policy = policy.kind;
  plan.compress = !KeepsEverything(scores, policy);
  if (!plan.compress) {
    plan.note = KeepAllNote(scores, policy);
    budgets.budgets.assign(scores.num_layers(), plan.prefix_len);
    budgets.rule = SelectionRule::kAll;
    budgets.total_tokens = plan.prefix_len * scores.num_layers();
    budgets.average_retention = 1.0;
    budgets.reachable = true;
  } else {
    plan.kept.resize(scores.num_layers());
  }
  plan.budgets = std::move(budgets);
  return plan;
}

absl::Status FinishPlan(const CollectedScores& scores, const KvSettings& spec,
                        AllocationPlan* plan) {
  if (!plan->compress || plan->budgets.average_retention.has_value()) return absl::OkStatus();
  if (!NeedsScores(spec.policy) || !scores.complete()) return absl::OkStatus();
  ASSIGN_OR_RETURN(std::vector<LayerProfile> profiles, BuildProfiles(scores));
  plan->budgets.average_retention =
      AverageRetention(profiles, plan->budgets.budgets, RetentionDefinition(ToPolicyOptions(spec)));
  return absl::OkStatus();
}

absl::StatusOr<AllocationPlan> PlanWithBudgets(const CollectedScores& scores,
                                               const KvSettings& spec, PolicyBudgets budgets) {
  const PolicyOptions policy = ToPolicyOptions(spec);
  if (!KeepsEverything(scores, policy) &&
      static_cast<int>(budgets.budgets.size()) != scores.num_layers()) {
    return absl::InvalidArgumentError(absl::StrCat("kv allocation: ", budgets.budgets.size(),
                                                   " budgets for ", scores.num_layers(),
                                                   " layers"));
  }
  AllocationPlan plan = PlanSkeleton(scores, spec, std::move(budgets));
  if (!plan.compress) return plan;
  ASSIGN_OR_RETURN(plan.kept, KeptSlotsForLayers(scores, plan.budgets.budgets, policy,
                                                 plan.budgets.head_budgets));
  RETURN_IF_ERROR(FinishPlan(scores, spec, &plan));
  return plan;
}

absl::StatusOr<AllocationPlan> PlanAllocation(const CollectedScores& scores,
                                              const ModelConfig& config, const KvSettings& spec) {
  if (KeepsEverything(scores, ToPolicyOptions(spec))) {
    RETURN_IF_ERROR(ValidateSettings(spec));
    return PlanSkeleton(scores, spec, PolicyBudgets{});
  }
  ASSIGN_OR_RETURN(PolicyBudgets budgets, SolveBudgets(scores, config, spec));
  return PlanWithBudgets(scores, spec, std::move(budgets));
}

absl::Status CompactLayer(KvCache& cache, int layer, int64_t prompt_len,
                          absl::Span<const std::vector<int32_t>> kept) {
  if (layer < cache.layer_begin() || layer >= cache.layer_end()) {
    return absl::InvalidArgumentError(absl::StrCat("kv allocation: layer ", layer,
                                                   " not in the cache's [", cache.layer_begin(),
                                                   ", ", cache.layer_end(), ")"));
  }
  if (cache.length(layer) != prompt_len) {
    return absl::FailedPreconditionError(
        absl::StrCat("kv allocation: layer ", layer, " holds ", cache.length(layer),
                     " tokens but the plan is for a prompt of ", prompt_len,
                     "; compact right after the prefill, before decoding"));
  }
  return cache.Compact(layer, kept);
}

absl::Status ApplyAllocation(KvCache& cache, const AllocationPlan& plan) {
  if (!plan.compress) return absl::OkStatus();
  if (static_cast<int>(plan.kept.size()) != plan.layer_end - plan.layer_begin) {
    return absl::InvalidArgumentError("kv allocation: plan without kept slots for every layer");
  }
  for (int l = plan.layer_begin; l < plan.layer_end; ++l) {
    RETURN_IF_ERROR(CompactLayer(cache, l, plan.prompt_len, plan.kept[l - plan.layer_begin]));
  }
  return absl::OkStatus();
}

AllocationReport MakeReport(const AllocationPlan& plan, const LayerHeld& held,
                            int64_t bytes_per_token) {
  AllocationReport r;
  r.policy = plan.policy;
  r.prompt_len = plan.prompt_len;
  r.prefix_len = plan.prefix_len;
  r.window = plan.window;
  r.compressed = plan.compress;
  r.note = plan.note;
  r.average_retention = plan.budgets.average_retention;
  r.reachable = plan.budgets.reachable;
  for (int l = plan.layer_begin; l < plan.layer_end; ++l) {
    LayerAllocation a;
    a.layer = l;
    const size_t i = l - plan.layer_begin;
    a.kept_prefix = i < plan.budgets.budgets.size() ? plan.budgets.budgets[i] : plan.prefix_len;
    if (i < plan.budgets.head_budgets.size() && !plan.budgets.head_budgets[i].empty()) {
      const std::vector<int64_t>& heads = plan.budgets.head_budgets[i];
      const int64_t n = static_cast<int64_t>(heads.size());
      a.kept_prefix = (std::accumulate(heads.begin(), heads.end(), int64_t{0}) + n - 1) / n;
    }
    std::tie(a.tokens_held, a.bytes_held) = held(l);
    r.kept_prefix_total += a.kept_prefix;
    r.kv_bytes_held += a.bytes_held;
    r.layers.push_back(a);
  }
  r.kv_bytes_full =
      static_cast<int64_t>(plan.layer_end - plan.layer_begin) * plan.prompt_len * bytes_per_token;
  return r;
}

AllocationReport MakeReport(const KvCache& cache, const AllocationPlan& plan,
                            const ModelConfig& config) {
  // The tokens each layer holds, as the GPU engine's report counts them: not the capacity a
  // cache may have reserved for the tokens still to be generated (a 20-token prompt in a cache
  // reserved for 64 read "320% of a full cache").
  const int64_t per_token = BytesPerToken(config);
  return MakeReport(
      plan,
      [&cache, per_token](int l) {
        // Per-head budgets: each head's rows cost per_token / n_kv_heads.
        return std::pair<int64_t, int64_t>(cache.length(l),
                                           cache.head_rows(l) * (per_token / cache.n_kv_heads()));
      },
      per_token);
}

absl::Status WeightByValueNorm(const KvCache& cache, CollectedScores* scores) {
  if (scores->granularity != ScoreGranularity::kKvHead) {
    return absl::InvalidArgumentError("value-norm weighting needs KV-head scores");
  }
  const int64_t P = scores->prefix_len(), d = cache.head_dim();
  for (int l = scores->layer_begin; l < scores->layer_end; ++l) {
    if (!scores->has_layer(l)) continue;
    if (l < cache.layer_begin() || l >= cache.layer_end() || cache.length(l) < P) {
      return absl::FailedPreconditionError(absl::StrCat(
          "value-norm weighting: the cache does not hold layer ", l, "'s ", P, " scored tokens"));
    }
    std::vector<float>& row = scores->layers[l - scores->layer_begin];
    for (int g = 0; g < scores->heads; ++g) {
      const float* v = cache.v_head(l, g);
      for (int64_t j = 0; j < P; ++j) {
        float ss = 0.0f;
        for (int64_t c = 0; c < d; ++c) ss += v[j * d + c] * v[j * d + c];
        row[g * P + j] *= std::sqrt(ss);
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace xkv
