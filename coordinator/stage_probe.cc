#include "coordinator/stage_probe.h"

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace xkv {

absl::StatusOr<StageProbe> ProbeStages(absl::Span<const std::unique_ptr<StageClient>> stages) {
  StageProbe probe;
  for (size_t i = 0; i < stages.size(); ++i) {
    absl::StatusOr<xkv::v1::StatusResponse> status = stages[i]->Status();
    if (!status.ok()) {
      return absl::Status(
          status.status().code(),
          absl::StrCat("stage ", i, " (", stages[i]->address(), "): ", status.status().message()));
    }
    probe.devices.push_back(status->device().empty() ? "cpu" : status->device());
    const int64_t limit = status->max_step_tokens();
    if (limit > 0 && (probe.max_step_tokens == 0 || limit < probe.max_step_tokens)) {
      probe.max_step_tokens = limit;
      probe.limiting_stage = static_cast<int>(i);
    }
  }
  return probe;
}

absl::Status CheckStepLimit(const xkv::v1::StatusResponse& status, int stage,
                            const std::string& address, int64_t step_tokens) {
  const int64_t limit = status.max_step_tokens();
  if (limit <= 0 || limit >= step_tokens) return absl::OkStatus();
  return absl::UnavailableError(
      absl::StrCat("pipeline stage ", stage, " (", address, ") takes at most ", limit,
                   " tokens per step (its --max-batched-tokens), below the coordinator's ",
                   step_tokens, "; restart the worker with --max-batched-tokens ", step_tokens,
                   " or more (or the coordinator with ", limit, " or less)"));
}

bool AnyGpuDevice(absl::Span<const std::string> devices) {
  for (const std::string& d : devices) {
    if (d == "cuda" || absl::StartsWith(d, "cuda:")) return true;
  }
  return false;
}

}  // namespace xkv
