// Token sampling in llama.cpp's order: penalties → top-k → top-p → min-p → temperature → sample.
// temperature <= 0 is greedy (argmax of the penalized logits, lowest index on ties). Reproducible:
// each Sampler owns a std::mt19937_64 seeded from SamplingParams::seed. Penalties, in vLLM's order:
// - repetition_penalty (vLLM's / llama.cpp's; 1: off) applies to every token of the context (the
//   prompt, given with AddContext) and of the output: a positive logit is divided by it, a
//   non-positive one multiplied, once per distinct token;
// - then the presence/frequency penalties (OpenAI's) apply to the tokens this Sampler has
//   generated so far: logit -= presence_penalty * [count > 0] + frequency_penalty * count.
#ifndef XKV_MODEL_SAMPLER_H_
#define XKV_MODEL_SAMPLER_H_

#include <cstdint>
#include <optional>
#include <random>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace xkv {

struct SamplingParams {
  float temperature = 0.f;  // <= 0: greedy
  int top_k = 0;            // <= 0 or >= vocab: disabled
  float top_p = 1.f;        // in (0, 1]; 1: disabled
  uint64_t seed = 0;
  float min_p = 0.f;               // in [0, 1]: drop tokens with p < min_p * p_max; 0: disabled
  float presence_penalty = 0.f;    // in [-2, 2]
  float frequency_penalty = 0.f;   // in [-2, 2]
  float repetition_penalty = 1.f;  // > 0 and finite; 1: off
  int logprobs = -1;               // in [0, 20]: Sample also records LogprobsOf(logits, token,
                                   // logprobs); -1: off
};

struct TokenLogprob {
  int32_t id = 0;
  float logprob = 0.f;
};

// A sampled token's log-probability under the model (log-softmax of the raw logits: before
// penalties, truncation and temperature) and the `top` most likely tokens (descending, lowest id
// first on ties).
struct SampledLogprobs {
  TokenLogprob token;
  std::vector<TokenLogprob> top;
};

SampledLogprobs LogprobsOf(absl::Span<const float> logits, int32_t token, int top);

// INVALID_ARGUMENT for NaN/infinite temperature, top_p outside (0, 1], min_p outside [0, 1],
// presence/frequency penalties outside [-2, 2], a repetition_penalty that is not finite and > 0,
// logprobs outside [-1, 20].
absl::Status ValidateSamplingParams(const SamplingParams& params);

// Index of the largest logit; the lowest such index on ties.
int32_t Argmax(absl::Span<const float> logits);

// One candidate after truncation: token id and its probability (renormalised over the kept set).
struct Candidate {
  int32_t id;
  float p;
};

// The kept candidates and their final probabilities (after top-k, top-p, min-p, temperature;
// `logits` already penalized): sorted by descending logit (lowest id first on ties) when top-k or
// top-p truncates, else in id order. Exposed for tests and logprob reporting.
std::vector<Candidate> SamplingDistribution(absl::Span<const float> logits,
                                            const SamplingParams& params);

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);

  // Context tokens (the prompt) that count toward repetition_penalty; repeats are harmless. A
  // no-op when the penalty is off.
  void AddContext(absl::Span<const int32_t> tokens);

  // Samples one token id from logits (fp32 [vocab]). Greedy when temperature <= 0. The token
  // counts toward the penalties of later samples.
  int32_t Sample(absl::Span<const float> logits);

  const SamplingParams& params() const { return params_; }
  // With params().logprobs >= 0: the last sampled token's logprobs.
  const std::optional<SampledLogprobs>& last_logprobs() const { return last_logprobs_; }

 private:
  bool penalized() const;  // presence / frequency
  bool repeats_penalized() const { return params_.repetition_penalty != 1.f; }

  SamplingParams params_;
  std::mt19937_64 rng_;
  absl::flat_hash_map<int32_t, int32_t> counts_;  // generated token -> times (with penalties)
  absl::flat_hash_set<int32_t> seen_;  // context and generated tokens (with repetition_penalty)
  std::vector<float> penalized_;       // scratch: the penalized logits
  std::optional<SampledLogprobs> last_logprobs_;
};

}  // namespace xkv

#endif  // XKV_MODEL_SAMPLER_H_
