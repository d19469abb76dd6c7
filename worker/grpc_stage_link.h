// StageLink over gRPC: Send is a PushHidden RPC to the next worker; Receive waits on the mailbox
// that this worker's PushHidden handler fills (WorkerService owns it and hands it in). A next
// worker that is down or slow answers UNAVAILABLE / DEADLINE_EXCEEDED — never a hang.
#ifndef XKV_WORKER_GRPC_STAGE_LINK_H_
#define XKV_WORKER_GRPC_STAGE_LINK_H_

#include <grpcpp/security/credentials.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "worker/hidden_mailbox.h"
#include "worker/stage_link.h"
#include "xkv/v1/worker.grpc.pb.h"

namespace xkv {

struct GrpcStageLinkOptions {
  std::string next_address;  // host:port of the next stage's Worker service; empty for the last
  int stage_index = 0;       // reported to the next stage (PushHiddenRequest::from_stage)
  int hidden_size = 0;       // floats per row (for the rows / hidden_size fields); 0 = unknown
  absl::Duration send_timeout = absl::Seconds(30);
  // Mutual TLS to the next worker (null: plaintext, for workers on loopback or --insecure).
  std::shared_ptr<grpc::ChannelCredentials> credentials;
};

class GrpcStageLink : public StageLink {
 public:
  // inbox: the mailbox this worker's PushHidden handler fills.
  GrpcStageLink(std::shared_ptr<HiddenMailbox> inbox, const GrpcStageLinkOptions& options);

  absl::Status Send(uint64_t step_id, absl::Span<const float> hidden) override;
  absl::Status SendError(uint64_t step_id, const absl::Status& error) override;
  absl::StatusOr<std::vector<float>> Receive(uint64_t step_id, absl::Time deadline) override;
  void Discard(uint64_t step_id) override;

 private:
  absl::Status Push(const xkv::v1::PushHiddenRequest& request);

  std::shared_ptr<HiddenMailbox> inbox_;
  GrpcStageLinkOptions options_;
  std::unique_ptr<xkv::v1::Worker::Stub> next_;  // null for the last stage
};

// What the receiving stage accepts from PushHidden.
struct PushBounds {
  int hidden_size = 0;          // floats per row: the stage's model
  int64_t max_rows = 0;         // rows of one step (--max-step-tokens)
  int expected_from_stage = 0;  // the previous stage's index
};

// The PushHidden handler's half: rows (or the sender's error) into `inbox`, validated first
// (nothing is delivered on error): INVALID_ARGUMENT when from_stage is not the previous stage, the
// bytes are not whole rows of hidden_size floats (or disagree with rows / hidden_size when set),
// there are more than max_rows rows, or an error carries an unknown code or rows; a forwarded
// error's text is cut to kMaxForwardedErrorBytes.
absl::Status DeliverPushedHidden(const xkv::v1::PushHiddenRequest& request,
                                 const PushBounds& bounds, HiddenMailbox& inbox);

}  // namespace xkv

#endif  // XKV_WORKER_GRPC_STAGE_LINK_H_
