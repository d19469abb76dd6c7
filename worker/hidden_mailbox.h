// A thread-safe mailbox of hidden-state rows keyed by step_id: the receiving half of every
// StageLink. The previous stage (a thread in embedded mode, the PushHidden handler in gRPC mode)
// Puts; this stage's executor Takes with a deadline.
#ifndef XKV_WORKER_HIDDEN_MAILBOX_H_
#define XKV_WORKER_HIDDEN_MAILBOX_H_

#include <cstdint>
#include <deque>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace xkv {

class HiddenMailbox {
 public:
  // Remembers this many discarded step ids (older ones are forgotten).
  static constexpr size_t kMaxDiscarded = 4096;

  // Delivers rows (or an error) for step_id. A second delivery for a step not yet taken replaces
  // the first; deliveries for discarded steps are dropped.
  void Put(uint64_t step_id, absl::StatusOr<std::vector<float>> rows);
  // Waits until `deadline` for step_id's delivery and removes it. DEADLINE_EXCEEDED when none
  // came; the delivered error otherwise.
  absl::StatusOr<std::vector<float>> Take(uint64_t step_id, absl::Time deadline);
  // Drops step_id's delivery (now or when it comes).
  void Discard(uint64_t step_id);
  // Wakes every waiter and fails every later Take with UNAVAILABLE (shutdown).
  void Close();
  // Deliveries waiting to be taken.
  size_t pending() const;

 private:
  mutable absl::Mutex mu_;
  struct Delivery {
    absl::Status error;       // not OK: the sender's error
    std::vector<float> rows;  // fp32 [rows, hidden]
  };
  absl::flat_hash_map<uint64_t, Delivery> slots_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<uint64_t> discarded_ ABSL_GUARDED_BY(mu_);
  std::deque<uint64_t> discard_order_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace xkv

#endif  // XKV_WORKER_HIDDEN_MAILBOX_H_
