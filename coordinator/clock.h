// An injectable clock: the coordinator reads time only through this, so tests drive it by hand
// (architecture.md §8.8: no sleeps in tests).
#ifndef XKV_COORDINATOR_CLOCK_H_
#define XKV_COORDINATOR_CLOCK_H_

#include <mutex>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace xkv {

class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() const = 0;
};

class RealClock final : public Clock {
 public:
  absl::Time Now() const override { return absl::Now(); }
  static const Clock* Get() {
    static const RealClock clock;
    return &clock;
  }
};

// Starts at the Unix epoch; moves only when told. Thread-safe.
class FakeClock final : public Clock {
 public:
  absl::Time Now() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return now_;
  }
  void Advance(absl::Duration d) {
    std::lock_guard<std::mutex> lock(mu_);
    now_ += d;
  }

 private:
  mutable std::mutex mu_;
  absl::Time now_ = absl::UnixEpoch();
};

}  // namespace xkv

#endif  // XKV_COORDINATOR_CLOCK_H_
