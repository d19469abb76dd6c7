// What runs a pipeline's stages, asked of the stages themselves before any is loaded (a worker
// reports the device it was started with, `xkv worker --device`, in StatusResponse.device), and
// the one rule for the defaults that follow: a pipeline with a stage on a GPU takes the GPU
// defaults (tools/serve_flags.h: the one_pass profile, one micro-batch per stage, 8192 tokens per
// step, 2048-token re-reading chunks), else the CPU ones. `xkv serve` applies the rule to its
// --device list, `xkv coordinator` to what its workers report (architecture.md §6).
#ifndef XKV_COORDINATOR_STAGE_DEVICES_H_
#define XKV_COORDINATOR_STAGE_DEVICES_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "coordinator/stage_client.h"

namespace xkv {

// Each stage's device ("cpu" where a stage reports none), in stage order. The first failing
// Status call's error, its code kept (UNAVAILABLE while a worker is not up yet) and its address
// named.
absl::StatusOr<std::vector<std::string>> StageDevices(
    absl::Span<const std::unique_ptr<StageClient>> stages);

// Whether some device is a GPU ("cuda" or "cuda:N").
bool AnyGpuDevice(absl::Span<const std::string> devices);

}  // namespace xkv

#endif  // XKV_COORDINATOR_STAGE_DEVICES_H_
