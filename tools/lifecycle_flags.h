// Flags of `xkv serve` and `xkv coordinator` for the request lifecycle: how long a request may
// wait in the queue and how long in-flight requests may still run after SIGTERM.
#ifndef XKV_TOOLS_LIFECYCLE_FLAGS_H_
#define XKV_TOOLS_LIFECYCLE_FLAGS_H_

#include "absl/status/status.h"
#include "coordinator/coordinator.h"
#include "tools/flag_set.h"

namespace xkv {

struct LifecycleFlags {
  double shutdown_grace_s = 30;
  double max_queue_wait_s = 60;
};

void RegisterLifecycleFlags(FlagSet& flags, LifecycleFlags* f);
// INVALID_ARGUMENT for a negative or non-finite value (naming the flag).
absl::Status ApplyLifecycleFlags(const LifecycleFlags& f, CoordinatorOptions* options);

}  // namespace xkv

#endif  // XKV_TOOLS_LIFECYCLE_FLAGS_H_
