// `xkv bench gpu` sections on the random Llama-3-8B-shaped model: decode steps against the
// bytes-moved floor, prefill against the FLOP floor, and the cost of each profile mode.
#include <algorithm>
#include <numeric>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "base/status_macros.h"
#include "bench/cpu_bench.h"
#include "bench/cuda/gpu_bench_util.h"
#include "bench/cuda/gpu_sections.h"
#include "kernels/cuda/gemv.cuh"

namespace xkv {
namespace {

constexpr int kWarmSteps = 3;    // the first captures the decode graph
constexpr int kPrefillRuns = 3;  // timed prefills (median), after one warm-up

// Times options.decode_steps steps of sequences 1..batch (each fed its last greedy token).
absl::StatusOr<DecodeRow> TimeDecode(CudaLlamaModel& m, const GpuBenchOptions& o, int64_t batch,
                                     double copy_gbs, std::vector<int32_t>& cur) {
  std::vector<CudaTokenStep> steps(batch);
  std::vector<int32_t> next;
  auto step = [&]() -> absl::Status {
    for (int64_t i = 0; i < batch; ++i) steps[i] = {static_cast<uint64_t>(i + 1), {&cur[i], 1}};
    RETURN_IF_ERROR(m.Forward(steps, &next));
    std::copy(next.begin(), next.end(), cur.begin());
    return absl::OkStatus();
  };
  for (int i = 0; i < kWarmSteps; ++i) RETURN_IF_ERROR(step());
  const ModelConfig& c = m.config();
  DecodeRow row;
  row.batch = batch;
  row.steps = o.decode_steps;
  double positions = 0;
  for (int64_t i = 0; i < batch; ++i) positions += m.logical_position(i + 1);
  row.context = static_cast<int64_t>(positions / batch + 0.5);
  std::vector<double> ms;
  for (int64_t s = 0; s < o.decode_steps; ++s) {
    const BenchClock::time_point t0 = BenchClock::now();
    RETURN_IF_ERROR(step());
    ms.push_back(MsSince(t0));
  }
  row.step_ms = Median(ms);
  row.mean_ms = std::accumulate(ms.begin(), ms.end(), 0.0) / ms.size();
  row.weight_bytes = DecodeWeightBytes(c, batch);
  // Every step reads each sequence's cache including its new token; average over the steps.
  const double avg_tokens = positions + batch * (1 + 0.5 * (o.decode_steps - 1));
  row.kv_bytes = avg_tokens * c.n_layers * c.KvBytesPerTokenPerLayer(2);
  if (copy_gbs > 0) row.floor_ms = (row.weight_bytes + row.kv_bytes) / (copy_gbs * 1e9) * 1e3;
  return row;
}

}  // namespace

absl::Status RunDecodeSection(CudaLlamaModel& m, const GpuBenchOptions& o, GpuBenchReport& r) {
  const int64_t max_b = *std::max_element(o.decode_batches.begin(), o.decode_batches.end());
  const std::vector<int32_t> prompt = BenchTokens(o.context, m.config().vocab_size);
  std::vector<int32_t> cur(max_b, 0);
  const double copy_gbs = r.ceilings ? r.ceilings->copy_gbs : 0;
  absl::Status st;
  for (int64_t i = 0; st.ok() && i < max_b; ++i) {
    st = PrefillForward(m, i + 1, prompt, o.step_tokens, &cur[i]);
  }
  // Batches the GEMV kernels take are also timed on the older paths (cuBLAS; GEMV without
  // programmatic dependent launch), so one run shows what each step of the work gave.
  struct Variant {
    const char* name;
    bool small_batch_kernels, pdl;
  };
  const Variant variants[] = {
      {kDefaultDecodeKernels, true, true}, {"GEMV", true, false}, {"cuBLAS", false, false}};
  for (int64_t batch : o.decode_batches) {
    for (const Variant& v : variants) {
      if (!st.ok()) break;
      const bool is_default = v.small_batch_kernels && v.pdl;
      if (!is_default && batch > CudaLlamaModel::kDefaultGemvRows) continue;
      m.SetDecodeKernels(v.small_batch_kernels, v.pdl);
      absl::StatusOr<DecodeRow> row = TimeDecode(m, o, batch, copy_gbs, cur);
      if (row.ok()) {
        row->kernels = batch > m.gemv_max_rows() ? "cuBLAS" : v.name;
        r.decode.push_back(*row);
        std::fprintf(stderr, "decode batch %lld (%s): %.2f ms/step\n",
                     static_cast<long long>(batch), row->kernels.c_str(), row->step_ms);
      }
      st = row.status();
    }
  }
  m.SetDecodeKernels(true, true);
  for (int64_t i = 0; i < max_b; ++i) m.ReleaseSequence(i + 1);
  return st;
}

absl::Status RunPrefillSection(CudaLlamaModel& m, const GpuBenchOptions& o, GpuBenchReport& r) {
  const ModelConfig& c = m.config();
  const std::vector<int32_t> tokens = BenchTokens(o.prefill_tokens, c.vocab_size);
  constexpr uint64_t kId = 1000;
  std::vector<double> ms;
  for (int run = 0; run <= kPrefillRuns; ++run) {  // run 0 warms up
    const BenchClock::time_point t0 = BenchClock::now();
    const absl::Status st = PrefillForward(m, kId, tokens, o.step_tokens);
    const double t = MsSince(t0);
    m.ReleaseSequence(kId);
    RETURN_IF_ERROR(st);
    if (run > 0) ms.push_back(t);
  }
  PrefillRow row;
  row.tokens = o.prefill_tokens;
  row.ms = Median(ms);
  row.matmul_flops = PrefillMatmulFlops(c, row.tokens);
  row.attention_flops = PrefillAttentionFlops(c, row.tokens);
  const double gemm = r.ceilings ? r.ceilings->gemm_tflops : 0;
  if (gemm > 0) row.floor_ms = (row.matmul_flops + row.attention_flops) / (gemm * 1e12) * 1e3;
  std::fprintf(stderr, "prefill %lld tokens: %.1f ms\n", static_cast<long long>(row.tokens),
               row.ms);
  r.prefill.push_back(row);
  return absl::OkStatus();
}

namespace {

struct ProfileTimes {
  double plain_ms = 0;     // RunLayers prefill, nothing observed
  double observed_ms = 0;  // the same with the last chunk observed (one_pass)
  double score_ms = 0;     // scoring kernels inside it
  double mini_ms = 0;      // scores-only mini-prefill (per_request)
  double solve_ms = 0;     // SolveBudgets
  double select_ms = 0;    // KeptSlots, every layer
};

// Median over kPrefillRuns of each kind of prefill (after one warm-up of each) and the solve.
absl::StatusOr<ProfileTimes> MeasureProfileTimes(CudaLlamaModel& m, const GpuBenchOptions& o) {
  const std::vector<int32_t> tokens = BenchTokens(o.prefill_tokens, m.config().vocab_size);
  constexpr uint64_t kId = 2000;
  const LayersPrefill kinds[3] = {{false, false, {}}, {true, false, {}}, {true, true, {}}};
  std::vector<double> wall[3], score;
  EngineObservation obs;
  for (int run = 0; run <= kPrefillRuns; ++run) {
    for (int k = 0; k < 3; ++k) {
      const BenchClock::time_point t0 = BenchClock::now();
      const absl::Status st = PrefillLayers(m, kId, tokens, o.step_tokens, kinds[k], &obs);
      const double t = MsSince(t0);
      m.ReleaseSequence(kId);
      RETURN_IF_ERROR(st);
      if (run == 0) continue;
      wall[k].push_back(t);
      if (k == 1) score.push_back(obs.ms);
    }
  }
  if (!obs.scores.has_value()) return absl::InternalError("profile: no scores observed");
  ProfileTimes t{Median(wall[0]), Median(wall[1]), Median(score), Median(wall[2])};
  std::vector<double> solve, select;
  for (int run = 0; run < kPrefillRuns; ++run) {
    ASSIGN_OR_RETURN(XkvKeep keep, SolveXkv(*obs.scores, m.config(), o.budget_fraction));
    solve.push_back(keep.solve_ms);
    select.push_back(keep.select_ms);
  }
  t.solve_ms = Median(solve);
  t.select_ms = Median(select);
  return t;
}

}  // namespace

absl::Status RunProfileSection(CudaLlamaModel& m, const GpuBenchOptions& o, GpuBenchReport& r) {
  ASSIGN_OR_RETURN(const ProfileTimes t, MeasureProfileTimes(m, o));
  const int64_t n = o.prefill_tokens;
  const std::string solve_note =
      absl::StrFormat("solve %.2f + select %.2f ms", t.solve_ms, t.select_ms);
  auto add = [&](std::string mode, double profile, double solve, std::string note) {
    ProfileRow row{std::move(mode), n, t.plain_ms, profile, solve, 0, std::move(note)};
    row.percent = 100 * (profile + solve) / t.plain_ms;
    r.profile.push_back(std::move(row));
  };
  add("per_request", t.mini_ms, t.solve_ms + t.select_ms,
      "scores-only mini-prefill wall; " + solve_note);
  add("one_pass", t.score_ms, t.solve_ms + t.select_ms,
      absl::StrFormat("scoring kernels; observed prefill wall %.1f ms (+%.1f%% over plain: "
                      "per-layer score copies and syncs); %s",
                      t.observed_ms, 100 * (t.observed_ms / t.plain_ms - 1), solve_note));
  add("sampled:0.1", t.score_ms, 0.1 * t.solve_ms + t.select_ms,
      "expected per request: every request scores its window (selection needs it), 1 in 10 "
      "solves, the rest take the running-mean budgets");
  std::fprintf(stderr, "profile: plain %.1f ms, one_pass score %.2f ms, solve %.2f ms\n",
               t.plain_ms, t.score_ms, t.solve_ms + t.select_ms);
  return absl::OkStatus();
}

}  // namespace xkv
