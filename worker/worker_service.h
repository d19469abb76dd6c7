// The internal xkv.v1.Worker gRPC service: a thin adapter over StageExecutor (peer check → the
// executor's call on the request itself → one status-mapping helper), plus WorkerServer, which
// runs it with gRPC health checking (NOT_SERVING until a stage is loaded) and server reflection.
// Every input is bounded at the edge (WorkerLimits: model_path inside --model-dir, link timeouts,
// n_new / positions against the context length, KV pool against memory, hidden-row deliveries),
// and with mutual TLS only verified peers are served.
// LoadStage builds the stage's data plane: a GrpcStageLink (PushHidden), or, when the request
// carries an NCCL unique id, an NcclStageLink (CUDA workers of an NCCL build; UNIMPLEMENTED
// elsewhere). A broken NCCL link makes Status report STAGE_HEALTH_FAILED, so the coordinator
// reloads the stages with a fresh communicator.
#ifndef XKV_WORKER_WORKER_SERVICE_H_
#define XKV_WORKER_WORKER_SERVICE_H_

#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "worker/hidden_mailbox.h"
#include "worker/nccl_link_config.h"
#include "worker/stage_executor.h"
#include "worker/worker_limits.h"
#include "xkv/v1/worker.grpc.pb.h"

namespace xkv {

struct WorkerServiceOptions {
  std::string device = "cpu";
  int num_threads = 1;
  WorkerLimits limits;  // limits.max_step_tokens also sizes a GPU stage's step scratch
  double gpu_memory_utilization = 0.9;  // a GPU stage's share of the device's free memory
  // Set (mutual TLS): every call must come from a peer whose certificate verified
  // (UNAUTHENTICATED otherwise), and the stage link dials the next worker with these credentials.
  std::shared_ptr<grpc::ChannelCredentials> link_credentials;
  // Non-empty, with mutual TLS: LoadStage, Step, Compact, Release and Status only from a peer
  // whose certificate names it (common name or DNS subject alternative name), PERMISSION_DENIED
  // for others (e.g. another worker: it may only PushHidden).
  std::string control_peer;
};

class WorkerService final : public xkv::v1::Worker::Service {
 public:
  // Names the health service reports besides "" (the whole server).
  static constexpr char kHealthServiceName[] = "xkv.v1.Worker";

  explicit WorkerService(const WorkerServiceOptions& options);

  // Where SERVING / NOT_SERVING is reported (the Worker server's and the plaintext health-only
  // server's; add them before the first LoadStage). Reports the current state at once
  // (NOT_SERVING until a stage is loaded).
  void add_health(grpc::HealthCheckServiceInterface* health);
  // Shutting down: steps waiting for hidden rows (gRPC mailbox or NCCL link) fail with
  // UNAVAILABLE.
  void Close();

  grpc::Status LoadStage(grpc::ServerContext* context, const xkv::v1::LoadStageRequest* request,
                         xkv::v1::LoadStageResponse* response) override;
  grpc::Status Step(grpc::ServerContext* context, const xkv::v1::StepRequest* request,
                    xkv::v1::StepResponse* response) override;
  grpc::Status Compact(grpc::ServerContext* context, const xkv::v1::CompactRequest* request,
                       xkv::v1::CompactResponse* response) override;
  grpc::Status Release(grpc::ServerContext* context, const xkv::v1::ReleaseRequest* request,
                       xkv::v1::ReleaseResponse* response) override;
  grpc::Status PushHidden(grpc::ServerContext* context, const xkv::v1::PushHiddenRequest* request,
                          xkv::v1::PushHiddenResponse* response) override;
  grpc::Status Status(grpc::ServerContext* context, const xkv::v1::StatusRequest* request,
                      xkv::v1::StatusResponse* response) override;

  // The loaded stage (null before LoadStage).
  std::shared_ptr<StageExecutor> executor() const;

