// `xkv bench gpu` concurrency section: how many 32K-token sequences the KV pool holds with a full
// cache and with XKV at a budget fraction, measured on one real observed prefill + compaction and
// checked by filling the pool; plus the profile-mode cost at that length.
#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "base/status_macros.h"
#include "bench/cpu_bench.h"
#include "bench/cuda/gpu_bench_util.h"
#include "bench/cuda/gpu_sections.h"
#include "kernels/cuda/paged_kv.cuh"

namespace xkv {
namespace {

constexpr uint64_t kPlainId = 1, kObservedId = 2, kMiniId = 3, kFillId0 = 100;
// The per_request mini-prefill is skipped when a plain prefill took longer than this.
constexpr double kMaxMiniPrefillMs = 30000;

// Prefill (plain and observed), solve, compaction of one sequence; leaves kObservedId compacted.
absl::StatusOr<XkvKeep> MeasureOneSequence(CudaLlamaModel& m, const GpuBenchOptions& o,
                                           const std::vector<int32_t>& tokens,
                                           ConcurrencyResult& c) {
  const int64_t T = tokens.size();
  LayersPrefill plain, observed{true, false, {}}, mini{true, true, {}};
  // Warm-up: one chunk (this engine's cuBLAS handle and kernels are new).
  RETURN_IF_ERROR(PrefillLayers(
      m, kPlainId, absl::MakeConstSpan(tokens).first(std::min<size_t>(o.step_tokens, T)),
      o.step_tokens, plain));
  m.ReleaseSequence(kPlainId);
  BenchClock::time_point t0 = BenchClock::now();
  RETURN_IF_ERROR(PrefillLayers(m, kPlainId, tokens, o.step_tokens, plain));
  c.prefill_ms = MsSince(t0);
  m.ReleaseSequence(kPlainId);
  EngineObservation obs;
  t0 = BenchClock::now();
  RETURN_IF_ERROR(PrefillLayers(m, kObservedId, tokens, o.step_tokens, observed, &obs));
  c.observed_prefill_ms = MsSince(t0);
  c.score_ms = obs.ms;
  if (!obs.scores.has_value()) return absl::InternalError("concurrency: no scores observed");
  ASSIGN_OR_RETURN(XkvKeep keep, SolveXkv(*obs.scores, m.config(), o.budget_fraction));
  c.solve_ms = keep.solve_ms;
  c.select_ms = keep.select_ms;
  c.retention = keep.retention;
  c.kept_tokens = keep.kept_tokens;
  t0 = BenchClock::now();
  RETURN_IF_ERROR(CompactAll(m, kObservedId, T, keep));
  c.compact_ms = MsSince(t0);
  c.xkv_blocks_per_seq = UsedBlocks(m);
  if (c.prefill_ms < kMaxMiniPrefillMs) {
    t0 = BenchClock::now();
    const absl::Status st = PrefillLayers(m, kMiniId, tokens, o.step_tokens, mini);
    c.per_request_ms = MsSince(t0);
    m.ReleaseSequence(kMiniId);
    RETURN_IF_ERROR(st);
  }
  return keep;
}

// Places sequences (Forward prefill, then compaction when keep != null) from id *next on until the
// pool refuses one or `until` passes. Returns how many were placed; *exhausted says which ended it.
absl::StatusOr<int64_t> Fill(CudaLlamaModel& m, const GpuBenchOptions& o,
                             const std::vector<int32_t>& tokens, const XkvKeep* keep,
                             BenchClock::time_point until, uint64_t* next, bool* exhausted) {
  int64_t placed = 0;
  *exhausted = false;
  while (BenchClock::now() < until) {
    const uint64_t id = (*next)++;
    absl::Status st = PrefillForward(m, id, tokens, o.step_tokens);
    if (st.ok() && keep != nullptr) st = CompactAll(m, id, tokens.size(), *keep);
    if (!st.ok()) {
      m.ReleaseSequence(id);
      if (!absl::IsResourceExhausted(st)) return st;
      *exhausted = true;
      break;
    }
    ++placed;
  }
  return placed;
}

// Fills the pool with full-cache sequences, then (after releasing them) with XKV ones next to the
// measured sequence kObservedId; records the counts and how each fill ended.
absl::Status FillPool(CudaLlamaModel& m, const GpuBenchOptions& o,
                      const std::vector<int32_t>& tokens, const XkvKeep& keep,
                      ConcurrencyResult& c) {
  const BenchClock::time_point start = BenchClock::now();
  const auto box = std::chrono::duration_cast<BenchClock::duration>(
      std::chrono::duration<double>(o.verify_seconds));
  uint64_t next = kFillId0;
  bool full_exhausted = false, xkv_exhausted = false;
  m.ReleaseSequence(kObservedId);
  ASSIGN_OR_RETURN(c.full_filled,
                   Fill(m, o, tokens, nullptr, start + box * 35 / 100, &next, &full_exhausted));
  const int64_t full_free = m.free_kv_blocks();
  for (uint64_t id = kFillId0; id < next; ++id) m.ReleaseSequence(id);
  ASSIGN_OR_RETURN(c.xkv_filled, Fill(m, o, tokens, &keep, start + box, &next, &xkv_exhausted));
  const int64_t xkv_free = m.free_kv_blocks();
  for (uint64_t id = kFillId0; id < next; ++id) m.ReleaseSequence(id);
  auto how = [](bool exhausted, int64_t free, int64_t per_seq) {
    return exhausted ? std::string("until the pool refused the next one")
                     : absl::StrFormat(
                           "time box reached; %d blocks still free = room for %d "
                           "more at this size",
                           free, per_seq > 0 ? free / per_seq : 0);
  };
  c.fill_note = absl::StrFormat(
      "full: %d placed (%s); XKV: %d placed, prefill of the full prompt then compaction each, "
      "every placed sequence staying (%s). Time box %.0f s.",
      c.full_filled, how(full_exhausted, full_free, c.full_blocks_per_seq), c.xkv_filled,
      how(xkv_exhausted, xkv_free, c.xkv_blocks_per_seq), o.verify_seconds);
  return absl::OkStatus();
}

}  // namespace

absl::Status RunConcurrencySection(const GpuBenchOptions& o, GpuBenchReport& r) {
  ASSIGN_OR_RETURN(std::unique_ptr<CudaLlamaModel> m,
                   MakeRandomLlama3(o, o.long_context, /*max_batch=*/1));
  const ModelConfig& cfg = m->config();
  if (r.weight_bytes == 0) r.weight_bytes = m->weight_bytes();
  const std::vector<int32_t> tokens = BenchTokens(o.long_context, cfg.vocab_size);
  ConcurrencyResult c;
  c.seq_len = o.long_context;
  c.block_tokens = cuda::kKvBlockTokens;
  c.block_bytes = c.block_tokens * cfg.KvBytesPerTokenPerLayer(2);
  c.pool_blocks = m->num_kv_blocks();
  c.budget_fraction = o.budget_fraction;
  c.full_blocks_per_seq = cfg.n_layers * ((c.seq_len + c.block_tokens - 1) / c.block_tokens);
  ASSIGN_OR_RETURN(const XkvKeep keep, MeasureOneSequence(*m, o, tokens, c));
  c.full_fit = c.pool_blocks / c.full_blocks_per_seq;
  c.xkv_fit = c.pool_blocks / std::max<int64_t>(c.xkv_blocks_per_seq, 1);
  c.xkv_fit_transient = c.pool_blocks < c.full_blocks_per_seq
                            ? 0
                            : 1 + (c.pool_blocks - c.full_blocks_per_seq) /
                                      std::max<int64_t>(c.xkv_blocks_per_seq, 1);
  std::fprintf(stderr,
               "concurrency: pool %lld blocks, full %lld/seq (%lld fit), xkv %lld/seq "
               "(%lld fit)\n",
               static_cast<long long>(c.pool_blocks), static_cast<long long>(c.full_blocks_per_seq),
               static_cast<long long>(c.full_fit), static_cast<long long>(c.xkv_blocks_per_seq),
               static_cast<long long>(c.xkv_fit));
  const double solve = c.solve_ms + c.select_ms;
  const std::string solve_note = absl::StrFormat("solve %.1f + select %.1f ms; compaction %.1f ms",
                                                 c.solve_ms, c.select_ms, c.compact_ms);
  if (c.per_request_ms > 0) {
    r.profile.push_back(
        {"per_request", c.seq_len, c.prefill_ms, c.per_request_ms, solve,
         100 * (c.per_request_ms + solve) / c.prefill_ms,
         "chunked mini-prefill (earlier chunks write KV, the last is scores-only); " + solve_note});
  }
  r.profile.push_back({"one_pass", c.seq_len, c.prefill_ms, c.score_ms, solve,
                       100 * (c.score_ms + solve) / c.prefill_ms,
                       absl::StrFormat("scoring kernels; observed prefill wall %.1f ms; %s",
                                       c.observed_prefill_ms, solve_note)});
  const absl::Status fill = FillPool(*m, o, tokens, keep, c);
  r.concurrency = c;
  return fill;
}

}  // namespace xkv
