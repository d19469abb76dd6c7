// A thread-safe mailbox of hidden-state rows keyed by step_id: the receiving half of every
// StageLink. The previous stage (a thread in embedded mode, the PushHidden handler in gRPC mode)
// Puts; this stage's executor Takes with a deadline.
//
// Bounded: a delivery is at most max_delivery_bytes; at most max_pending deliveries of at most
// max_pending_bytes in all wait to be taken (a new one pushes the oldest out), and a delivery
// nobody took within `ttl` expires. So deliveries for steps that never run (a confused or hostile
// sender) cannot grow the worker's memory beyond max_pending_bytes.
#ifndef XKV_WORKER_HIDDEN_MAILBOX_H_
#define XKV_WORKER_HIDDEN_MAILBOX_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <limits>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace xkv {

struct HiddenMailboxOptions {
  size_t max_pending = 64;  // deliveries waiting to be taken
  // Rows of one step; the default (no bound) is for in-process links, a worker sets its own.
  int64_t max_delivery_bytes = std::numeric_limits<int64_t>::max();
  // Rows of every waiting delivery together (a new one pushes the oldest out).
  int64_t max_pending_bytes = std::numeric_limits<int64_t>::max();
  absl::Duration ttl = absl::Minutes(2);                         // a delivery nobody takes expires
  std::function<absl::Time()> now = [] { return absl::Now(); };  // tests inject a clock
};

class HiddenMailbox {
 public:
  // Remembers this many discarded step ids (older ones are forgotten).
  static constexpr size_t kMaxDiscarded = 4096;

  HiddenMailbox() : HiddenMailbox(HiddenMailboxOptions()) {}
  explicit HiddenMailbox(HiddenMailboxOptions options);

  // Delivers rows (or an error) for step_id. A second delivery for a step not yet taken replaces
  // the first; deliveries for discarded steps are dropped. RESOURCE_EXHAUSTED (nothing changes)
  // when the rows exceed max_delivery_bytes or max_pending_bytes.
  absl::Status Put(uint64_t step_id, absl::StatusOr<std::vector<float>> rows);
  // Waits until `deadline` for step_id's delivery and removes it. DEADLINE_EXCEEDED when none
  // came; the delivered error otherwise.
  absl::StatusOr<std::vector<float>> Take(uint64_t step_id, absl::Time deadline);
  // Drops step_id's delivery (now or when it comes).
  void Discard(uint64_t step_id);
  // Wakes every waiter and fails every later Take with UNAVAILABLE (shutdown).
  void Close();
  // Deliveries waiting to be taken (expired ones not counted) and their bytes.
  size_t pending() const;
  int64_t pending_bytes() const;
  // Deliveries dropped unread: pushed out by newer ones or expired.
  int64_t dropped() const;

 private:
  struct Delivery {
    absl::Status error;       // not OK: the sender's error
    std::vector<float> rows;  // fp32 [rows, hidden]
    absl::Time arrived;
  };
  void ExpireLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EraseLocked(uint64_t step_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const HiddenMailboxOptions options_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<uint64_t, Delivery> slots_ ABSL_GUARDED_BY(mu_);
  int64_t bytes_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t dropped_ ABSL_GUARDED_BY(mu_) = 0;
  absl::flat_hash_set<uint64_t> discarded_ ABSL_GUARDED_BY(mu_);
  std::deque<uint64_t> discard_order_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace xkv

#endif  // XKV_WORKER_HIDDEN_MAILBOX_H_
