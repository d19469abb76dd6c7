// StageLink over NCCL (architecture.md §1): the GPU data plane between pipeline stages that run as
// separate worker processes, one GPU each. All S stages share one communicator (rank = stage
// index, nranks = S), created from an ncclUniqueId that the coordinator makes and hands out in
// LoadStage; stage r sends to r + 1 and receives from r - 1 with ncclSend / ncclRecv on the link's
// own CUDA stream. Between GPU stages the rows stay on the device (SendDevice / ReceiveRows): the
// sender's bf16 export buffer goes out as it is, and the receiver hands its receive buffer to its
// engine (no host staging). Host fp32 rows (Send / Receive) go through a device staging buffer.
//
// Wire protocol, per step and per link (stage r → r + 1), in order:
//   1. header: WireHeader, 296 bytes (int64 step_id, status_code, n_elems, dtype, width; char
//      message[256]);
//   2. payload, only when status_code == 0 and n_elems > 0: [rows, hidden], n_elems values of
//      dtype (0: fp32, 1: bf16).
// SendError sends a header with the error (no payload), so the receiver's Receive returns it.
// Steps are strictly ordered by the coordinator: the receiver checks that the header's step_id is
// the one it asked for; anything else is a protocol error (INTERNAL) that breaks the link.
//
// Never blocks forever: the communicator is non-blocking (ncclConfig_t::blocking = 0) and every
// wait polls ncclCommGetAsyncError and cudaStreamQuery until its deadline. A wait that times out
// or fails aborts the communicator (ncclCommAbort, on a background thread, since an abort may wait
// for the peers) and breaks the link: that call returns DEADLINE_EXCEEDED (or the error) and every
// later call UNAVAILABLE. health() reports it, so the worker can tell the coordinator, which
// reloads every stage with a fresh id. NCCL_NVLS_ENABLE=0 is forced in the process environment
// before the communicator is created (NVLink multicast stays off).
//
// Thread-safe: calls are serialised (a middle stage receives and sends on one stream).
#ifndef XKV_WORKER_NCCL_NCCL_STAGE_LINK_H_
#define XKV_WORKER_NCCL_NCCL_STAGE_LINK_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "worker/nccl_link_config.h"
#include "worker/stage_link.h"

namespace xkv {

struct NcclStageLinkOptions {
  NcclLinkConfig config;  // unique id, rank, world size, CUDA device
  // Joining the communicator: every rank must arrive within this (LoadStage reaches them together).
  absl::Duration init_timeout = absl::Seconds(120);
  // Send / SendError: until the next stage has taken the step.
  absl::Duration send_timeout = absl::Seconds(30);
  // Discard: until the previous stage's rows (or error) of the dropped step arrived.
  absl::Duration discard_timeout = absl::Seconds(30);
  // Destruction of a healthy link: ncclCommFinalize until this, then ncclCommAbort.
  absl::Duration teardown_timeout = absl::Seconds(5);
};

class NcclStageLink : public StageLink {
 public:
  // Error text carried by a header (longer messages are truncated).
  static constexpr size_t kMessageBytes = 256;

  // Selects the device, creates the stream and joins the communicator. Collective: every rank
  // must call it (other threads or processes) within options.init_timeout, else
  // DEADLINE_EXCEEDED. INVALID_ARGUMENT for a malformed config; INTERNAL for CUDA/NCCL errors.
  static absl::StatusOr<std::unique_ptr<NcclStageLink>> Create(const NcclStageLinkOptions& options);
  // A fresh ncclUniqueId as kNcclUniqueIdBytes raw bytes. Needs no GPU; the calling process hosts
  // NCCL's bootstrap root, so the ranks must be able to reach it (NCCL_SOCKET_IFNAME).
  static absl::StatusOr<std::string> NewNcclUniqueId();

  ~NcclStageLink() override;
  NcclStageLink(const NcclStageLink&) = delete;
  NcclStageLink& operator=(const NcclStageLink&) = delete;

  absl::Status Send(uint64_t step_id, absl::Span<const float> hidden) override;
  absl::Status SendError(uint64_t step_id, const absl::Status& error) override;
  absl::StatusOr<std::vector<float>> Receive(uint64_t step_id, absl::Time deadline) override;
  // Receives step_id's rows (or error) from the previous stage and drops them, waiting up to
  // options.discard_timeout (the sender's message must be consumed to keep the stream in order).
  void Discard(uint64_t step_id) override;
  // Device rows: both ends of an NCCL link are CUDA stages; bf16 on the wire.
  bool SendsDeviceRows() const override { return true; }
  RowDtype device_dtype() const override { return RowDtype::kBf16; }
  // rows must live on this link's device; sent from their buffer (no copy).
  absl::Status SendDevice(uint64_t step_id, const DeviceRows& rows) override;
  // Device rows borrow the link's receive buffer: valid until the next call on the link.
  absl::StatusOr<StageRows> ReceiveRows(uint64_t step_id, absl::Time deadline) override;

  // OK while the link works; the cause (a not-OK status) once it broke.
  absl::Status health() const;
  // Shutting down: a wait in progress (and every later call) ends at once with UNAVAILABLE, and
  // the link breaks. Any thread; never blocks.
  void Close();
  int rank() const { return options_.config.rank; }
  int world_size() const { return options_.config.world_size; }

 private:
  struct Device;    // communicator, stream and device buffers
  struct Delivery;  // one received step: the sender's error or its rows

  explicit NcclStageLink(const NcclStageLinkOptions& options);

  absl::Status Usable() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Header (and rows) to rank + 1, waited for until `deadline`: host fp32 `rows`, or the device
  // payload `device` of n_elems values of `dtype`.
  absl::Status Post(uint64_t step_id, const absl::Status& error, absl::Span<const float> rows,
                    absl::Time deadline, const DeviceRows* device = nullptr)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // What Take leaves the rows as: dropped, copied to host fp32, or kept in the receive buffer.
  enum class Keep { kNone, kHost, kDevice };
  // The next message from rank - 1, which must be step_id's.
  absl::StatusOr<Delivery> Take(uint64_t step_id, absl::Time deadline, Keep keep)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status RecvRows(int64_t n_elems, RowDtype dtype, Keep keep, absl::Time deadline,
                        Delivery* out) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Device payload buffer for at least n floats.
  absl::Status Reserve(size_t n) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Until the communicator has no call in progress (non-blocking mode) / the stream is idle.
  absl::Status WaitComm(absl::Time deadline, const std::string& what)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status WaitStream(absl::Time deadline, const std::string& what)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // DEADLINE_EXCEEDED past `deadline`, UNAVAILABLE after Close(), else OK (a wait may go on).
  absl::Status Waitable(absl::Time deadline, const std::string& what) const;
  // Marks the link broken with `cause`, aborts the communicator in the background and returns
  // `cause`. Idempotent (the first cause is kept for health()).
  absl::Status Break(absl::Status cause) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const NcclStageLinkOptions options_;
  mutable absl::Mutex mu_;                               // one operation at a time
  std::unique_ptr<Device> device_ ABSL_GUARDED_BY(mu_);  // null once broken
  std::atomic<bool> closing_{false};                     // Close() was called
  mutable absl::Mutex state_mu_;                         // health() never waits for an operation
  absl::Status broken_ ABSL_GUARDED_BY(state_mu_);       // not OK once broken: the cause
};

}  // namespace xkv

#endif  // XKV_WORKER_NCCL_NCCL_STAGE_LINK_H_
