// Where a serving step's time goes (issue 13): the coordinator's loop times each pass of a step
// through its phases and StepTimingLog sums them over N passes into one stderr line
// (`xkv serve --log-step-timing N`), beside the slowest stage's own step and engine compute time.
// Cheap: a few clock reads per step, one line per N steps.
#ifndef XKV_COORDINATOR_STEP_TIMING_H_
#define XKV_COORDINATOR_STEP_TIMING_H_

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

namespace xkv {

// One pass's phases, milliseconds (sums when several are added).
struct StepPhases {
  double plan_ms = 0;     // Scheduler::NextMicroBatch
  double launch_ms = 0;   // the step request built and queued on the stages
  double wait_ms = 0;     // until every stage answered, their answers merged
  double stage_ms = 0;    // the slowest stage's own step (StepTimings.total_ms)
  double compute_ms = 0;  // the largest engine compute of the stages (layers, head, sampling)
  double apply_ms = 0;  // results applied: KV ledger check, tokens accepted, detokenized, streamed
  int64_t sequences = 0;  // in the pass
  int64_t rows = 0;       // tokens computed (decode: 1 per sequence)
  // What the passes held (issue 13: which decodes shared a step with prompt work).
  int64_t decode_only = 0;    // passes of decode tokens only
  int64_t prompt_tokens = 0;  // prefill, profile and re-reading tokens
  int64_t compactions = 0;    // sequences compacted (in the pass, or by a Compact call after it)
  double compact_ms = 0;      // the loop's time in Compact calls (solve included)
  int64_t preempted = 0;      // sequences preempted when the step was planned
  // Async decode: passes a stage served from the step it queued ahead, and passes before which a
  // stage undid a step queued ahead (it differed from the real one).
  int64_t from_lookahead = 0;
  int64_t lookahead_undone = 0;
  StepPhases& operator+=(const StepPhases& o);
};

// The line for `passes` passes whose phases sum to `sum`, over `wall_ms` of loop time
// ("xkv coordinator: 32 steps, 8.0 sequences / 8.0 rows each: one every 2.10 ms = plan 0.01 +
// launch 0.03 + wait 1.90 (stages 1.80, compute 1.70) + apply 0.12 + other 0.04 ms; 30
// decode-only, 2 with 1024 prompt tokens, 1 compacted (0.80 ms on the loop), 0 preempted; 28
// from lookahead, 1 undone").
std::string FormatStepPhases(const StepPhases& sum, int64_t passes, double wall_ms);

class StepTimingLog {
 public:
  using Clock = std::chrono::steady_clock;
  // every: passes per line; 0: off (Add does nothing).
  explicit StepTimingLog(int every) : every_(every) {}
  bool enabled() const { return every_ > 0; }
  // Adds one completed pass at `now`; returns the line when `every` passes were summed (and
  // starts a new sum). The first pass only starts the wall clock.
  std::optional<std::string> Add(const StepPhases& pass, Clock::time_point now);

 private:
  const int every_;
  StepPhases sum_;
  int64_t passes_ = 0;
  std::optional<Clock::time_point> since_;
};

}  // namespace xkv

#endif  // XKV_COORDINATOR_STEP_TIMING_H_
