// EvalRunner's private pieces, shared by its two files (bench/eval_runner.cc and the
// multi-question mode, bench/eval_multi_question.cc): a sequence of the engine being fed and
// decoded (Lane) and one compressed method x budget (Variant). Not for use elsewhere.
#ifndef XKV_BENCH_EVAL_RUNNER_LANES_H_
#define XKV_BENCH_EVAL_RUNNER_LANES_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "bench/eval_metrics.h"
#include "bench/eval_runner.h"
#include "model/kv_allocation.h"

namespace xkv {

// One sequence of the engine: the tokens to feed next and what came back.
struct EvalRunner::Lane {
  uint64_t id = 0;               // 0: none
  int64_t position = 0;          // logical position of pending[0] (never the cache length)
  std::vector<int32_t> pending;  // tokens to feed in the next step
  int64_t logit_rows = 1;        // logits wanted for the last rows of pending
  std::vector<float> logits;     // fp32 [logit_rows, vocab] of the last step
  int max_tokens = 0;            // Decode: cap on generated tokens
  bool done = false;
  std::vector<int32_t> generated;
};

// One method x budget of one query mode: a question lane and a fidelity lane.
struct EvalRunner::Variant {
  std::string method = "full";
  double budget = 1.0;
  AllocationReport report;
  Lane key, fid;
  std::optional<FidelityScore> fidelity;
};

}  // namespace xkv

#endif  // XKV_BENCH_EVAL_RUNNER_LANES_H_
