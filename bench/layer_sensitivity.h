// `xkv calibrate`'s measurement (LU-KV / BaKlaVa style): how much each layer's compression alone
// costs. Per prompt, the context C is prefilled once and its last w tokens observed with policy
// xkv's default scoring (ScoringFor, model/kv_allocation.h). Then for each layer l a copy of that
// cache has ONLY layer l compacted to the kept fraction f (xkv's default selection: the sinks, the
// top pooled scores per KV head, the window; every other layer full), and every copy plus the full
// cache is teacher-forced with the prompt's real continuation R[0, S): KL(full || layer l
// compressed) of the S next-token distributions, as `xkv eval`'s fidelity metric
// (bench/eval_metrics.h ScoreFidelity). mean_kl[l] is the mean over prompts.
#ifndef XKV_BENCH_LAYER_SENSITIVITY_H_
#define XKV_BENCH_LAYER_SENSITIVITY_H_

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "bench/eval_prompts.h"
#include "model/stage_engine.h"

namespace xkv {

struct SensitivityOptions {
  double fraction = 0.1;     // kept fraction of the compressed layer's bytes, in (0, 1)
  int fidelity_tokens = 32;  // S: teacher-forced continuation steps per prompt
  int64_t max_step_tokens = 2048;
  // Called after each prompt with (prompts done, total).
  std::function<void(int, int)> progress;
};

// mean_kl [L]: nats. INVALID_ARGUMENT when a prompt's context is not longer than the window or its
// continuation has fewer than 2 tokens, or the options are out of range. The engine must hold every
// layer; every sequence is released before returning.
absl::StatusOr<std::vector<double>> MeasureLayerSensitivity(StageEngine* engine,
                                                            absl::Span<const EvalPrompt> prompts,
                                                            const SensitivityOptions& options);

// `xkv calibrate --heads 1` (DuoAttention / HeadKV style: which KV heads read the far context):
// per prompt the context C is prefilled once; for each (layer l, KV head h) a copy of that cache
// has ONLY head h of layer l cut to StreamingLLM's rows (the first `sinks` tokens and the most
// recent ones, `fraction` of C in all), and every copy plus the full cache is teacher-forced with
// the question, the template tail and answer prefix, and the expected answer (`answers[i]`, token
// ids): KL(full || head compressed) of the distributions that predict the answer's tokens. A head
// that retrieves from the far context costs a lot; a local one nothing. Returns [L * H]
// layer-major, the mean over prompts.
struct HeadSensitivityOptions {
  double fraction = 0.1;  // the compressed head's kept share of the context, in (0, 1)
  int sinks = 4;
  int64_t max_step_tokens = 2048;
  std::function<void(int, int)> progress;
};
absl::StatusOr<std::vector<double>> MeasureHeadSensitivity(
    StageEngine* engine, absl::Span<const EvalPrompt> prompts,
    absl::Span<const std::vector<int32_t>> answers, const HeadSensitivityOptions& options);

}  // namespace xkv

#endif  // XKV_BENCH_LAYER_SENSITIVITY_H_
