#include "model/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <utility>

#include "absl/strings/str_cat.h"

namespace xkv {

absl::Status ValidateSamplingParams(const SamplingParams& p) {
  if (std::isnan(p.temperature) || std::isinf(p.temperature)) {
    return absl::InvalidArgumentError(
        absl::StrCat("temperature must be finite, got ", p.temperature));
  }
  if (!(p.top_p > 0.f && p.top_p <= 1.f)) {
    return absl::InvalidArgumentError(absl::StrCat("top_p must be in (0, 1], got ", p.top_p));
  }
  if (!(p.min_p >= 0.f && p.min_p <= 1.f)) {
    return absl::InvalidArgumentError(absl::StrCat("min_p must be in [0, 1], got ", p.min_p));
  }
  if (!(std::isfinite(p.repetition_penalty) && p.repetition_penalty > 0.f)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "repetition_penalty must be a finite number > 0 (1 is off), got ", p.repetition_penalty));
  }
  if (p.logprobs < -1 || p.logprobs > 20) {
    return absl::InvalidArgumentError(
        absl::StrCat("logprobs must be in [0, 20] (or -1: off), got ", p.logprobs));
  }
  for (const auto& [name, v] : {std::pair{"presence_penalty", p.presence_penalty},
                                std::pair{"frequency_penalty", p.frequency_penalty}}) {
    if (!(v >= -2.f && v <= 2.f)) {
      return absl::InvalidArgumentError(absl::StrCat(name, " must be in [-2, 2], got ", v));
    }
  }
  return absl::OkStatus();
}

int32_t Argmax(absl::Span<const float> logits) {
  int32_t best = 0;
  for (size_t i = 1; i < logits.size(); ++i) {
    if (logits[i] > logits[best]) best = static_cast<int32_t>(i);
  }
  return best;
}

namespace {

// Sorted (descending logit, ascending id) prefix of length k.
std::vector<int32_t> TopIds(absl::Span<const float> logits, size_t k) {
  std::vector<int32_t> ids(logits.size());
  std::iota(ids.begin(), ids.end(), 0);
  auto better = [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  };
  k = std::min(k, ids.size());
  std::partial_sort(ids.begin(), ids.begin() + k, ids.end(), better);
  ids.resize(k);
  return ids;
}

// Softmax of logits[ids] / temperature, in double.
std::vector<double> Softmax(absl::Span<const float> logits, const std::vector<int32_t>& ids,
                            double temperature) {
  std::vector<double> p(ids.size());
  double mx = logits[ids[0]];
  for (int32_t id : ids) mx = std::max(mx, static_cast<double>(logits[id]));
  double sum = 0;
  for (size_t i = 0; i < ids.size(); ++i)
    sum += (p[i] = std::exp((logits[ids[i]] - mx) / temperature));
  for (double& x : p) x /= sum;
  return p;
}

}  // namespace

std::vector<Candidate> SamplingDistribution(absl::Span<const float> logits,
                                            const SamplingParams& params) {
  if (logits.empty()) return {};
  if (params.temperature <= 0.f) return {{Argmax(logits), 1.f}};
  const size_t vocab = logits.size();
  const size_t k = params.top_k > 0 ? std::min<size_t>(params.top_k, vocab) : vocab;
  std::vector<int32_t> ids;
  if (k == vocab && params.top_p >= 1.f) {  // no truncation: skip the sort
    ids.resize(vocab);
    std::iota(ids.begin(), ids.end(), 0);
  } else {
    ids = TopIds(logits, k);
  }
  if (params.top_p < 1.f) {  // nucleus over the untempered probabilities, as llama.cpp
    const std::vector<double> p = Softmax(logits, ids, 1.0);
    double cum = 0;
    size_t keep = ids.size();
    for (size_t i = 0; i < ids.size(); ++i) {
      cum += p[i];
      if (cum >= params.top_p) {
        keep = i + 1;
        break;
      }
    }
    ids.resize(keep);
  }
  if (params.min_p > 0.f) {  // p_i >= min_p * p_max  <=>  logit_i >= max logit + ln(min_p)
    float top = logits[ids[0]];
    for (int32_t id : ids) top = std::max(top, logits[id]);
    const double floor = top + std::log(static_cast<double>(params.min_p));
    std::erase_if(ids, [&](int32_t id) { return logits[id] < floor; });
  }
  const std::vector<double> p = Softmax(logits, ids, params.temperature);
  std::vector<Candidate> out(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) out[i] = {ids[i], static_cast<float>(p[i])};
  return out;
}

Sampler::Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) {}

bool Sampler::penalized() const {
  return params_.presence_penalty != 0.f || params_.frequency_penalty != 0.f;
}

void Sampler::AddContext(absl::Span<const int32_t> tokens) {
  if (repeats_penalized()) seen_.insert(tokens.begin(), tokens.end());
}

SampledLogprobs LogprobsOf(absl::Span<const float> logits, int32_t token, int top) {
  SampledLogprobs out;
  if (logits.empty()) return out;
  double mx = logits[0];
  for (float x : logits) mx = std::max(mx, static_cast<double>(x));
  double sum = 0;
  for (float x : logits) sum += std::exp(x - mx);
  const double log_z = mx + std::log(sum);
  const auto logprob = [&](int32_t id) { return static_cast<float>(logits[id] - log_z); };
  out.token = {
      token, token >= 0 && static_cast<size_t>(token) < logits.size() ? logprob(token) : -INFINITY};
  for (int32_t id : TopIds(logits, static_cast<size_t>(std::max(0, top)))) {
    out.top.push_back({id, logprob(id)});
  }
  return out;
}

int32_t Sampler::Sample(absl::Span<const float> logits) {
  const absl::Span<const float> raw = logits;
  const bool repeats = repeats_penalized() && !seen_.empty();
  if (repeats || (penalized() && !counts_.empty())) {
    penalized_.assign(logits.begin(), logits.end());
    const auto in_vocab = [&](int32_t id) {
      return id >= 0 && static_cast<size_t>(id) < penalized_.size();
    };
    const float rp = params_.repetition_penalty;
    for (int32_t id : seen_) {  // empty unless repetition_penalty is on
      if (!in_vocab(id)) continue;
      float& x = penalized_[id];
      x = x > 0 ? x / rp : x * rp;
    }
    for (const auto& [id, n] : counts_) {
      if (in_vocab(id)) penalized_[id] -= params_.presence_penalty + params_.frequency_penalty * n;
    }
    logits = penalized_;
  }
  int32_t token;
  if (params_.temperature <= 0.f || logits.size() <= 1) {
    token = Argmax(logits);
  } else {
    const std::vector<Candidate> c = SamplingDistribution(logits, params_);
    // u uniform in [0, 1) with 53 random bits.
    const double u = static_cast<double>(rng_() >> 11) * 0x1.0p-53;
    double cum = 0;
    token = c.back().id;
    for (const Candidate& x : c) {
      cum += x.p;
      if (u < cum) {
        token = x.id;
        break;
      }
    }
  }
  if (penalized()) ++counts_[token];
  if (repeats_penalized()) seen_.insert(token);
  if (params_.logprobs >= 0) last_logprobs_ = LogprobsOf(raw, token, params_.logprobs);
  return token;
}

}  // namespace xkv
