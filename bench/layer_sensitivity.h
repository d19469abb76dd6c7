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

}  // namespace xkv

#endif  // XKV_BENCH_LAYER_SENSITIVITY_H_
