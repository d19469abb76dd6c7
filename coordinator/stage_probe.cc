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

bool AnyGpuDevice(absl::Span<const std::string> devices) {
  for (const std::string& d : devices) {
    if (d == "cuda" || absl::StartsWith(d, "cuda:")) return true;
  }
  return false;
}

}  // namespace xkv
