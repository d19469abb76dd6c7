// What the fields of one Worker step sequence mean, for the stage executor's files (one place per
// rule): its new-token count, its mode's consequences (no KV kept, scored window, re-reading,
// sampling), its scoring and sampling parameters, and a compaction spec's budget of a layer.
#ifndef XKV_WORKER_STEP_FIELDS_H_
#define XKV_WORKER_STEP_FIELDS_H_

#include <cstdint>

#include "kernels/cpu/importance.h"
#include "model/sampler.h"
#include "xkv/v1/worker.pb.h"

namespace xkv::step_fields {

using xkv::v1::CompactSpec;
using xkv::v1::StepSequence;

// A sequence's new tokens: n_new, or the count of its tokens when n_new is unset.
inline int64_t NewTokens(const StepSequence& s) {
  return s.n_new() != 0 ? s.n_new() : static_cast<int64_t>(s.tokens_size());
}
// No KV kept: a mini-prefill, or a reconstruct profile's re-reading of a span of the cached prompt
// (architecture.md §3.5). A step's sequences are all scores-only or none.
inline bool ScoresOnly(const StepSequence& s) {
  return s.mode() == xkv::v1::SEQUENCE_MODE_SCORES_ONLY ||
         s.mode() == xkv::v1::SEQUENCE_MODE_REREAD;
}
inline bool Rereads(const StepSequence& s) { return s.mode() == xkv::v1::SEQUENCE_MODE_REREAD; }
inline bool Observed(const StepSequence& s) { return s.mode() != xkv::v1::SEQUENCE_MODE_NORMAL; }
// The engine scores the step's new tokens' observation window (a mini-prefill or an observed
// prefill chunk; a re-reading step is scored through its span instead).
inline bool ScoresWindow(const StepSequence& s) { return Observed(s) && !Rereads(s); }
// Last stage: the step samples a token of the sequence.
inline bool Samples(const StepSequence& s) { return !s.skip_sampling() && !ScoresOnly(s); }
// A plain decode: one new token given, kept, sampled, no compaction (async decode queues only
// steps of these; a queued step undone by another step of these counts as a miss).
inline bool PlainDecode(const StepSequence& s) {
  return NewTokens(s) == 1 && s.tokens_size() == 1 && !Observed(s) && Samples(s) &&
         !s.has_compact();
}

// The window scoring of a sequence: the stage's (window, granularity, its pool kernel, sum,
// average), with the request's reduction, pooling and kernel when the step carries them
// (StepSequence.scoring, checked by StageExecutor::CheckFields).
inline ImportanceOptions ScoringOf(const StepSequence& s, ImportanceOptions stage) {
  if (!s.has_scoring()) return stage;
  const xkv::v1::SequenceScoring& r = s.scoring();
  stage.reduce = r.reduce() == xkv::v1::SCORE_REDUCE_MAX ? ScoreReduce::kMax : ScoreReduce::kSum;
  stage.pool = r.pool() == xkv::v1::SCORE_POOL_MAX ? ScorePool::kMax : ScorePool::kAvg;
  stage.pool_kernel = r.pool_kernel();
  return stage;
}

// The Sampler's parameters of a sequence (WorkerSampling's unset fields: off).
inline SamplingParams SamplingOf(const StepSequence& s) {
  const xkv::v1::WorkerSampling& p = s.sampling();
  SamplingParams o;
  o.temperature = p.temperature();
  o.top_k = p.top_k();
  o.top_p = p.top_p() == 0.f ? 1.f : p.top_p();
  o.seed = p.seed();
  o.min_p = p.min_p();
  o.presence_penalty = p.presence_penalty();
  o.frequency_penalty = p.frequency_penalty();
  o.logprobs = p.has_logprobs() ? p.logprobs() : -1;
  o.repetition_penalty = p.has_repetition_penalty() ? p.repetition_penalty() : 1.f;
  return o;
}

inline const xkv::v1::LayerBudget* FindBudget(const CompactSpec& spec, int layer) {
  for (const xkv::v1::LayerBudget& b : spec.budgets()) {
    if (b.layer() == layer) return &b;
  }
  return nullptr;
}

}  // namespace xkv::step_fields

#endif  // XKV_WORKER_STEP_FIELDS_H_
