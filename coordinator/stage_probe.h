// What a pipeline's stages are, asked of the stages themselves before any is loaded (a worker
// reports in StatusResponse the device it was started with, `xkv worker --device`, and the most
// tokens it takes in one step, its --max-batched-tokens), and the one rule for the defaults that
// follow: a pipeline with a stage on a GPU takes the GPU defaults (tools/serve_flags.h: one
// micro-batch per stage, 8192 tokens per step, 2048-token re-reading chunks), else the CPU ones.
// `xkv serve` applies the rule to its --device list, `xkv coordinator` to what its workers report
// (architecture.md §6).
#ifndef XKV_COORDINATOR_STAGE_PROBE_H_
#define XKV_COORDINATOR_STAGE_PROBE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "coordinator/stage_client.h"

namespace xkv {

struct StageProbe {
  std::vector<std::string> devices;  // [stage]; "cpu" where a stage reports none
  // The smallest step limit a stage reported and its index; 0 / -1 when none reported one.
  int64_t max_step_tokens = 0;
  int limiting_stage = -1;
};

// Asks every stage, in order. The first failing Status call's error, its code kept (UNAVAILABLE
// while a worker is not up yet) and the stage's index and address named.
absl::StatusOr<StageProbe> ProbeStages(absl::Span<const std::unique_ptr<StageClient>> stages);

// The stage's own step limit (its reported --max-batched-tokens) against the coordinator's
// `step_tokens`: UNAVAILABLE naming the stage, both numbers and the fix when the stage takes less
// (a worker restarted with a smaller limit: reloading it would make every larger step fail), OK
// when it takes as much or reports no limit. Checked before every reload and by the health
// monitor, so the stage stays down, and says why, until it is restarted with enough.
absl::Status CheckStepLimit(const xkv::v1::StatusResponse& status, int stage,
                            const std::string& address, int64_t step_tokens);

// Whether some device is a GPU ("cuda" or "cuda:N").
bool AnyGpuDevice(absl::Span<const std::string> devices);

}  // namespace xkv

#endif  // XKV_COORDINATOR_STAGE_PROBE_H_
