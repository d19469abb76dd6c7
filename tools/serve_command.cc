// `xkv serve`: embedded mode — the coordinator and N pipeline stages in one process. The stages
// are StageExecutors on in-process links; the coordinator reaches them through StageClient by
// direct calls (the same Worker messages as over gRPC).
#include <cstdio>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_split.h"
#include "base/status_macros.h"
#include "coordinator/coordinator.h"
#include "coordinator/stage_client.h"
#include "model/gpu_memory_budget.h"
#include "tools/commands.h"
#include "tools/flag_set.h"
#include "tools/lifecycle_flags.h"
#include "tools/serve_flags.h"
#include "tools/serve_loop.h"
#include "worker/in_process_stage_link.h"
#include "worker/stage_engine_factory.h"
#include "worker/stage_executor.h"
#include "worker/worker_convert.h"

namespace xkv {
namespace {

// In-process stages take the coordinator's steps as they come (no network edge).
constexpr int64_t kUnboundedStepTokens = std::numeric_limits<int64_t>::max();

// What a stage of this process takes from the command line beyond LoadStage's fields.
struct LocalStageSettings {
  std::string device;
  int num_threads = 1;
  int64_t max_batched_tokens = 0;
  double gpu_memory_utilization = kDefaultGpuMemoryUtilization;
  double gpu_memory_share = 1.0;  // 1 / stages on the same GPU
};

class InProcessStageClient final : public StageClient {
 public:
  InProcessStageClient(std::shared_ptr<InProcessHandoff> inbox,
                       std::shared_ptr<InProcessHandoff> outbox, LocalStageSettings settings)
      : inbox_(std::move(inbox)), outbox_(std::move(outbox)), settings_(std::move(settings)) {}

  std::string address() const override { return "in-process"; }
  xkv::v1::LinkKind link_kind() const override { return xkv::v1::LINK_KIND_IN_PROCESS; }

  absl::StatusOr<xkv::v1::LoadStageResponse> LoadStage(
      const xkv::v1::LoadStageRequest& request) override {
    ASSIGN_OR_RETURN(StageOptions options,
                     StageOptionsFromProto(request, settings_.device, settings_.num_threads));
    options.max_batched_tokens = settings_.max_batched_tokens;
    options.gpu_memory_utilization = settings_.gpu_memory_utilization;
    options.gpu_memory_share = settings_.gpu_memory_share;
    {
      std::lock_guard<std::mutex> lock(mu_);
      stage_.reset();
    }
    ASSIGN_OR_RETURN(
        std::unique_ptr<StageExecutor> stage,
        StageExecutor::Load(options, std::make_unique<InProcessStageLink>(inbox_, outbox_)));
    xkv::v1::LoadStageResponse response;
    ModelInfoToProto(stage->config(), response.mutable_model());
    response.set_weight_bytes(stage->weight_bytes());
    int64_t capacity = 0;
    for (int64_t c : stage->layer_capacity_blocks()) {
      response.add_layer_capacity_blocks(c);
      capacity += c * stage->block_bytes();
    }
    response.set_kv_capacity_bytes(capacity);
    response.set_block_tokens(stage->block_tokens());
    response.set_block_bytes(stage->block_bytes());
    std::lock_guard<std::mutex> lock(mu_);
    stage_ = std::move(stage);
    return response;
  }

  absl::StatusOr<xkv::v1::StepResponse> Step(const xkv::v1::StepRequest& request) override {
    ASSIGN_OR_RETURN(std::shared_ptr<StageExecutor> stage, Loaded());
    ASSIGN_OR_RETURN(StageStep step,
                     StepFromProto(request, StepBoundsOf(*stage, kUnboundedStepTokens)));
    ASSIGN_OR_RETURN(StageStepResult result, stage->Step(step));
    xkv::v1::StepResponse response;
    StepResultToProto(result, &response);
    return response;
  }

  absl::StatusOr<xkv::v1::CompactResponse> Compact(
      const xkv::v1::CompactRequest& request) override {
    ASSIGN_OR_RETURN(std::shared_ptr<StageExecutor> stage, Loaded());
    ASSIGN_OR_RETURN(StageCompactSpec spec,
                     CompactSpecFromProto(request.compact(), stage->config().context_length));
    ASSIGN_OR_RETURN(StageCompactResult result, stage->Compact(request.seq_id(), spec));
    xkv::v1::CompactResponse response;
    for (const StageLayerSize& l : result.layers) LayerSizeToProto(l, response.add_layers());
    response.set_bytes_held(result.bytes_held);
    UsageToProto(result.usage, response.mutable_usage());
    return response;
  }

  absl::StatusOr<xkv::v1::ReleaseResponse> Release(
      const xkv::v1::ReleaseRequest& request) override {
    ASSIGN_OR_RETURN(std::shared_ptr<StageExecutor> stage, Loaded());
    std::vector<uint64_t> ids(request.seq_ids().begin(), request.seq_ids().end());
    xkv::v1::ReleaseResponse response;
    response.set_released(stage->Release(ids));
    UsageToProto(stage->status().usage, response.mutable_usage());
    return response;
  }

