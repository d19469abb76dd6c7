// StageLink between stages running as threads of one process (embedded `xkv serve`): stage i's
// outbox is stage i+1's inbox, a HiddenMailbox. Send copies the rows into the mailbox.
#ifndef XKV_WORKER_IN_PROCESS_STAGE_LINK_H_
#define XKV_WORKER_IN_PROCESS_STAGE_LINK_H_

#include <memory>
#include <vector>

#include "worker/hidden_mailbox.h"
#include "worker/stage_link.h"

namespace xkv {

class InProcessStageLink : public StageLink {
 public:
  // inbox: rows from the previous stage (null for the first stage); outbox: the next stage's
  // inbox (null for the last stage).
  InProcessStageLink(std::shared_ptr<HiddenMailbox> inbox, std::shared_ptr<HiddenMailbox> outbox)
      : inbox_(std::move(inbox)), outbox_(std::move(outbox)) {}

  absl::Status Send(uint64_t step_id, absl::Span<const float> hidden) override;
  absl::Status SendError(uint64_t step_id, const absl::Status& error) override;
  absl::StatusOr<std::vector<float>> Receive(uint64_t step_id, absl::Time deadline) override;
  void Discard(uint64_t step_id) override;

 private:
  std::shared_ptr<HiddenMailbox> inbox_;
  std::shared_ptr<HiddenMailbox> outbox_;
};

// Links for a chain of num_stages stages (element i belongs to stage i).
std::vector<std::unique_ptr<StageLink>> MakeInProcessLinks(int num_stages);

}  // namespace xkv

#endif  // XKV_WORKER_IN_PROCESS_STAGE_LINK_H_
