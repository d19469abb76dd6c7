#include "bench/eval_metrics.h"

#include <algorithm>
#include <cmath>
#include <random>

#include "absl/strings/str_cat.h"
#include "model/sampler.h"

namespace xkv {

std::vector<double> LogSoftmax(absl::Span<const float> logits) {
  std::vector<double> out(logits.size());
  if (logits.empty()) return out;
  const double max = *std::max_element(logits.begin(), logits.end());
  double sum = 0.0;
  for (float x : logits) sum += std::exp(static_cast<double>(x) - max);
  const double log_z = max + std::log(sum);
  for (size_t i = 0; i < logits.size(); ++i) out[i] = static_cast<double>(logits[i]) - log_z;
  return out;
}

double KlDivergence(absl::Span<const float> p_logits, absl::Span<const float> q_logits) {
  const std::vector<double> lp = LogSoftmax(p_logits), lq = LogSoftmax(q_logits);
  double kl = 0.0;
  for (size_t i = 0; i < lp.size() && i < lq.size(); ++i) {
    const double p = std::exp(lp[i]);
    if (p > 0.0) kl += p * (lp[i] - lq[i]);
  }
  return std::max(kl, 0.0);  // rounding can make an identical pair a hair negative
}

absl::StatusOr<FidelityScore> ScoreFidelity(absl::Span<const float> full,
                                            absl::Span<const float> compressed,
                                            absl::Span<const int32_t> truth, int64_t vocab) {
  const int64_t steps = static_cast<int64_t>(truth.size());
  if (steps == 0 || vocab <= 0 || static_cast<int64_t>(full.size()) != steps * vocab ||
      compressed.size() != full.size()) {
    return absl::InvalidArgumentError(absl::StrCat("eval metrics: ", full.size(), " and ",
                                                   compressed.size(), " logits for ", steps,
                                                   " steps of vocab ", vocab));
  }
  for (int32_t t : truth) {
    if (t < 0 || t >= vocab) {
      return absl::InvalidArgumentError(absl::StrCat("eval metrics: token ", t, " outside vocab"));
    }
  }
  FidelityScore score;
  score.steps = static_cast<int>(steps);
  int agree = 0;
  double kl = 0.0, nll = 0.0;
  for (int64_t i = 0; i < steps; ++i) {
    const absl::Span<const float> f = full.subspan(i * vocab, vocab);
    const absl::Span<const float> c = compressed.subspan(i * vocab, vocab);
    agree += Argmax(c) == Argmax(f) ? 1 : 0;
    const std::vector<double> lf = LogSoftmax(f), lc = LogSoftmax(c);
    double step_kl = 0.0;
    for (int64_t v = 0; v < vocab; ++v) {
      const double p = std::exp(lf[v]);
      if (p > 0.0) step_kl += p * (lf[v] - lc[v]);
    }
    kl += std::max(step_kl, 0.0);
    nll -= lc[truth[i]];
  }
  score.agreement = static_cast<double>(agree) / static_cast<double>(steps);
  score.mean_kl = kl / static_cast<double>(steps);
  score.mean_nll = nll / static_cast<double>(steps);
  return score;
}

Interval BootstrapMeanCi(absl::Span<const double> values, int resamples, uint64_t seed) {
  if (values.empty() || resamples < 1) return {};
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<size_t> pick(0, values.size() - 1);
  std::vector<double> means(resamples);
  for (double& m : means) {
    double sum = 0.0;
    for (size_t i = 0; i < values.size(); ++i) sum += values[pick(rng)];
    m = sum / static_cast<double>(values.size());
  }
  std::sort(means.begin(), means.end());
  const auto at = [&](double q) {
    return means[std::min<size_t>(means.size() - 1, static_cast<size_t>(q * means.size()))];
  };
  return {at(0.025), at(0.975)};
}

}  // namespace xkv
