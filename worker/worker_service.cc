#include "worker/worker_service.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>

#include <algorithm>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "worker/grpc_stage_link.h"
#include "worker/grpc_status.h"
#include "worker/nccl_link_config.h"
#include "worker/stage_options.h"
#if defined(XKV_WITH_NCCL)
#include "worker/nccl/nccl_stage_link.h"
#endif

namespace xkv {
namespace {

#if defined(XKV_WITH_NCCL)
// Hands the executor its StageLink while the service keeps a reference for health reports.
class SharedStageLink final : public StageLink {
 public:
  explicit SharedStageLink(std::shared_ptr<StageLink> link) : link_(std::move(link)) {}
  absl::Status Send(uint64_t step_id, absl::Span<const float> hidden) override {
    return link_->Send(step_id, hidden);
  }
  absl::Status SendError(uint64_t step_id, const absl::Status& error) override {
    return link_->SendError(step_id, error);
  }
  absl::StatusOr<std::vector<float>> Receive(uint64_t step_id, absl::Time deadline) override {
    return link_->Receive(step_id, deadline);
  }
  void Discard(uint64_t step_id) override { link_->Discard(step_id); }

 private:
  std::shared_ptr<StageLink> link_;
};
#endif

// The request's NCCL data plane, validated: UNIMPLEMENTED in builds without NCCL.
absl::StatusOr<NcclLinkConfig> NcclConfigFromRequest(const xkv::v1::LoadStageRequest& request,
                                                     const std::string& device) {
#if defined(XKV_WITH_NCCL)
  return NcclLinkConfigFromProto(request, device);
#else
  (void)request;
  (void)device;
  return absl::UnimplementedError(
      "worker: this xkv was built without CUDA/NCCL, so it has no NCCL data plane (run the "
      "coordinator with --data-plane=grpc)");
#endif
}

// `result` as the call's answer.
template <typename Response>
grpc::Status Answer(absl::StatusOr<Response> result, Response* response) {
  if (!result.ok()) return ToGrpcStatus(result.status());
  *response = *std::move(result);
  return grpc::Status::OK;
}

HiddenMailboxOptions MailboxOptions(const WorkerLimits& limits) {
  HiddenMailboxOptions o;
  o.max_pending = static_cast<size_t>(std::max(limits.max_pending_steps, 1));
  o.max_delivery_bytes = limits.max_message_bytes;
  o.max_pending_bytes = 2 * limits.max_message_bytes;  // two whole steps in flight
  o.ttl = limits.pending_ttl;
  return o;
}

}  // namespace

WorkerService::WorkerService(const WorkerServiceOptions& options)
    : options_(options), inbox_(std::make_shared<HiddenMailbox>(MailboxOptions(options.limits))) {}

std::shared_ptr<StageExecutor> WorkerService::executor() const {
  absl::MutexLock lock(&mu_);
  return executor_;
}

absl::StatusOr<std::shared_ptr<StageExecutor>> WorkerService::LoadedFor(
    const grpc::ServerContext* context, Caller caller) const {
  RETURN_IF_ERROR(CheckPeer(context, caller));
  return Loaded();
}

absl::StatusOr<std::shared_ptr<StageExecutor>> WorkerService::Loaded() const {
  absl::MutexLock lock(&mu_);
  if (executor_ == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("worker: no stage loaded (call LoadStage first)",
                     load_error_.empty() ? "" : "; the last load failed: ", load_error_));
  }
  return executor_;
}

void WorkerService::add_health(grpc::HealthCheckServiceInterface* health) {
  if (health == nullptr) return;
  health_.push_back(health);
  SetServing(executor() != nullptr);
}

absl::Status WorkerService::CheckPeer(const grpc::ServerContext* context, Caller caller) const {
  if (options_.link_credentials == nullptr) return absl::OkStatus();  // plaintext worker
  std::shared_ptr<const grpc::AuthContext> auth = context->auth_context();
  if (auth == nullptr || !auth->IsPeerAuthenticated()) {
    return absl::UnauthenticatedError(
        "worker: this worker serves only peers with a certificate from its CA (mutual TLS)");
  }
  if (caller == Caller::kAnyPeer || options_.control_peer.empty()) return absl::OkStatus();
  for (const char* property : {"x509_common_name", "x509_subject_alternative_name"}) {
    for (const grpc::string_ref& name : auth->FindPropertyValues(property)) {
      if (absl::string_view(name.data(), name.size()) == options_.control_peer) {
        return absl::OkStatus();
      }
    }
  }
  return absl::PermissionDeniedError(absl::StrCat(
      "worker: only the coordinator (a certificate naming '", options_.control_peer,
      "', --tls-control-peer) may control this stage; other peers may only push hidden rows"));
}

