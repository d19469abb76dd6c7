#include "http/coordinator_readiness.h"

#include "absl/strings/str_cat.h"

namespace xkv {

absl::Status CoordinatorReadiness(Coordinator& coordinator) {
  const xkv::v1::GetClusterStatusResponse cluster = coordinator.GetClusterStatus();
  if (cluster.draining()) return absl::UnavailableError("draining: not admitting requests");
  for (const xkv::v1::StageStatus& s : cluster.stages()) {
    if (s.health() != xkv::v1::HEALTH_STATE_SERVING) {
      return absl::UnavailableError(
          absl::StrCat("stage ", s.index(), " is ", xkv::v1::HealthState_Name(s.health())));
    }
  }
  return absl::OkStatus();
}

}  // namespace xkv
