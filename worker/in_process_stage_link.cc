#include "worker/in_process_stage_link.h"

#include <utility>

namespace xkv {

absl::Status InProcessStageLink::Send(uint64_t step_id, absl::Span<const float> hidden) {
  if (outbox_ == nullptr) {
    return absl::FailedPreconditionError("stage link: the last stage has no next stage");
  }
  return outbox_->Put(step_id, std::vector<float>(hidden.begin(), hidden.end()));
}

absl::Status InProcessStageLink::SendError(uint64_t step_id, const absl::Status& error) {
  if (outbox_ == nullptr) return absl::OkStatus();
  return outbox_->Put(step_id,
                      error.ok() ? absl::InternalError("stage link: error without a code") : error);
}

absl::StatusOr<std::vector<float>> InProcessStageLink::Receive(uint64_t step_id,
                                                               absl::Time deadline) {
  if (inbox_ == nullptr) {
    return absl::FailedPreconditionError("stage link: the first stage has no previous stage");
  }
  return inbox_->Take(step_id, deadline);
}

void InProcessStageLink::Discard(uint64_t step_id) {
  if (inbox_ != nullptr) inbox_->Discard(step_id);
}

std::vector<std::unique_ptr<StageLink>> MakeInProcessLinks(int num_stages) {
  std::vector<std::shared_ptr<HiddenMailbox>> boxes;
  for (int i = 1; i < num_stages; ++i) boxes.push_back(std::make_shared<HiddenMailbox>());
  std::vector<std::unique_ptr<StageLink>> links;
  for (int i = 0; i < num_stages; ++i) {
    links.push_back(std::make_unique<InProcessStageLink>(i > 0 ? boxes[i - 1] : nullptr,
                                                         i + 1 < num_stages ? boxes[i] : nullptr));
  }
  return links;
}

}  // namespace xkv
