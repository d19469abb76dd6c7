#include "tools/lifecycle_flags.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "base/status_macros.h"

namespace xkv {
namespace {

// Seconds from a flag: finite, >= 0 and at most a day.
absl::Status Seconds(const char* flag, double seconds, absl::Duration* out) {
  if (!std::isfinite(seconds) || seconds < 0 || seconds > 86400) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag, " is ", seconds, "; it must be in [0, 86400] seconds"));
  }
  *out = absl::Seconds(seconds);
  return absl::OkStatus();
}

}  // namespace

void RegisterLifecycleFlags(FlagSet& flags, LifecycleFlags* f) {
  flags.Double("shutdown-grace", &f->shutdown_grace_s,
               "seconds in-flight requests may still run after SIGTERM/SIGINT (admission stops "
               "at once); the rest then end with UNAVAILABLE");
  flags.Double("max-queue-wait", &f->max_queue_wait_s,
               "seconds a request may wait for admission (batch slot and KV room) before it "
               "fails with RESOURCE_EXHAUSTED");
}

absl::Status ApplyLifecycleFlags(const LifecycleFlags& f, CoordinatorOptions* options) {
  RETURN_IF_ERROR(Seconds("shutdown-grace", f.shutdown_grace_s, &options->shutdown_grace));
  return Seconds("max-queue-wait", f.max_queue_wait_s, &options->scheduler.max_queue_wait);
}

}  // namespace xkv