void WorkerService::Close() {
  inbox_->Close();
  std::function<void()> close_link;
  {
    absl::MutexLock lock(&mu_);
    close_link = link_hooks_.close;
  }
  if (close_link) close_link();
}

void WorkerService::SetServing(bool serving) {
  for (grpc::HealthCheckServiceInterface* health : health_) {
    health->SetServingStatus(serving);
    health->SetServingStatus(kHealthServiceName, serving);
  }
}

absl::StatusOr<std::unique_ptr<StageLink>> WorkerService::MakeLink(
    const xkv::v1::LoadStageRequest& request, const StageOptions& options,
    const std::optional<NcclLinkConfig>& nccl) {
  if (!nccl.has_value()) {
    GrpcStageLinkOptions link;
    link.next_address = request.next_stage();
    link.stage_index = request.stage_index();
    link.send_timeout = options.link_timeout;
    link.credentials = options_.link_credentials;
    return std::make_unique<GrpcStageLink>(inbox_, link);
  }
#if defined(XKV_WITH_NCCL)
  NcclStageLinkOptions o;
  o.config = *nccl;
  o.send_timeout = options.link_timeout;
  o.discard_timeout = options.link_timeout;
  ASSIGN_OR_RETURN(std::shared_ptr<NcclStageLink> link, NcclStageLink::Create(o));
  std::weak_ptr<NcclStageLink> weak = link;
  {
    absl::MutexLock lock(&mu_);
    link_hooks_.health = [weak] {
      std::shared_ptr<NcclStageLink> l = weak.lock();
      return l == nullptr ? absl::OkStatus() : l->health();
    };
    link_hooks_.close = [weak] {
      if (std::shared_ptr<NcclStageLink> l = weak.lock()) l->Close();
    };
  }
  return std::make_unique<SharedStageLink>(std::move(link));
#else
  return absl::UnimplementedError("worker: built without NCCL");
#endif
}

absl::StatusOr<WorkerService::PreparedLoad> WorkerService::Prepare(
    const xkv::v1::LoadStageRequest& request) const {
  PreparedLoad p;
  ASSIGN_OR_RETURN(p.options,
                   StageOptionsFromRequest(request, options_.device, options_.num_threads));
  p.options.max_batched_tokens = options_.limits.max_step_tokens;
  p.options.gpu_memory_utilization = options_.gpu_memory_utilization;
  if (request.link_kind() == xkv::v1::LINK_KIND_IN_PROCESS) {
    return absl::UnimplementedError("worker: in-process links exist only inside `xkv serve`");
  }
  if (WantsNcclLink(request)) {
    ASSIGN_OR_RETURN(p.nccl, NcclConfigFromRequest(request, options_.device));
  }
  RETURN_IF_ERROR(ApplyWorkerLimits(options_.limits, &p.options));
  return p;
}

absl::StatusOr<std::unique_ptr<StageExecutor>> WorkerService::Build(
    const xkv::v1::LoadStageRequest& request, const PreparedLoad& p) {
  // NCCL: joining the communicator is collective; the coordinator calls every stage at once.
  ASSIGN_OR_RETURN(std::unique_ptr<StageLink> link, MakeLink(request, p.options, p.nccl));
  ASSIGN_OR_RETURN(std::unique_ptr<StageExecutor> stage,
                   StageExecutor::Load(p.options, std::move(link)));
  if (request.is_last() != stage->is_last()) {
    return absl::InvalidArgumentError(
        absl::StrCat("worker: is_last must equal layer_end == ", stage->config().n_layers));
  }
  if (!p.nccl.has_value() && !stage->is_last() && request.next_stage().empty()) {
    return absl::InvalidArgumentError("worker: a stage before the last needs next_stage");
  }
  // One PushHidden of a whole step must pass this server's receive limit.
  const int64_t step_bytes =
      options_.limits.max_step_tokens * stage->config().hidden * int64_t{sizeof(float)};
  if (!p.nccl.has_value() && !stage->is_first() &&
      step_bytes > options_.limits.max_message_bytes - kMessageOverheadBytes) {
    return absl::FailedPreconditionError(
        absl::StrCat("worker: a step of --max-step-tokens ", options_.limits.max_step_tokens,
                     " rows of this model's ", stage->config().hidden, " floats is ", step_bytes,
                     " bytes, above the message limit of ", options_.limits.max_message_bytes,
                     " bytes: raise --max-message-mb or lower --max-step-tokens"));
  }
  return stage;
}

