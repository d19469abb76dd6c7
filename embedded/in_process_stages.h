// In-process pipeline stages (architecture.md §1): StageExecutors on in-process links, reached by
// the coordinator through StageClient by direct calls with the same Worker messages as over gRPC.
// `xkv serve` and `xkv generate` run the service's pipeline with these; only the StageClient and
// StageLink implementations differ from the multi-process form.
#ifndef XKV_EMBEDDED_IN_PROCESS_STAGES_H_
#define XKV_EMBEDDED_IN_PROCESS_STAGES_H_

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "coordinator/stage_client.h"
#include "model/llama_model.h"

namespace xkv {

struct InProcessStagesOptions {
  int num_stages = 1;
  // One device for every stage, or one per stage: "cpu", "cuda:N".
  std::vector<std::string> devices = {"cpu"};
  int threads_per_stage = 1;  // CPU threads of each stage
  // The CPU engine's arithmetic; unset: the worker contract's default (kGgml, llama.cpp's).
  std::optional<Numerics> numerics;
};

// INVALID_ARGUMENT for no stages, a device list of another length than 1 or num_stages, or a bad
// device name.
absl::StatusOr<std::vector<std::unique_ptr<StageClient>>> MakeInProcessStages(
    const InProcessStagesOptions& options);

}  // namespace xkv

#endif  // XKV_EMBEDDED_IN_PROCESS_STAGES_H_
