#include "coordinator/request_queue.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace xkv {

absl::Status RequestQueue::Push(SequenceSpec spec, absl::Time now) {
  if (index_.contains(spec.id)) {
    return absl::AlreadyExistsError(absl::StrCat("request ", spec.id, " is already queued"));
  }
  if (size() >= capacity_) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the request queue is full (", capacity_, " waiting requests); retry later"));
  }
  const uint64_t id = spec.id;
  items_.push_back(QueuedRequest{std::move(spec), now});
  index_[id] = std::prev(items_.end());
  return absl::OkStatus();
}

absl::Status RequestQueue::PushFront(SequenceSpec spec, absl::Time now) {
  if (index_.contains(spec.id)) {
    return absl::AlreadyExistsError(absl::StrCat("request ", spec.id, " is already queued"));
  }
  const uint64_t id = spec.id;
  items_.push_front(QueuedRequest{std::move(spec), now});
  index_[id] = items_.begin();
  return absl::OkStatus();
}

const QueuedRequest* RequestQueue::Front() const {
  return items_.empty() ? nullptr : &items_.front();
}

std::optional<QueuedRequest> RequestQueue::PopFront() {
  if (items_.empty()) return std::nullopt;
  QueuedRequest front = std::move(items_.front());
  items_.pop_front();
  index_.erase(front.spec.id);
  return front;
}

bool RequestQueue::Cancel(uint64_t id) {
  auto it = index_.find(id);
  if (it == index_.end()) return false;
  items_.erase(it->second);
  index_.erase(it);
  return true;
}

std::vector<QueuedRequest> RequestQueue::TakeExpired(absl::Time now) {
  std::vector<QueuedRequest> expired;
  for (auto it = items_.begin(); it != items_.end();) {
    if (it->spec.deadline <= now) {
      index_.erase(it->spec.id);
      expired.push_back(std::move(*it));
      it = items_.erase(it);
    } else {
      ++it;
    }
  }
  return expired;
}

}  // namespace xkv
