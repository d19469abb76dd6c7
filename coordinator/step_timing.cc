#include "coordinator/step_timing.h"

#include "absl/strings/str_format.h"

namespace xkv {

StepPhases& StepPhases::operator+=(const StepPhases& o) {
  plan_ms += o.plan_ms;
  launch_ms += o.launch_ms;
  wait_ms += o.wait_ms;
  stage_ms += o.stage_ms;
  compute_ms += o.compute_ms;
  apply_ms += o.apply_ms;
  sequences += o.sequences;
  rows += o.rows;
  decode_only += o.decode_only;
  prompt_tokens += o.prompt_tokens;
  compactions += o.compactions;
  compact_ms += o.compact_ms;
  preempted += o.preempted;
  from_lookahead += o.from_lookahead;
  lookahead_undone += o.lookahead_undone;
  return *this;
}

std::string FormatStepPhases(const StepPhases& s, int64_t passes, double wall_ms) {
  const double n = passes > 0 ? static_cast<double>(passes) : 1.0;
  const double step = wall_ms / n;
  const double other = step - (s.plan_ms + s.launch_ms + s.wait_ms + s.apply_ms) / n;
  return absl::StrFormat(
      "xkv coordinator: %d steps, %.1f sequences / %.1f rows each: one every %.3f ms = plan %.3f + "
      "launch %.3f + wait %.3f (stages %.3f, compute %.3f) + apply %.3f + other %.3f ms; %d "
      "decode-only, %d with %d prompt tokens, %d compacted (%.3f ms on the loop), %d preempted; %d "
      "from lookahead, %d undone",
      passes, s.sequences / n, s.rows / n, step, s.plan_ms / n, s.launch_ms / n, s.wait_ms / n,
      s.stage_ms / n, s.compute_ms / n, s.apply_ms / n, other, s.decode_only,
      passes - s.decode_only, s.prompt_tokens, s.compactions, s.compact_ms, s.preempted,
      s.from_lookahead, s.lookahead_undone);
}

std::optional<std::string> StepTimingLog::Add(const StepPhases& pass, Clock::time_point now) {
  if (every_ <= 0) return std::nullopt;
  if (!since_.has_value()) {
    since_ = now;
    return std::nullopt;
  }
  sum_ += pass;
  if (++passes_ < every_) return std::nullopt;
  const double wall_ms = std::chrono::duration<double, std::milli>(now - *since_).count();
  std::string line = FormatStepPhases(sum_, passes_, wall_ms);
  sum_ = StepPhases();
  passes_ = 0;
  since_ = now;
  return line;
}

}  // namespace xkv
