#include "worker/in_process_stage_link.h"

#include <utility>

namespace xkv {

absl::Status InProcessStageLink::Send(uint64_t step_id, absl::Span<const float> hidden) {
  if (outbox_ == nullptr) {
    return absl::FailedPreconditionError("stage link: the last stage has no next stage");
  }
  return outbox_->mailbox.Put(step_id, std::vector<float>(hidden.begin(), hidden.end()));
}

absl::Status InProcessStageLink::SendError(uint64_t step_id, const absl::Status& error) {
  if (outbox_ == nullptr) return absl::OkStatus();
  return outbox_->mailbox.Put(
      step_id, error.ok() ? absl::InternalError("stage link: error without a code") : error);
}

absl::StatusOr<std::vector<float>> InProcessStageLink::Receive(uint64_t step_id,
                                                               absl::Time deadline) {
  if (inbox_ == nullptr) {
    return absl::FailedPreconditionError("stage link: the first stage has no previous stage");
  }
  return inbox_->mailbox.Take(step_id, deadline);
}

void InProcessStageLink::Discard(uint64_t step_id) {
  if (inbox_ == nullptr) return;
  inbox_->mailbox.Discard(step_id);
  absl::MutexLock lock(&inbox_->mu);
  inbox_->device.erase(step_id);
}

void InProcessStageLink::AcceptDeviceRows(bool accept) {
  if (inbox_ != nullptr) inbox_->receiver_takes_device.store(accept);
}

bool InProcessStageLink::SendsDeviceRows() const {
  return outbox_ != nullptr && outbox_->receiver_takes_device.load();
}

absl::Status InProcessStageLink::SendDevice(uint64_t step_id, const DeviceRows& rows) {
  if (outbox_ == nullptr) {
    return absl::FailedPreconditionError("stage link: the last stage has no next stage");
  }
  {
    absl::MutexLock lock(&outbox_->mu);
    outbox_->device[step_id] = rows;
    // Rows of steps the receiver dropped (Discard before they came) would stay forever.
    absl::erase_if(outbox_->device, [step_id](const auto& entry) {
      return entry.first + InProcessHandoff::kMaxDeviceSteps < step_id;
    });
  }
  return outbox_->mailbox.Put(step_id, std::vector<float>());  // the marker
}

absl::StatusOr<StageRows> InProcessStageLink::ReceiveRows(uint64_t step_id, absl::Time deadline) {
  absl::StatusOr<std::vector<float>> host = Receive(step_id, deadline);
  if (!host.ok()) return host.status();
  StageRows out;
  if (host->empty()) {
    absl::MutexLock lock(&inbox_->mu);
    auto it = inbox_->device.find(step_id);
    if (it != inbox_->device.end()) {
      out.device = std::move(it->second);
      inbox_->device.erase(it);
    }
  }
  out.host = *std::move(host);
  return out;
}

std::vector<std::unique_ptr<StageLink>> MakeInProcessLinks(int num_stages) {
  std::vector<std::shared_ptr<InProcessHandoff>> boxes;
  for (int i = 1; i < num_stages; ++i) boxes.push_back(std::make_shared<InProcessHandoff>());
  std::vector<std::unique_ptr<StageLink>> links;
  for (int i = 0; i < num_stages; ++i) {
    links.push_back(std::make_unique<InProcessStageLink>(i > 0 ? boxes[i - 1] : nullptr,
                                                         i + 1 < num_stages ? boxes[i] : nullptr));
  }
  return links;
}

}  // namespace xkv
