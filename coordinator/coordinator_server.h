// Runs a Coordinator behind its two gRPC listeners: the public Generation service (+ health and
// reflection) and the Admin service on its own port. grpc.health.v1 (the overall status "" and
// "xkv.v1.Generation") follows Coordinator::Readiness(), re-read every health_poll.
#ifndef XKV_COORDINATOR_COORDINATOR_SERVER_H_
#define XKV_COORDINATOR_COORDINATOR_SERVER_H_

#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "coordinator/admin_service.h"
#include "coordinator/coordinator.h"
#include "coordinator/generation_service.h"

namespace xkv {

struct CoordinatorServerOptions {
  std::string listen = "0.0.0.0:50051";          // Generation; port 0 picks a free one
  std::string admin_listen = "127.0.0.1:50052";  // Admin
  AdminAuthOptions admin;
  absl::Duration health_poll = absl::Milliseconds(100);
};

class CoordinatorServer {
 public:
  // UNAVAILABLE when an address cannot be bound; INVALID_ARGUMENT for an admin listener without a
  // token and without insecure_local.
  static absl::StatusOr<std::unique_ptr<CoordinatorServer>> Start(
      const CoordinatorServerOptions& options, Coordinator* coordinator);
  ~CoordinatorServer();
  int port() const { return port_; }
  int admin_port() const { return admin_port_; }
  // Stops both listeners; calls still open after 2 s are cancelled.
  void Shutdown();
  void Wait();

 private:
  CoordinatorServer() = default;
  void FollowReadiness(Coordinator* coordinator, absl::Duration poll);
  std::unique_ptr<GenerationService> generation_;
  std::unique_ptr<AdminService> admin_;
  std::unique_ptr<grpc::Server> server_, admin_server_;
  int port_ = 0, admin_port_ = 0;
  std::mutex mu_;
  std::condition_variable wake_;
  bool stop_ = false;  // guarded by mu_
  std::thread health_;
};

}  // namespace xkv

#endif  // XKV_COORDINATOR_COORDINATOR_SERVER_H_