  absl::StatusOr<xkv::v1::StatusResponse> Status() override {
    xkv::v1::StatusResponse response;
    absl::StatusOr<std::shared_ptr<StageExecutor>> stage = Loaded();
    if (!stage.ok()) {
      response.set_health(xkv::v1::STAGE_HEALTH_NOT_LOADED);
      return response;
    }
    StatusToProto((*stage)->status(), &response);
    response.set_health(xkv::v1::STAGE_HEALTH_SERVING);
    return response;
  }

 private:
  absl::StatusOr<std::shared_ptr<StageExecutor>> Loaded() {
    std::lock_guard<std::mutex> lock(mu_);
    if (stage_ == nullptr) return absl::UnavailableError("stage not loaded");
    return stage_;
  }

  const std::shared_ptr<InProcessHandoff> inbox_, outbox_;
  const LocalStageSettings settings_;
  std::mutex mu_;
  std::shared_ptr<StageExecutor> stage_;
};

}  // namespace

int RunServe(int argc, char** argv) {
  ServeFlags f;
  int64_t stages = 1;
  int64_t threads = 0;
  std::string device = "cpu";
  double gpu_memory_utilization = kDefaultGpuMemoryUtilization;
  LifecycleFlags lifecycle;
  FlagSet flags("serve",
                "Embedded mode: the coordinator and --stages pipeline stages in one process, "
                "serving\nxkv.v1.Generation on --listen and xkv.v1.Admin on --admin-listen.");
  RegisterServeFlags(flags, &f);
  flags.Int("stages", &stages, "pipeline stages (threads of this process)");
  flags.Int("threads", &threads, "CPU threads per stage; 0 divides the hardware threads");
  flags.String("device", &device,
               "device of the stages: cpu, cuda:N (every stage on GPU N) or a comma-separated "
               "list with one device per stage (e.g. cuda:0,cuda:1)");
  flags.Double("gpu-memory-utilization", &gpu_memory_utilization,
               "fraction of a GPU's free memory its stages may use, in (0, 1]: weights, step "
               "scratch, and the KV pool gets the rest (stages on one GPU share it equally)");
  RegisterLifecycleFlags(flags, &lifecycle);
  if (auto code = flags.ParseOrExitCode(argc, argv, 2)) return *code;
  if (stages < 1) {
    std::fprintf(stderr, "xkv serve: --stages must be >= 1\n");
    return 2;
  }
  if (threads <= 0) {
    threads = std::max<int64_t>(1, std::thread::hardware_concurrency() / stages);
  }
  std::vector<std::string> devices = absl::StrSplit(device, ',');
  if (devices.size() != 1 && static_cast<int64_t>(devices.size()) != stages) {
    std::fprintf(stderr, "xkv serve: --device lists %zu devices for %lld stages\n", devices.size(),
                 static_cast<long long>(stages));
    return 2;
  }
  bool gpu_stages = false;
  for (const std::string& d : devices) {
    absl::StatusOr<int> ok = ParseStageDevice(d);
    if (!ok.ok()) {
      std::fprintf(stderr, "xkv serve: %s\n", std::string(ok.status().message()).c_str());
      return 2;
    }
    gpu_stages = gpu_stages || *ok >= 0;
  }
  absl::StatusOr<int64_t> max_batched_tokens = MaxBatchedTokensFromFlags(f);
  absl::Status valid = max_batched_tokens.status();
  if (valid.ok()) valid = ValidateGpuMemoryUtilization(gpu_memory_utilization);
  if (!valid.ok()) {
    std::fprintf(stderr, "xkv serve: %s\n", std::string(valid.message()).c_str());
    return 2;
  }
  std::vector<std::shared_ptr<InProcessHandoff>> boxes;
  for (int64_t s = 0; s + 1 < stages; ++s) boxes.push_back(std::make_shared<InProcessHandoff>());
  std::vector<std::unique_ptr<StageClient>> clients;
  for (int64_t s = 0; s < stages; ++s) {
    LocalStageSettings local;
    local.device = devices[devices.size() == 1 ? 0 : s];
    local.num_threads = static_cast<int>(threads);
    local.max_batched_tokens = *max_batched_tokens;
    local.gpu_memory_utilization = gpu_memory_utilization;
    int64_t on_device = 0;  // stages of this process on the same device
    for (int64_t t = 0; t < stages; ++t) {
      on_device += devices[devices.size() == 1 ? 0 : t] == local.device ? 1 : 0;
    }
    local.gpu_memory_share = 1.0 / static_cast<double>(on_device);
    clients.push_back(std::make_unique<InProcessStageClient>(
        s > 0 ? boxes[s - 1] : nullptr, s + 1 < stages ? boxes[s] : nullptr, std::move(local)));
  }
  absl::StatusOr<CoordinatorOptions> options = CoordinatorOptionsFromFlags(f, gpu_stages);
  if (options.ok()) {
    if (absl::Status s = ApplyLifecycleFlags(lifecycle, &*options); !s.ok()) options = s;
  }
  if (!options.ok()) {
    std::fprintf(stderr, "xkv serve: %s\n", std::string(options.status().message()).c_str());
    return 2;
  }
  absl::StatusOr<std::unique_ptr<Coordinator>> coordinator =
      Coordinator::Start(*options, std::move(clients));
  if (!coordinator.ok()) {
    std::fprintf(stderr, "xkv serve: %s\n", std::string(coordinator.status().message()).c_str());
    return 1;
  }
  return ServeUntilSignal(f, coordinator->get(), "serve");
}

}  // namespace xkv
