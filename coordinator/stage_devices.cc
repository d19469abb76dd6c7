#include "coordinator/stage_devices.h"

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace xkv {

absl::StatusOr<std::vector<std::string>> StageDevices(
    absl::Span<const std::unique_ptr<StageClient>> stages) {
  std::vector<std::string> devices;
  devices.reserve(stages.size());
  for (const std::unique_ptr<StageClient>& stage : stages) {
    absl::StatusOr<xkv::v1::StatusResponse> status = stage->Status();
    if (!status.ok()) {
      return absl::Status(status.status().code(),
                          absl::StrCat("stage ", devices.size(), " (", stage->address(),
                                       "): ", status.status().message()));
    }
    devices.push_back(status->device().empty() ? "cpu" : status->device());
  }
  return devices;
}

bool AnyGpuDevice(absl::Span<const std::string> devices) {
  for (const std::string& d : devices) {
    if (d == "cuda" || absl::StartsWith(d, "cuda:")) return true;
  }
  return false;
}

}  // namespace xkv
