#include "worker/hidden_mailbox.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace xkv {

void HiddenMailbox::Put(uint64_t step_id, absl::StatusOr<std::vector<float>> rows) {
  absl::MutexLock lock(&mu_);
  if (discarded_.contains(step_id)) return;
  Delivery d;
  if (rows.ok()) {
    d.rows = *std::move(rows);
  } else {
    d.error = rows.status();
  }
  slots_.insert_or_assign(step_id, std::move(d));
}

absl::StatusOr<std::vector<float>> HiddenMailbox::Take(uint64_t step_id, absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  auto arrived = [this, step_id]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    return closed_ || slots_.contains(step_id);
  };
  mu_.AwaitWithDeadline(absl::Condition(&arrived), deadline);
  auto it = slots_.find(step_id);
  if (it == slots_.end() && closed_) {
    return absl::UnavailableError("stage link: shutting down");
  }
  if (it == slots_.end()) {
    return absl::DeadlineExceededError(
        absl::StrCat("stage link: no hidden rows from the previous stage for step ", step_id));
  }
  Delivery d = std::move(it->second);
  slots_.erase(it);
  if (!d.error.ok()) return d.error;
  return std::move(d.rows);
}

void HiddenMailbox::Discard(uint64_t step_id) {
  absl::MutexLock lock(&mu_);
  slots_.erase(step_id);
  if (!discarded_.insert(step_id).second) return;
  discard_order_.push_back(step_id);
  while (discard_order_.size() > kMaxDiscarded) {
    discarded_.erase(discard_order_.front());
    discard_order_.pop_front();
  }
}

void HiddenMailbox::Close() {
  absl::MutexLock lock(&mu_);
  closed_ = true;
}

size_t HiddenMailbox::pending() const {
  absl::MutexLock lock(&mu_);
  return slots_.size();
}

}  // namespace xkv
