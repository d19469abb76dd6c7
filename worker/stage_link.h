// The data plane between adjacent stages (architecture.md §1): one stage's view of its links —
// Send to the next stage, Receive from the previous one — keyed by the coordinator's step_id, so
// a stage receives exactly the rows of the step it is executing. Implementations:
// InProcessStageLink (embedded mode: threads of one process), GrpcStageLink (PushHidden RPCs),
// NcclStageLink (worker/nccl/: ncclSend/ncclRecv between GPU workers). Every wait has a deadline: a
// missing stage is DEADLINE_EXCEEDED or UNAVAILABLE, never a hang. Core code: no gRPC here.
//
// Rows travel as host fp32 (Send / Receive) or, between GPU stages, as device rows (SendDevice,
// model/stage_engine.h's DeviceRows): the receiving stage says once that its engine takes them
// (AcceptDeviceRows), and the sender then hands device buffers (no host staging): a device copy
// in one process (InProcessStageLink), ncclSend/ncclRecv of bf16 rows between processes.
#ifndef XKV_WORKER_STAGE_LINK_H_
#define XKV_WORKER_STAGE_LINK_H_

#include <cstdint>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "model/stage_engine.h"

namespace xkv {

// One step's rows as received: device rows when the sender handed them so, else host fp32.
struct StageRows {
  std::vector<float> host;  // fp32 [rows, hidden]
  std::optional<DeviceRows> device;
};

class StageLink {
 public:
  virtual ~StageLink() = default;

  // Hands the step's hidden rows, fp32 [rows, hidden] row-major, to the next stage.
  virtual absl::Status Send(uint64_t step_id, absl::Span<const float> hidden) = 0;
  // Tells the next stage that this step failed here (its Receive returns `error`), so it does not
  // wait for rows that never come.
  virtual absl::Status SendError(uint64_t step_id, const absl::Status& error) = 0;
  // Waits until `deadline` for the previous stage's rows of step_id: fp32 [rows, hidden].
  // DEADLINE_EXCEEDED when nothing came; the previous stage's error when it sent one.
  virtual absl::StatusOr<std::vector<float>> Receive(uint64_t step_id, absl::Time deadline) = 0;
  // This stage will not Receive step_id (it failed before): rows arriving later are dropped.
  virtual void Discard(uint64_t step_id) = 0;

  // ---- device rows (GPU stages) -------------------------------------------------------------
  // Receiving side: this stage's engine takes device rows (its executor calls it once).
  virtual void AcceptDeviceRows(bool /*accept*/) {}
  // Sending side: the next stage takes device rows through this link, of this element type.
  virtual bool SendsDeviceRows() const { return false; }
  virtual RowDtype device_dtype() const { return RowDtype::kF32; }
  // Hands the step's device rows to the next stage (only when SendsDeviceRows()).
  virtual absl::Status SendDevice(uint64_t /*step_id*/, const DeviceRows& /*rows*/) {
    return absl::UnimplementedError("stage link: this link carries host rows only");
  }
  // Receive, for either kind of rows.
  virtual absl::StatusOr<StageRows> ReceiveRows(uint64_t step_id, absl::Time deadline) {
    absl::StatusOr<std::vector<float>> rows = Receive(step_id, deadline);
    if (!rows.ok()) return rows.status();
    return StageRows{*std::move(rows), std::nullopt};
  }
};

}  // namespace xkv

#endif  // XKV_WORKER_STAGE_LINK_H_
