#include "worker/grpc_stage_link.h"

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "worker/grpc_status.h"

namespace xkv {

GrpcStageLink::GrpcStageLink(std::shared_ptr<HiddenMailbox> inbox,
                             const GrpcStageLinkOptions& options)
    : inbox_(std::move(inbox)), options_(options) {
  if (!options_.next_address.empty()) {
    grpc::ChannelArguments args;
    args.SetMaxSendMessageSize(-1);
    args.SetMaxReceiveMessageSize(-1);
    next_ = xkv::v1::Worker::NewStub(
        grpc::CreateCustomChannel(options_.next_address, grpc::InsecureChannelCredentials(), args));
  }
}

absl::Status GrpcStageLink::Push(const xkv::v1::PushHiddenRequest& request) {
  if (next_ == nullptr) {
    return absl::FailedPreconditionError("stage link: the last stage has no next stage");
  }
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       absl::ToChronoMilliseconds(options_.send_timeout));
  xkv::v1::PushHiddenResponse response;
  absl::Status s = FromGrpcStatus(next_->PushHidden(&context, request, &response));
  if (!s.ok()) {
    return absl::Status(s.code(), absl::StrCat("stage link: PushHidden to ", options_.next_address,
                                               ": ", s.message()));
  }
  return s;
}

absl::Status GrpcStageLink::Send(uint64_t step_id, absl::Span<const float> hidden) {
  xkv::v1::PushHiddenRequest request;
  request.set_step_id(step_id);
  request.set_from_stage(options_.stage_index);
  request.set_hidden(hidden.data(), hidden.size() * sizeof(float));
  if (options_.hidden_size > 0) {  // the receiver also checks the total against its own batch
    request.set_hidden_size(options_.hidden_size);
    request.set_rows(static_cast<int64_t>(hidden.size()) / options_.hidden_size);
  }
  return Push(request);
}

absl::Status GrpcStageLink::SendError(uint64_t step_id, const absl::Status& error) {
  xkv::v1::PushHiddenRequest request;
  request.set_step_id(step_id);
  request.set_from_stage(options_.stage_index);
  request.set_error_code(error.ok() ? static_cast<int>(absl::StatusCode::kInternal)
                                    : static_cast<int>(error.code()));
  request.set_error_message(std::string(error.message()));
  return Push(request);
}

absl::StatusOr<std::vector<float>> GrpcStageLink::Receive(uint64_t step_id, absl::Time deadline) {
  return inbox_->Take(step_id, deadline);
}

void GrpcStageLink::Discard(uint64_t step_id) { inbox_->Discard(step_id); }

absl::Status DeliverPushedHidden(const xkv::v1::PushHiddenRequest& request, HiddenMailbox& inbox) {
  if (request.error_code() != 0) {
    inbox.Put(request.step_id(), absl::Status(static_cast<absl::StatusCode>(request.error_code()),
                                              absl::StrCat("stage ", request.from_stage(), ": ",
                                                           request.error_message())));
    return absl::OkStatus();
  }
  const std::string& bytes = request.hidden();
  if (bytes.size() % sizeof(float) != 0 ||
      (request.rows() > 0 && request.hidden_size() > 0 &&
       static_cast<int64_t>(bytes.size()) !=
           request.rows() * request.hidden_size() * static_cast<int64_t>(sizeof(float)))) {
    return absl::InvalidArgumentError(absl::StrCat("PushHidden: ", bytes.size(),
                                                   " bytes do not hold ", request.rows(), " x ",
                                                   request.hidden_size(), " floats"));
  }
  std::vector<float> rows(bytes.size() / sizeof(float));
  if (!rows.empty()) std::memcpy(rows.data(), bytes.data(), bytes.size());
  inbox.Put(request.step_id(), std::move(rows));
  return absl::OkStatus();
}

}  // namespace xkv