 private:
  absl::StatusOr<std::shared_ptr<StageExecutor>> Loaded() const;
  // Who may make a call: the coordinator (control), or also the previous stage (PushHidden).
  enum class Caller { kCoordinator, kAnyPeer };
  // CheckPeer, then Loaded.
  absl::StatusOr<std::shared_ptr<StageExecutor>> LoadedFor(const grpc::ServerContext* context,
                                                           Caller caller) const;
  // A LoadStage's checks that need no loading (options, limits, NCCL config) and their result.
  struct PreparedLoad {
    StageOptions options;
    std::optional<NcclLinkConfig> nccl;
  };
  absl::StatusOr<PreparedLoad> Prepare(const xkv::v1::LoadStageRequest& request) const;
  // Loads the stage (link, weights, pool) and checks it against the request.
  absl::StatusOr<std::unique_ptr<StageExecutor>> Build(const xkv::v1::LoadStageRequest& request,
                                                       const PreparedLoad& prepared);
  void Unload();  // not serving, no stage
  // Serves `stage` from now on; describes it in `response`.
  void Install(std::unique_ptr<StageExecutor> stage, xkv::v1::LoadStageResponse* response);
  // A refused request leaves the current stage loaded and serving (see DoLoad for NCCL and memory).
  absl::Status DoLoad(const xkv::v1::LoadStageRequest& request,
                      xkv::v1::LoadStageResponse* response) ABSL_EXCLUSIVE_LOCKS_REQUIRED(load_mu_);
  // The stage's data plane: NCCL when `nccl` is set (joins the communicator), else gRPC.
  absl::StatusOr<std::unique_ptr<StageLink>> MakeLink(const xkv::v1::LoadStageRequest& request,
                                                      const StageOptions& options,
                                                      const std::optional<NcclLinkConfig>& nccl);
  void SetServing(bool serving);
  // OK for a call this worker accepts: from a verified peer when it runs mutual TLS (and, for
  // kCoordinator, one that control_peer names).
  absl::Status CheckPeer(const grpc::ServerContext* context, Caller caller) const;

  const WorkerServiceOptions options_;
  const std::shared_ptr<HiddenMailbox> inbox_;
  std::vector<grpc::HealthCheckServiceInterface*> health_;
  absl::Mutex load_mu_;  // one LoadStage at a time
  // The request of the stage loaded now (to load it again after a refused replacement).
  std::optional<xkv::v1::LoadStageRequest> loaded_request_ ABSL_GUARDED_BY(load_mu_);
  mutable absl::Mutex mu_;
  std::shared_ptr<StageExecutor> executor_ ABSL_GUARDED_BY(mu_);
  std::string load_error_ ABSL_GUARDED_BY(mu_);
  // The loaded stage's NCCL link, when it has one: its health (reported by Status) and how to
  // stop its waits (Close). Both empty for gRPC links.
  struct LinkHooks {
    std::function<absl::Status()> health;
    std::function<void()> close;
  };
  LinkHooks link_hooks_ ABSL_GUARDED_BY(mu_);
};

struct WorkerServerOptions {
  std::string listen = "127.0.0.1:50061";  // host:port; port 0 picks a free one
  // Set: the Worker server runs mutual TLS (MutualTlsServerCredentials); null: plaintext.
  std::shared_ptr<grpc::ServerCredentials> credentials;
  // Non-empty: a second, plaintext server with only grpc.health.v1 (for Kubernetes gRPC probes,
  // which cannot present a client certificate).
  std::string health_listen;
  WorkerServiceOptions service;
};

// A running Worker server (service + health + reflection). Shuts down when destroyed.
class WorkerServer {
 public:
  // UNAVAILABLE when the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<WorkerServer>> Start(const WorkerServerOptions& options);
  ~WorkerServer();

  int port() const { return port_; }
  int health_port() const { return health_port_; }  // 0 without health_listen
  WorkerService& service() { return *service_; }
  void Shutdown();
  void Wait();  // until Shutdown

 private:
  WorkerServer() = default;
  std::unique_ptr<WorkerService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<grpc::Server> health_server_;
  int port_ = 0;
  int health_port_ = 0;
};

}  // namespace xkv

#endif  // XKV_WORKER_WORKER_SERVICE_H_
