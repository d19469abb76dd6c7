#include "bench/cuda/gpu_bench_util.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "allocator/kv_policy.h"
#include "base/status_macros.h"
#include "model/kv_allocation.h"
#include "model/model_shapes.h"

namespace xkv {

double MsSince(BenchClock::time_point t0) {
  return std::chrono::duration<double, std::milli>(BenchClock::now() - t0).count();
}

double Median(std::vector<double> values) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 == 1 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

absl::StatusOr<std::unique_ptr<CudaLlamaModel>> MakeRandomLlama3(const GpuBenchOptions& o,
                                                                 int64_t max_seq_len,
                                                                 int max_batch) {
  CudaEngineOptions e;
  e.device = o.device;
  e.max_batch = max_batch;
  e.max_step_tokens = o.step_tokens;
  e.max_seq_len = max_seq_len;
  e.kv_memory_fraction = o.kv_memory_fraction;
  ASSIGN_OR_RETURN(const ModelConfig shape, ShapeByName(o.shape));
  return CudaLlamaModel::CreateRandom(shape, /*seed=*/8, e);
}

absl::Status PrefillForward(CudaLlamaModel& model, uint64_t id, absl::Span<const int32_t> tokens,
                            int64_t chunk, int32_t* next_token) {
  std::vector<int32_t> next;
  for (int64_t at = 0; at < static_cast<int64_t>(tokens.size()); at += chunk) {
    const int64_t n = std::min<int64_t>(chunk, tokens.size() - at);
    const CudaTokenStep step{id, tokens.subspan(at, n)};
    RETURN_IF_ERROR(model.Forward({&step, 1}, &next));
  }
  if (next_token != nullptr && !next.empty()) *next_token = next[0];
  return absl::OkStatus();
}

absl::Status PrefillLayers(CudaLlamaModel& model, uint64_t id, absl::Span<const int32_t> tokens,
                           int64_t chunk, const LayersPrefill& how,
                           EngineObservation* observation) {
  const int64_t T = tokens.size(), w = how.importance.window;
  // Chunk boundaries: equal chunks, except that the last one must hold >= w tokens.
  std::vector<int64_t> starts;
  for (int64_t at = 0; at < T; at += chunk) starts.push_back(at);
  if (starts.size() > 1 && T - starts.back() < w) starts.back() = T - w;
  for (size_t c = 0; c < starts.size(); ++c) {
    const int64_t at = starts[c];
    const int64_t n = (c + 1 < starts.size() ? starts[c + 1] : T) - at;
    const bool last = c + 1 == starts.size();
    ASSIGN_OR_RETURN(std::vector<float> hidden, model.Embed(tokens.subspan(at, n)));
    EngineStep step;
    step.sequences.push_back({id, n, at, last && how.observe});
    step.scores_only = last && how.scores_only;
    std::vector<EngineObservation> obs;
    RETURN_IF_ERROR(model.RunLayers(step, how.importance, absl::MakeSpan(hidden), &obs));
    if (last && observation != nullptr && !obs.empty()) *observation = std::move(obs[0]);
  }
  return absl::OkStatus();
}

absl::StatusOr<XkvKeep> SolveXkv(const CollectedScores& scores, const ModelConfig& config,
                                 double fraction) {
  const int L = scores.num_layers();
  const int64_t P = scores.prefix_len();
  KvSettings spec;
  spec.policy = PolicyKind::kXkv;
  spec.target = KvTarget::Tokens(static_cast<int64_t>(std::llround(fraction * L * P)));
  const PolicyOptions policy = ToPolicyOptions(spec);
  XkvKeep keep;
  BenchClock::time_point t0 = BenchClock::now();
  ASSIGN_OR_RETURN(PolicyBudgets budgets, SolveBudgets(scores, config, spec));
  keep.solve_ms = MsSince(t0);
  keep.retention = budgets.average_retention.value_or(0.0);
  t0 = BenchClock::now();
  // As the worker does it (StageExecutor::CompactSequence): every layer, on a few threads.
  ASSIGN_OR_RETURN(keep.kept, KeptSlotsForLayers(scores, budgets.budgets, policy));
  for (int64_t b : budgets.budgets) keep.kept_tokens += b + scores.window;
  keep.select_ms = MsSince(t0);
  return keep;
}

absl::Status CompactAll(CudaLlamaModel& model, uint64_t id, int64_t prompt_len,
                        const XkvKeep& keep) {
  for (int l = model.layer_begin(); l < model.layer_end(); ++l) {
    RETURN_IF_ERROR(model.CompactLayer(id, l, prompt_len, keep.kept[l - model.layer_begin()]));
  }
  return absl::OkStatus();
}

}  // namespace xkv
