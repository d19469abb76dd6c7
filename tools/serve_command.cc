// `xkv serve`: embedded mode — the coordinator and N pipeline stages in one process. The stages
// are StageExecutors on in-process links; the coordinator reaches them through
// InProcessStageClient (embedded/) by direct calls (the same Worker messages as over gRPC).
#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_split.h"
#include "coordinator/coordinator.h"
#include "coordinator/stage_probe.h"
#include "embedded/in_process_stage_client.h"
#include "model/gpu_memory_budget.h"
#include "tools/commands.h"
#include "tools/flag_set.h"
#include "tools/lifecycle_flags.h"
#include "tools/serve_flags.h"
#include "tools/serve_loop.h"
#include "worker/stage_engine_factory.h"

namespace xkv {

int RunServe(int argc, char** argv) {
  ServeFlags f;
  int64_t stages = 1;
  int64_t threads = 0;
  std::string device = "cpu";
  double gpu_memory_utilization = kDefaultGpuMemoryUtilization;
  std::string async_decode = "auto";
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
  flags.String("async-decode", &async_decode,
               "auto, on or off: a single stage queues the next decode step on its device before "
               "it answers the current one (same tokens; the host's per-step work overlaps the "
               "device's); auto: on for one GPU stage with --micro-batches 1");
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
  for (const std::string& d : devices) {
    absl::StatusOr<int> ok = ParseStageDevice(d);
    if (!ok.ok()) {
      std::fprintf(stderr, "xkv serve: %s\n", std::string(ok.status().message()).c_str());
      return 2;
    }
  }
  const bool gpu_stages = AnyGpuDevice(devices);
  if (async_decode != "auto" && async_decode != "on" && async_decode != "off") {
    std::fprintf(stderr, "xkv serve: --async-decode '%s' is not one of auto, on, off\n",
                 async_decode.c_str());
    return 2;
  }
  absl::StatusOr<int64_t> max_batched_tokens = MaxBatchedTokensFromFlags(f, gpu_stages);
  absl::Status valid = max_batched_tokens.status();
  if (valid.ok()) valid = ValidateGpuMemoryUtilization(gpu_memory_utilization);
  if (!valid.ok()) {
    std::fprintf(stderr, "xkv serve: %s\n", std::string(valid.message()).c_str());
    return 2;
  }
  InProcessStageSettings settings;
  settings.num_threads = static_cast<int>(threads);
  settings.max_batched_tokens = *max_batched_tokens;
  settings.gpu_memory_utilization = gpu_memory_utilization;
  absl::StatusOr<CoordinatorOptions> options = CoordinatorOptionsFromFlags(f, stages, gpu_stages);
  if (options.ok()) {
    if (absl::Status s = ApplyLifecycleFlags(lifecycle, &*options); !s.ok()) options = s;
  }
  if (!options.ok()) {
    std::fprintf(stderr, "xkv serve: %s\n", std::string(options.status().message()).c_str());
    return 2;
  }
  // auto: one GPU stage running one step at a time (with several micro-batches or stages the
  // next step is another batch's, and a step queued ahead would be undone every time).
  settings.lookahead = async_decode == "auto"
                           ? gpu_stages && stages == 1 && options->scheduler.micro_batches == 1
                           : async_decode == "on";
  absl::StatusOr<std::vector<std::unique_ptr<StageClient>>> clients =
      MakeInProcessStages(static_cast<int>(stages), devices, settings);
  if (!clients.ok()) {
    std::fprintf(stderr, "xkv serve: %s\n", std::string(clients.status().message()).c_str());
    return 2;
  }
  absl::StatusOr<std::unique_ptr<Coordinator>> coordinator =
      Coordinator::Start(*options, std::move(*clients));
  if (!coordinator.ok()) {
    std::fprintf(stderr, "xkv serve: %s\n", std::string(coordinator.status().message()).c_str());
    return 1;
  }
  return ServeUntilSignal(f, coordinator->get(), "serve");
}

}  // namespace xkv