void WorkerService::Unload() {
  SetServing(false);
  absl::MutexLock lock(&mu_);
  executor_.reset();
  link_hooks_ = {};
}

void WorkerService::Install(std::unique_ptr<StageExecutor> stage,
                            xkv::v1::LoadStageResponse* response) {
  *response = stage->Description();
  absl::MutexLock lock(&mu_);
  executor_ = std::move(stage);
}

absl::Status WorkerService::DoLoad(const xkv::v1::LoadStageRequest& request,
                                   xkv::v1::LoadStageResponse* response) {
  // Everything checkable without loading is checked while the current stage serves on.
  ASSIGN_OR_RETURN(const PreparedLoad prepared, Prepare(request));
  // gRPC links: the new stage is built beside the current one, which keeps serving (its sequences
  // too) when the new one is refused. NCCL leaves the old communicator before joining the new one,
  // and a new stage that does not fit beside the old (RESOURCE_EXHAUSTED: a device's memory) is
  // built once the old one is gone; when it fails then, the old one is loaded again (without its
  // sequences).
  if (!prepared.nccl.has_value()) {
    absl::StatusOr<std::unique_ptr<StageExecutor>> stage = Build(request, prepared);
    if (stage.ok()) {
      Install(*std::move(stage), response);
      loaded_request_ = request;
      return absl::OkStatus();
    }
    if (stage.status().code() != absl::StatusCode::kResourceExhausted || executor() == nullptr) {
      return stage.status();
    }
  }
  Unload();
  absl::StatusOr<std::unique_ptr<StageExecutor>> stage = Build(request, prepared);
  if (stage.ok()) {
    Install(*std::move(stage), response);
    loaded_request_ = request;
    return absl::OkStatus();
  }
  if (loaded_request_.has_value() && !WantsNcclLink(*loaded_request_)) {
    absl::StatusOr<PreparedLoad> old = Prepare(*loaded_request_);
    absl::StatusOr<std::unique_ptr<StageExecutor>> restored = old.status();
    if (old.ok()) restored = Build(*loaded_request_, *old);
    xkv::v1::LoadStageResponse unused;
    if (restored.ok()) {
      Install(*std::move(restored), &unused);
    } else {
      loaded_request_.reset();
    }
  }
  return stage.status();
}

grpc::Status WorkerService::LoadStage(grpc::ServerContext* context,
                                      const xkv::v1::LoadStageRequest* request,
                                      xkv::v1::LoadStageResponse* response) {
  if (absl::Status peer = CheckPeer(context, Caller::kCoordinator); !peer.ok()) {
    return ToGrpcStatus(peer);
  }
  absl::MutexLock load_lock(&load_mu_);
  absl::Status s = DoLoad(*request, response);
  {
    absl::MutexLock lock(&mu_);
    load_error_ = s.ok() ? "" : std::string(s.message());
  }
  SetServing(executor() != nullptr);  // a refused load leaves the current stage serving
  return ToGrpcStatus(s);
}

grpc::Status WorkerService::Step(grpc::ServerContext* context, const xkv::v1::StepRequest* request,
                                 xkv::v1::StepResponse* response) {
  absl::StatusOr<std::shared_ptr<StageExecutor>> stage = LoadedFor(context, Caller::kCoordinator);
  if (!stage.ok()) return ToGrpcStatus(stage.status());
  return Answer((*stage)->Step(*request), response);
}

grpc::Status WorkerService::Compact(grpc::ServerContext* context,
                                    const xkv::v1::CompactRequest* request,
                                    xkv::v1::CompactResponse* response) {
  absl::StatusOr<std::shared_ptr<StageExecutor>> stage = LoadedFor(context, Caller::kCoordinator);
  if (!stage.ok()) return ToGrpcStatus(stage.status());
  return Answer((*stage)->Compact(*request), response);
}

grpc::Status WorkerService::Release(grpc::ServerContext* context,
                                    const xkv::v1::ReleaseRequest* request,
                                    xkv::v1::ReleaseResponse* response) {
  absl::StatusOr<std::shared_ptr<StageExecutor>> stage = LoadedFor(context, Caller::kCoordinator);
  if (!stage.ok()) return ToGrpcStatus(stage.status());
  *response = (*stage)->Release(*request);
  return grpc::Status::OK;
}

