// Helpers for the XKV core's tests on the CPU engine (tests/unit/model/): random prompts, one
// engine step, and an observed (optionally chunked) prefill as a pipeline stage runs it.
#ifndef XKV_TESTS_UNIT_MODEL_XKV_TEST_UTIL_H_
#define XKV_TESTS_UNIT_MODEL_XKV_TEST_UTIL_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "base/status_macros.h"
#include "model/kv_cache.h"
#include "model/stage_engine.h"

namespace xkv::testing {

inline std::vector<int32_t> RandomTokens(int n, int vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> t(n);
  for (int32_t& x : t) x = static_cast<int32_t>(rng() % vocab);
  return t;
}

// Rows [0, length) of every KV head of one layer, contiguous: fp32 [heads][length][d] (K, then V);
// heads may hold different counts (per-head compaction).
inline std::vector<float> LayerRows(const KvCache& c, int layer) {
  std::vector<float> out;
  const int64_t d = c.head_dim();
  for (bool keys : {true, false}) {
    for (int h = 0; h < c.n_kv_heads(); ++h) {
      const float* base = keys ? c.k_head(layer, h) : c.v_head(layer, h);
      out.insert(out.end(), base, base + c.head_length(layer, h) * d);
    }
  }
  return out;
}

inline double MaxDiff(const float* a, const double* b, int64_t n) {
  double m = 0;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::abs(double(a[i]) - b[i]));
  return m;
}

// One engine step over `tokens` (every sequence's new tokens, concatenated): fp32 [sequences,
// vocab], the logits of each sequence's last new row. observations: optional.
inline absl::StatusOr<std::vector<float>> RunStep(
    StageEngine& engine, const EngineStep& step, absl::Span<const int32_t> tokens,
    const ImportanceOptions& importance = {},
    std::vector<EngineObservation>* observations = nullptr) {
  ASSIGN_OR_RETURN(std::vector<float> hidden, engine.Embed(tokens));
  RETURN_IF_ERROR(engine.RunLayers(step, importance, absl::MakeSpan(hidden), observations));
  return engine.Logits(hidden, step.LastRows());
}

// Prefills `prompt` as sequence `id` in chunks of at most `chunk` tokens (0: one chunk), the final
// chunk widened to >= w tokens and observed, as the scheduler plans it. Returns the prompt's
// scores; the last position's logits go to *logits when given. chunk must be 0 or >= w.
inline absl::StatusOr<CollectedScores> ObservedPrefill(StageEngine& engine, uint64_t id,
                                                       const std::vector<int32_t>& prompt,
                                                       const ImportanceOptions& importance,
                                                       int64_t chunk = 0,
                                                       std::vector<float>* logits = nullptr) {
  const int64_t T = static_cast<int64_t>(prompt.size());
  for (int64_t begin = 0;;) {
    int64_t n = chunk > 0 ? std::min(chunk, T - begin) : T - begin;
    const int64_t rest = T - begin - n;
    if (rest > 0 && rest < importance.window) n = T - begin - importance.window;
    const bool last = begin + n == T;
    EngineStep step;
    step.sequences.push_back({id, n, begin, last});
    std::vector<EngineObservation> obs;
    ASSIGN_OR_RETURN(
        std::vector<float> l,
        RunStep(engine, step, absl::MakeConstSpan(prompt).subspan(begin, n), importance, &obs));
    begin += n;
    if (!last) continue;
    if (logits != nullptr) *logits = std::move(l);
    return std::move(*obs[0].scores);
  }
}

}  // namespace xkv::testing

#endif  // XKV_TESTS_UNIT_MODEL_XKV_TEST_UTIL_H_
