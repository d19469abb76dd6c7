// `xkv serve`: embedded mode — the coordinator and N pipeline stages in one process. The stages
// are StageExecutors on in-process links; the coordinator reaches them through
// InProcessStageClient (embedded/) by direct calls (the same Worker messages as over gRPC).
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_split.h"
#include "coordinator/coordinator.h"
#include "embedded/in_process_stage_client.h"
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
  for (const std::string& d : devices) {
    if (absl::StatusOr<int> ok = ParseStageDevice(d); !ok.ok()) {
      std::fprintf(stderr, "xkv serve: %s\n", std::string(ok.status().message()).c_str());
      return 2;
    }
  }
  absl::StatusOr<std::vector<std::unique_ptr<StageClient>>> clients =
      MakeInProcessStages(static_cast<int>(stages), devices, static_cast<int>(threads));
  if (!clients.ok()) {
    std::fprintf(stderr, "xkv serve: %s\n", std::string(clients.status().message()).c_str());
    return 2;
  }
  absl::StatusOr<CoordinatorOptions> options = CoordinatorOptionsFromFlags(f, stages);
  if (options.ok()) {
    if (absl::Status s = ApplyLifecycleFlags(lifecycle, &*options); !s.ok()) options = s;
  }
  if (!options.ok()) {
    std::fprintf(stderr, "xkv serve: %s\n", std::string(options.status().message()).c_str());
    return 2;
  }
  absl::StatusOr<std::unique_ptr<Coordinator>> coordinator =
      Coordinator::Start(*options, *std::move(clients));
  if (!coordinator.ok()) {
    std::fprintf(stderr, "xkv serve: %s\n", std::string(coordinator.status().message()).c_str());
    return 1;
  }
  return ServeUntilSignal(f, coordinator->get(), "serve");
}

}  // namespace xkv
