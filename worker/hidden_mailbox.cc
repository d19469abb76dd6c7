#include "worker/hidden_mailbox.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"

namespace xkv {

HiddenMailbox::HiddenMailbox(HiddenMailboxOptions options) : options_(std::move(options)) {}

void HiddenMailbox::EraseLocked(uint64_t step_id) {
  auto it = slots_.find(step_id);
  if (it == slots_.end()) return;
  bytes_ -= static_cast<int64_t>(it->second.rows.size() * sizeof(float));
  slots_.erase(it);
}

void HiddenMailbox::ExpireLocked() {
  const absl::Time cutoff = options_.now() - options_.ttl;
  std::vector<uint64_t> expired;
  for (const auto& [id, d] : slots_) {
    if (d.arrived <= cutoff) expired.push_back(id);
  }
  for (uint64_t id : expired) EraseLocked(id);
  dropped_ += static_cast<int64_t>(expired.size());
}

absl::Status HiddenMailbox::Put(uint64_t step_id, absl::StatusOr<std::vector<float>> rows) {
  const int64_t bytes = rows.ok() ? static_cast<int64_t>(rows->size() * sizeof(float)) : 0;
  const int64_t bound = std::min(options_.max_delivery_bytes, options_.max_pending_bytes);
  if (bytes > bound) {
    return absl::ResourceExhaustedError(absl::StrCat("stage link: ", bytes,
                                                     " bytes of hidden rows for step ", step_id,
                                                     " exceed the bound of ", bound, " per step"));
  }
  absl::MutexLock lock(&mu_);
  if (discarded_.contains(step_id)) return absl::OkStatus();
  ExpireLocked();
  EraseLocked(step_id);
  while (!slots_.empty() &&
         (slots_.size() >= options_.max_pending || bytes_ + bytes > options_.max_pending_bytes)) {
    auto oldest = slots_.begin();
    for (auto it = slots_.begin(); it != slots_.end(); ++it) {
      if (it->second.arrived < oldest->second.arrived) oldest = it;
    }
    EraseLocked(oldest->first);
    ++dropped_;
  }
  Delivery d;
  d.arrived = options_.now();
  if (rows.ok()) {
    d.rows = *std::move(rows);
  } else {
    d.error = rows.status();
  }
  bytes_ += bytes;
  slots_.insert_or_assign(step_id, std::move(d));
  return absl::OkStatus();
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
  bytes_ -= static_cast<int64_t>(d.rows.size() * sizeof(float));
  slots_.erase(it);
  if (!d.error.ok()) return d.error;
  return std::move(d.rows);
}

void HiddenMailbox::Discard(uint64_t step_id) {
  absl::MutexLock lock(&mu_);
  EraseLocked(step_id);
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
  const absl::Time cutoff = options_.now() - options_.ttl;
  size_t n = 0;
  for (const auto& [id, d] : slots_) n += d.arrived > cutoff;
  return n;
}

int64_t HiddenMailbox::pending_bytes() const {
  absl::MutexLock lock(&mu_);
  return bytes_;
}

int64_t HiddenMailbox::dropped() const {
  absl::MutexLock lock(&mu_);
  return dropped_;
}

}  // namespace xkv