grpc::Status WorkerService::PushHidden(grpc::ServerContext* context,
                                       const xkv::v1::PushHiddenRequest* request,
                                       xkv::v1::PushHiddenResponse*) {
  absl::StatusOr<std::shared_ptr<StageExecutor>> stage = LoadedFor(context, Caller::kAnyPeer);
  if (!stage.ok()) return ToGrpcStatus(stage.status());
  PushBounds bounds;
  bounds.hidden_size = (*stage)->config().hidden;
  bounds.max_rows = options_.limits.max_step_tokens;
  bounds.expected_from_stage = (*stage)->options().stage_index - 1;
  return ToGrpcStatus(DeliverPushedHidden(*request, bounds, *inbox_));
}

grpc::Status WorkerService::Status(grpc::ServerContext* context, const xkv::v1::StatusRequest*,
                                   xkv::v1::StatusResponse* response) {
  if (absl::Status peer = CheckPeer(context, Caller::kCoordinator); !peer.ok()) {
    return ToGrpcStatus(peer);
  }
  std::shared_ptr<StageExecutor> stage = executor();
  if (stage == nullptr) {
    absl::MutexLock lock(&mu_);
    response->set_health(load_error_.empty() ? xkv::v1::STAGE_HEALTH_NOT_LOADED
                                             : xkv::v1::STAGE_HEALTH_FAILED);
    response->set_device(options_.device);
    response->set_message(load_error_);
    response->set_max_step_tokens(options_.limits.max_step_tokens);
    return grpc::Status::OK;
  }
  *response = stage->status();
  response->set_max_step_tokens(options_.limits.max_step_tokens);
  std::function<absl::Status()> link_health;
  {
    absl::MutexLock lock(&mu_);
    link_health = link_hooks_.health;
  }
  // A broken data plane (NCCL: a step timed out and the communicator was aborted) fails every
  // later step: report it so the coordinator reloads the stages.
  if (absl::Status link = link_health ? link_health() : absl::OkStatus(); !link.ok()) {
    response->set_health(xkv::v1::STAGE_HEALTH_FAILED);
    response->set_message(std::string(link.message()));
  }
  return grpc::Status::OK;
}

// ---- WorkerServer ---------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<WorkerServer>> WorkerServer::Start(
    const WorkerServerOptions& options) {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  std::unique_ptr<WorkerServer> s(new WorkerServer());
  s->service_ = std::make_unique<WorkerService>(options.service);
  const int64_t max_message = options.service.limits.max_message_bytes;
  if (max_message < kMessageOverheadBytes || max_message > std::numeric_limits<int>::max()) {
    return absl::InvalidArgumentError(absl::StrCat("worker: the message limit ", max_message,
                                                   " is outside [", kMessageOverheadBytes, ", ",
                                                   std::numeric_limits<int>::max(), "] bytes"));
  }
  grpc::ServerBuilder builder;
  builder.AddListeningPort(
      options.listen,
      options.credentials != nullptr ? options.credentials : grpc::InsecureServerCredentials(),
      &s->port_);
  builder.SetMaxReceiveMessageSize(static_cast<int>(max_message));
  builder.SetMaxSendMessageSize(std::numeric_limits<int>::max());
  builder.RegisterService(s->service_.get());
  s->server_ = builder.BuildAndStart();
  if (s->server_ == nullptr || s->port_ == 0) {
    return absl::UnavailableError(absl::StrCat("worker: cannot listen on ", options.listen));
  }
  s->service_->add_health(s->server_->GetHealthCheckService());
  if (!options.health_listen.empty()) {
    grpc::ServerBuilder health;
    health.AddListeningPort(options.health_listen, grpc::InsecureServerCredentials(),
                            &s->health_port_);
    health.SetMaxReceiveMessageSize(4096);
    s->health_server_ = health.BuildAndStart();
    if (s->health_server_ == nullptr || s->health_port_ == 0) {
      s->Shutdown();
      return absl::UnavailableError(
          absl::StrCat("worker: cannot listen on ", options.health_listen, " (health)"));
    }
    s->service_->add_health(s->health_server_->GetHealthCheckService());
  }
  return s;
}

WorkerServer::~WorkerServer() { Shutdown(); }

void WorkerServer::Shutdown() {
  if (server_ == nullptr) return;
  service_->Close();  // wakes steps waiting for hidden rows
  server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  if (health_server_ != nullptr) health_server_->Shutdown();
}

void WorkerServer::Wait() {
  if (server_ != nullptr) server_->Wait();
}

}  // namespace xkv
