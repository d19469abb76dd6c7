// The public xkv.v1.Admin service: a thin callback-API adapter over Coordinator's admin
// operations, on its own listener. Every call needs "authorization: Bearer <token>" metadata
// (UNAUTHENTICATED otherwise) unless the service was built with an empty token and
// insecure_local set (`--admin-insecure-local`).
#ifndef XKV_COORDINATOR_ADMIN_SERVICE_H_
#define XKV_COORDINATOR_ADMIN_SERVICE_H_

#include <grpcpp/grpcpp.h>

#include <string>

#include "coordinator/coordinator.h"
#include "xkv/v1/admin.grpc.pb.h"

namespace xkv {

struct AdminAuthOptions {
  std::string token;            // required bearer token; empty only with insecure_local
  bool insecure_local = false;  // no token check (local use)
};

class AdminService final : public xkv::v1::Admin::CallbackService {
 public:
  AdminService(Coordinator* coordinator, AdminAuthOptions auth)
      : coordinator_(coordinator), auth_(std::move(auth)) {}

  grpc::ServerUnaryReactor* SetRetentionTarget(
      grpc::CallbackServerContext* context, const xkv::v1::SetRetentionTargetRequest* request,
      xkv::v1::SetRetentionTargetResponse* response) override;
  grpc::ServerUnaryReactor* SetPolicy(grpc::CallbackServerContext* context,
                                      const xkv::v1::SetPolicyRequest* request,
                                      xkv::v1::SetPolicyResponse* response) override;
  grpc::ServerUnaryReactor* GetConfig(grpc::CallbackServerContext* context,
                                      const xkv::v1::GetConfigRequest* request,
                                      xkv::v1::GetConfigResponse* response) override;
  grpc::ServerUnaryReactor* GetAllocation(grpc::CallbackServerContext* context,
                                          const xkv::v1::GetAllocationRequest* request,
                                          xkv::v1::GetAllocationResponse* response) override;
  grpc::ServerUnaryReactor* GetClusterStatus(grpc::CallbackServerContext* context,
                                             const xkv::v1::GetClusterStatusRequest* request,
                                             xkv::v1::GetClusterStatusResponse* response) override;
  grpc::ServerUnaryReactor* Replan(grpc::CallbackServerContext* context,
                                   const xkv::v1::ReplanRequest* request,
                                   xkv::v1::ReplanResponse* response) override;
  grpc::ServerUnaryReactor* Drain(grpc::CallbackServerContext* context,
                                  const xkv::v1::DrainRequest* request,
                                  xkv::v1::DrainResponse* response) override;

 private:
  absl::Status Authorize(grpc::CallbackServerContext* context) const;

  Coordinator* coordinator_;
  const AdminAuthOptions auth_;
};

}  // namespace xkv

#endif  // XKV_COORDINATOR_ADMIN_SERVICE_H_
