#include "coordinator/admin_service.h"

#include <string>

#include "base/same_secret.h"
#include "coordinator/generation_service.h"
#include "coordinator/grpc_status_map.h"

namespace xkv {
namespace {

// Runs `body` (returning absl::Status) after the auth check and finishes the call.
template <typename Body>
grpc::ServerUnaryReactor* Run(grpc::CallbackServerContext* context, absl::Status auth, Body body) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpc(auth.ok() ? body() : auth));
  return reactor;
}

}  // namespace

absl::Status AdminService::Authorize(grpc::CallbackServerContext* context) const {
  if (auth_.insecure_local) return absl::OkStatus();
  const auto& md = context->client_metadata();
  auto it = md.find("authorization");
  if (it == md.end()) {
    return absl::UnauthenticatedError("admin calls need 'authorization: Bearer <token>' metadata");
  }
  const std::string value(it->second.data(), it->second.size());
  const std::string prefix = "Bearer ";
  if (auth_.token.empty() || value.rfind(prefix, 0) != 0 ||
      !SameSecret(value.substr(prefix.size()), auth_.token)) {
    return absl::UnauthenticatedError("invalid admin bearer token");
  }
  return absl::OkStatus();
}

grpc::ServerUnaryReactor* AdminService::SetRetentionTarget(
    grpc::CallbackServerContext* context, const xkv::v1::SetRetentionTargetRequest* request,
    xkv::v1::SetRetentionTargetResponse* response) {
  return Run(context, Authorize(context), [&]() -> absl::Status {
    absl::StatusOr<double> previous = coordinator_->SetRetentionTarget(request->retention());
    if (!previous.ok()) return previous.status();
    response->set_previous(*previous);
    *response->mutable_config() = coordinator_->GetConfig();
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* AdminService::SetPolicy(grpc::CallbackServerContext* context,
                                                  const xkv::v1::SetPolicyRequest* request,
                                                  xkv::v1::SetPolicyResponse* response) {
  return Run(context, Authorize(context), [&]() -> absl::Status {
    xkv::v1::GenerateRequest as_request;
    *as_request.mutable_kv_policy() = request->policy();
    absl::Status s = coordinator_->SetPolicy(ParamsFromProto(as_request).kv);
    if (!s.ok()) return s;
    *response->mutable_config() = coordinator_->GetConfig();
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* AdminService::GetConfig(grpc::CallbackServerContext* context,
                                                  const xkv::v1::GetConfigRequest*,
                                                  xkv::v1::GetConfigResponse* response) {
  return Run(context, Authorize(context), [&]() -> absl::Status {
    *response->mutable_config() = coordinator_->GetConfig();
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* AdminService::GetAllocation(grpc::CallbackServerContext* context,
                                                      const xkv::v1::GetAllocationRequest*,
                                                      xkv::v1::GetAllocationResponse* response) {
  return Run(context, Authorize(context), [&]() -> absl::Status {
    *response = coordinator_->GetAllocation();
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* AdminService::GetClusterStatus(
    grpc::CallbackServerContext* context, const xkv::v1::GetClusterStatusRequest*,
    xkv::v1::GetClusterStatusResponse* response) {
  return Run(context, Authorize(context), [&]() -> absl::Status {
    *response = coordinator_->GetClusterStatus();
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* AdminService::Replan(grpc::CallbackServerContext* context,
                                               const xkv::v1::ReplanRequest* request,
                                               xkv::v1::ReplanResponse* response) {
  return Run(context, Authorize(context), [&]() -> absl::Status {
    absl::StatusOr<xkv::v1::ReplanResponse> r = coordinator_->Replan(request->dry_run());
    if (!r.ok()) return r.status();
    *response = *std::move(r);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* AdminService::Drain(grpc::CallbackServerContext* context,
                                              const xkv::v1::DrainRequest* request,
                                              xkv::v1::DrainResponse* response) {
  return Run(context, Authorize(context), [&]() -> absl::Status {
    *response = coordinator_->Drain(request->resume(), request->timeout_ms());
    return absl::OkStatus();
  });
}

}  // namespace xkv
