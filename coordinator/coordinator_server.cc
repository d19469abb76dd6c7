#include "coordinator/coordinator_server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>

#include <chrono>
#include <optional>

#include "absl/strings/str_cat.h"

namespace xkv {

absl::StatusOr<std::unique_ptr<CoordinatorServer>> CoordinatorServer::Start(
    const CoordinatorServerOptions& options, Coordinator* coordinator) {
  if (options.admin.token.empty() && !options.admin.insecure_local) {
    return absl::InvalidArgumentError(
        "the admin listener needs a bearer token (--admin-token, XKV_ADMIN_TOKEN or "
        "--admin-token-file), or --admin-insecure-local");
  }
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  std::unique_ptr<CoordinatorServer> s(new CoordinatorServer());
  s->generation_ = std::make_unique<GenerationService>(coordinator);
  s->admin_ = std::make_unique<AdminService>(coordinator, options.admin);
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, grpc::InsecureServerCredentials(), &s->port_);
  builder.RegisterService(s->generation_.get());
  s->server_ = builder.BuildAndStart();
  if (s->server_ == nullptr || s->port_ == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", options.listen));
  }
  grpc::ServerBuilder admin_builder;
  admin_builder.AddListeningPort(options.admin_listen, grpc::InsecureServerCredentials(),
                                 &s->admin_port_);
  admin_builder.RegisterService(s->admin_.get());
  s->admin_server_ = admin_builder.BuildAndStart();
  if (s->admin_server_ == nullptr || s->admin_port_ == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", options.admin_listen));
  }
  s->health_ = std::thread([p = s.get(), coordinator, poll = options.health_poll] {
    p->FollowReadiness(coordinator, poll);
  });
  return s;
}

void CoordinatorServer::FollowReadiness(Coordinator* coordinator, absl::Duration poll) {
  grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService();
  std::unique_lock<std::mutex> lock(mu_);
  std::optional<bool> reported;
  while (!stop_) {
    const bool serving = coordinator->Readiness().ok();
    if (reported != serving) {
      health->SetServingStatus(serving);
      health->SetServingStatus(xkv::v1::Generation::service_full_name(), serving);
      reported = serving;
    }
    wake_.wait_for(lock, absl::ToChronoMilliseconds(poll), [&] { return stop_; });
  }
}

CoordinatorServer::~CoordinatorServer() { Shutdown(); }

void CoordinatorServer::Shutdown() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  if (health_.joinable()) health_.join();
  // The coordinator has ended every stream by now (Coordinator::Shutdown first); calls still open
  // after a short wait (a client that stopped reading) are cancelled, so the exit is bounded.
  const auto deadline = std::chrono::system_clock::now() + std::chrono::seconds(2);
  if (server_) server_->Shutdown(deadline);
  if (admin_server_) admin_server_->Shutdown(deadline);
}

void CoordinatorServer::Wait() {
  if (server_) server_->Wait();
}

}  // namespace xkv
