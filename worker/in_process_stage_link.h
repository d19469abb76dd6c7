// StageLink between stages running as threads of one process (embedded `xkv serve`): stage i's
// outbox is stage i+1's inbox, an InProcessHandoff. Host rows are copied into its HiddenMailbox;
// device rows (two GPU stages) are handed over as the producer's device buffer itself (the
// receiver copies it into its engine, a device-to-device or peer copy), with an empty mailbox
// delivery as their marker so that order, deadlines, errors and discards stay the mailbox's.
// Device rows travel as fp32 here: a copy on one device or NVLink costs little, and the stages
// compute exactly what one stage would.
#ifndef XKV_WORKER_IN_PROCESS_STAGE_LINK_H_
#define XKV_WORKER_IN_PROCESS_STAGE_LINK_H_

#include <atomic>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "worker/hidden_mailbox.h"
#include "worker/stage_link.h"

namespace xkv {

// The boundary between two in-process stages.
struct InProcessHandoff {
  // Device rows of steps not taken yet older than this many steps are dropped (discarded steps).
  static constexpr uint64_t kMaxDeviceSteps = 64;

  HiddenMailbox mailbox;  // host rows, errors, and the markers of device rows
  absl::Mutex mu;
  absl::flat_hash_map<uint64_t, DeviceRows> device ABSL_GUARDED_BY(mu);
  std::atomic<bool> receiver_takes_device{false};
};

class InProcessStageLink : public StageLink {
 public:
  // inbox: the boundary with the previous stage (null for the first stage); outbox: with the
  // next stage (null for the last stage).
  InProcessStageLink(std::shared_ptr<InProcessHandoff> inbox,
                     std::shared_ptr<InProcessHandoff> outbox)
      : inbox_(std::move(inbox)), outbox_(std::move(outbox)) {}

  absl::Status Send(uint64_t step_id, absl::Span<const float> hidden) override;
  absl::Status SendError(uint64_t step_id, const absl::Status& error) override;
  absl::StatusOr<std::vector<float>> Receive(uint64_t step_id, absl::Time deadline) override;
  void Discard(uint64_t step_id) override;

  void AcceptDeviceRows(bool accept) override;
  bool SendsDeviceRows() const override;
  absl::Status SendDevice(uint64_t step_id, const DeviceRows& rows) override;
  absl::StatusOr<StageRows> ReceiveRows(uint64_t step_id, absl::Time deadline) override;

 private:
  std::shared_ptr<InProcessHandoff> inbox_;
  std::shared_ptr<InProcessHandoff> outbox_;
};

// Links for a chain of num_stages stages (element i belongs to stage i).
std::vector<std::unique_ptr<StageLink>> MakeInProcessLinks(int num_stages);

}  // namespace xkv

#endif  // XKV_WORKER_IN_PROCESS_STAGE_LINK_H_
