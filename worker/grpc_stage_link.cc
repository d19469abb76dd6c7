#include "worker/grpc_stage_link.h"

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "worker/grpc_status.h"
#include "worker/worker_limits.h"

namespace xkv {

GrpcStageLink::GrpcStageLink(std::shared_ptr<HiddenMailbox> inbox,
                             const GrpcStageLinkOptions& options)
    : inbox_(std::move(inbox)), options_(options) {
  if (!options_.next_address.empty()) {
    grpc::ChannelArguments args;
    args.SetMaxSendMessageSize(-1);
    args.SetMaxReceiveMessageSize(-1);
    next_ = xkv::v1::Worker::NewStub(grpc::CreateCustomChannel(
        options_.next_address,
        options_.credentials != nullptr ? options_.credentials : grpc::InsecureChannelCredentials(),
        args));
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

absl::Status DeliverPushedHidden(const xkv::v1::PushHiddenRequest& request,
                                 const PushBounds& bounds, HiddenMailbox& inbox) {
  if (request.from_stage() != bounds.expected_from_stage) {
    return absl::InvalidArgumentError(absl::StrCat("PushHidden: from_stage ", request.from_stage(),
                                                   " but this stage receives from stage ",
                                                   bounds.expected_from_stage));
  }
  const std::string& bytes = request.hidden();
  if (request.error_code() != 0) {
    if (request.error_code() < 1 || request.error_code() > 16 || !bytes.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("PushHidden: error_code ", request.error_code(),
                       " must be a status code in [1, 16], with no hidden rows"));
    }
    const std::string message = request.error_message().substr(0, kMaxForwardedErrorBytes);
    return inbox.Put(request.step_id(),
                     absl::Status(static_cast<absl::StatusCode>(request.error_code()),
                                  absl::StrCat("stage ", request.from_stage(), ": ", message)));
  }
  const int64_t row_bytes = int64_t{bounds.hidden_size} * static_cast<int64_t>(sizeof(float));
  const int64_t size = static_cast<int64_t>(bytes.size());
  if (row_bytes <= 0 || size == 0 || size % row_bytes != 0 ||
      (request.hidden_size() != 0 && request.hidden_size() != bounds.hidden_size) ||
      (request.rows() != 0 && request.rows() != size / row_bytes)) {
    return absl::InvalidArgumentError(
        absl::StrCat("PushHidden: ", size, " bytes (rows ", request.rows(), ", hidden_size ",
                     request.hidden_size(), ") are not whole rows of this model's ",
                     bounds.hidden_size, " floats"));
  }
  if (size / row_bytes > bounds.max_rows) {
    return absl::InvalidArgumentError(absl::StrCat("PushHidden: ", size / row_bytes,
                                                   " rows is outside [1, ", bounds.max_rows,
                                                   "] (--max-step-tokens)"));
  }
  std::vector<float> rows(bytes.size() / sizeof(float));
  std::memcpy(rows.data(), bytes.data(), bytes.size());
  return inbox.Put(request.step_id(), std::move(rows));
}

}  // namespace xkv
