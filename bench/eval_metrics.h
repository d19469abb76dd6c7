// Fidelity metrics of a compressed KV cache against the full cache (`xkv eval`), under teacher
// forcing: both caches are fed the same tokens (a real text continuation), so step i of both runs
// predicts the same next token from the same history.
//
//   agreement  fraction of the n steps where the compressed run's argmax equals the full run's
//              argmax (ties: lowest id, as Argmax). 1.0 = identical greedy predictions.
//   KL         mean over the n steps of KL(p_full || p_compressed) in nats, where p = softmax of
//              the fp32 logits (computed in double with log-sum-exp).
//   NLL        mean over the n steps of -log p_compressed(true next token), in nats.
#ifndef XKV_BENCH_EVAL_METRICS_H_
#define XKV_BENCH_EVAL_METRICS_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace xkv {

// log softmax of one row of logits, in double.
std::vector<double> LogSoftmax(absl::Span<const float> logits);

// KL(softmax(p_logits) || softmax(q_logits)) in nats; the rows must have the same size.
double KlDivergence(absl::Span<const float> p_logits, absl::Span<const float> q_logits);

struct FidelityScore {
  double agreement = 0.0;  // in [0, 1]
  double mean_kl = 0.0;    // nats, >= 0
  double mean_nll = 0.0;   // nats, >= 0
  int steps = 0;
};

// full, compressed: fp32 [steps, vocab] next-token logits of the two runs at the same teacher-
// forced steps; truth: the tokens that really follow [steps], each in [0, vocab).
// INVALID_ARGUMENT on size mismatches, tokens out of range or zero steps.
absl::StatusOr<FidelityScore> ScoreFidelity(absl::Span<const float> full,
                                            absl::Span<const float> compressed,
                                            absl::Span<const int32_t> truth, int64_t vocab);

// Percentile bootstrap 95% interval of the mean of `values` (one value per prompt: resampling
// prompts, not rows, since the rows of one prompt are correlated). Deterministic for a seed.
// Empty values give [0, 0].
struct Interval {
  double low = 0.0;
  double high = 0.0;
};
Interval BootstrapMeanCi(absl::Span<const double> values, int resamples = 2000, uint64_t seed = 1);

}  // namespace xkv

#endif  // XKV_BENCH_EVAL_METRICS_H_
