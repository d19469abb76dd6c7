// Readiness of a coordinator for /ready, in one place: OK while it admits requests and every stage
// serves; UNAVAILABLE naming what is not ready otherwise.
#ifndef XKV_HTTP_COORDINATOR_READINESS_H_
#define XKV_HTTP_COORDINATOR_READINESS_H_

#include "absl/status/status.h"
#include "coordinator/coordinator.h"

namespace xkv {

absl::Status CoordinatorReadiness(Coordinator& coordinator);

}  // namespace xkv

#endif  // XKV_HTTP_COORDINATOR_READINESS_H_
