// The bounded FIFO of requests waiting for admission (architecture.md §1): Push fails with
// RESOURCE_EXHAUSTED when the queue is full; any waiting request can be cancelled by id; expired
// requests (deadline passed) are taken out by the scheduler. Not thread-safe (the Scheduler owns
// it under its own mutex).
#ifndef XKV_COORDINATOR_REQUEST_QUEUE_H_
#define XKV_COORDINATOR_REQUEST_QUEUE_H_

#include <cstdint>
#include <list>
#include <optional>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/time/time.h"

namespace xkv {

// What the scheduler needs to know about one request.
struct SequenceSpec {
  uint64_t id = 0;
  int64_t prompt_tokens = 0;   // T >= 1
  int64_t max_new_tokens = 0;  // >= 1
  // XKV per_request profile: a scores-only pass over the whole prompt runs before the prefill.
  bool needs_profile = false;
  // A preempted request (recomputed on re-admission): its own prompt's length, while
  // prompt_tokens also counts the tokens it generated before. A prefill chunk ends exactly here
  // (the chunk that observes and compacts the prompt). 0: prompt_tokens.
  int64_t original_prompt_tokens = 0;
  // The reconstruct profile: the input length of each re-reading step (scores-only, no blocks),
  // run after the prefill and before the second token. Empty: none.
  std::vector<int64_t> reread_tokens;
  absl::Time deadline = absl::InfiniteFuture();
};

struct QueuedRequest {
  SequenceSpec spec;
  absl::Time enqueued;
};

class RequestQueue {
 public:
  explicit RequestQueue(int64_t capacity) : capacity_(capacity) {}

  // RESOURCE_EXHAUSTED when full; ALREADY_EXISTS for a duplicate id.
  absl::Status Push(SequenceSpec spec, absl::Time now);
  // At the head, beyond the capacity (a preempted request that was admitted before: it keeps its
  // turn). ALREADY_EXISTS for a duplicate id.
  absl::Status PushFront(SequenceSpec spec, absl::Time now);
  // The oldest request, or nullptr when empty.
  const QueuedRequest* Front() const;
  std::optional<QueuedRequest> PopFront();
  // Removes a waiting request; false when it is not queued.
  bool Cancel(uint64_t id);
  // Removes and returns every request whose deadline is <= now (FIFO order).
  std::vector<QueuedRequest> TakeExpired(absl::Time now);
  bool Contains(uint64_t id) const { return index_.contains(id); }

  int64_t size() const { return static_cast<int64_t>(items_.size()); }
  int64_t capacity() const { return capacity_; }
  bool empty() const { return items_.empty(); }

 private:
  int64_t capacity_;
  std::list<QueuedRequest> items_;
  absl::flat_hash_map<uint64_t, std::list<QueuedRequest>::iterator> index_;
};

}  // namespace xkv

#endif  // XKV_COORDINATOR_REQUEST_QUEUE_H_
