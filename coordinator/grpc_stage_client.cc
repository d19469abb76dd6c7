#include "coordinator/grpc_stage_client.h"

#include <grpcpp/grpcpp.h>

#include <chrono>

#include "coordinator/grpc_status_map.h"
#include "xkv/v1/worker.grpc.pb.h"

namespace xkv {
namespace {

class GrpcStageClient final : public StageClient {
 public:
  explicit GrpcStageClient(const GrpcStageClientOptions& options) : options_(options) {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(-1);
    args.SetMaxSendMessageSize(-1);
    channel_ = grpc::CreateCustomChannel(
        options.address,
        options.credentials != nullptr ? options.credentials : grpc::InsecureChannelCredentials(),
        args);
    stub_ = xkv::v1::Worker::NewStub(channel_);
  }

  std::string address() const override { return options_.address; }
  xkv::v1::LinkKind link_kind() const override { return xkv::v1::LINK_KIND_GRPC; }

  absl::StatusOr<xkv::v1::LoadStageResponse> LoadStage(
      const xkv::v1::LoadStageRequest& request) override {
    return Call<xkv::v1::LoadStageResponse>(request, &xkv::v1::Worker::Stub::LoadStage,
                                            options_.rpc_timeout);
  }
  absl::StatusOr<xkv::v1::StepResponse> Step(const xkv::v1::StepRequest& request) override {
    return Call<xkv::v1::StepResponse>(request, &xkv::v1::Worker::Stub::Step,
                                       options_.step_timeout);
  }
  absl::StatusOr<xkv::v1::CompactResponse> Compact(
      const xkv::v1::CompactRequest& request) override {
    return Call<xkv::v1::CompactResponse>(request, &xkv::v1::Worker::Stub::Compact,
                                          options_.step_timeout);
  }
  absl::StatusOr<xkv::v1::ReleaseResponse> Release(
      const xkv::v1::ReleaseRequest& request) override {
    return Call<xkv::v1::ReleaseResponse>(request, &xkv::v1::Worker::Stub::Release,
                                          options_.status_timeout);
  }
  absl::StatusOr<xkv::v1::StatusResponse> Status() override {
    return Call<xkv::v1::StatusResponse>(xkv::v1::StatusRequest(), &xkv::v1::Worker::Stub::Status,
                                         options_.status_timeout);
  }

 private:
  template <typename Response, typename Request, typename Method>
  absl::StatusOr<Response> Call(const Request& request, Method method, absl::Duration timeout) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + absl::ToChronoMilliseconds(timeout));
    Response response;
    grpc::Status status = (stub_.get()->*method)(&context, request, &response);
    if (!status.ok()) return FromGrpc(status, "worker " + options_.address);
    return response;
  }

  const GrpcStageClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<xkv::v1::Worker::Stub> stub_;
};

}  // namespace

std::unique_ptr<StageClient> MakeGrpcStageClient(const GrpcStageClientOptions& options) {
  return std::make_unique<GrpcStageClient>(options);
}

}  // namespace xkv
