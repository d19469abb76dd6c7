// `xkv coordinator`: the coordinator process in front of `xkv worker` processes.
#include <algorithm>
#include <cstdio>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "base/status_macros.h"
#include "coordinator/coordinator.h"
#include "coordinator/data_plane.h"
#include "coordinator/grpc_stage_client.h"
#include "coordinator/stage_probe.h"
#include "tools/commands.h"
#include "tools/flag_set.h"
#include "tools/lifecycle_flags.h"
#include "tools/serve_flags.h"
#include "tools/serve_loop.h"
#include "tools/tls_flags.h"
#include "worker/tls_credentials.h"
#if defined(XKV_WITH_NCCL)
#include "worker/nccl/nccl_stage_link.h"
#endif

namespace xkv {
namespace {

// The coordinator's options for what its workers are (the flags' defaults differ on GPUs, and a
// step may carry no more than every worker takes).
using OptionsForStages = std::function<absl::StatusOr<CoordinatorOptions>(const StageProbe&)>;

// Asks the workers what they are (ProbeStages), takes the options for them and starts the
// coordinator; while a worker is unreachable (UNAVAILABLE / DEADLINE_EXCEEDED) it retries with
// exponential backoff (0.5 s doubling to 10 s) until `wait` has passed.
absl::StatusOr<std::unique_ptr<Coordinator>> StartWithBackoff(
    const OptionsForStages& options_for, const std::vector<std::string>& addresses,
    const std::shared_ptr<grpc::ChannelCredentials>& credentials, absl::Duration wait,
    absl::Duration stage_timeout) {
  const absl::Time deadline = absl::Now() + wait;
  absl::Duration backoff = absl::Milliseconds(500);
  for (int attempt = 1;; ++attempt) {
    std::vector<std::unique_ptr<StageClient>> clients;
    for (const std::string& a : addresses) {
      GrpcStageClientOptions o;
      o.address = a;
      o.credentials = credentials;
      o.step_timeout = stage_timeout;
      clients.push_back(MakeGrpcStageClient(o));
    }
    absl::StatusOr<std::unique_ptr<Coordinator>> c;
    absl::StatusOr<StageProbe> probe = ProbeStages(clients);
    if (probe.ok()) {
      absl::StatusOr<CoordinatorOptions> options = options_for(*probe);
      if (!options.ok()) return options.status();
      std::fprintf(stderr,
                   "xkv coordinator: stages on %s (%s defaults): profile %s, %lld "
                   "micro-batches, %lld tokens per step\n",
                   absl::StrJoin(probe->devices, ", ").c_str(),
                   AnyGpuDevice(probe->devices) ? "GPU" : "CPU",
                   std::string(ProfileModeName(options->kv.profile)).c_str(),
                   static_cast<long long>(options->scheduler.micro_batches),
                   static_cast<long long>(options->scheduler.step_token_budget));
      c = Coordinator::Start(*options, std::move(clients));
    } else {
      c = probe.status();
    }
    const bool retry = c.status().code() == absl::StatusCode::kUnavailable ||
                       c.status().code() == absl::StatusCode::kDeadlineExceeded;
    if (c.ok() || !retry || absl::Now() + backoff > deadline) return c;
    std::fprintf(stderr, "xkv coordinator: waiting for the workers (attempt %d): %s; retry in %s\n",
                 attempt, std::string(c.status().message()).c_str(),
                 absl::FormatDuration(backoff).c_str());
    absl::SleepFor(backoff);
    backoff = std::min(backoff * 2, absl::Seconds(10));
  }
}

}  // namespace

int RunCoordinator(int argc, char** argv) {
  ServeFlags f;
  std::string workers;
  std::string data_plane = "grpc";
  int64_t wait_for_workers_s = 240;
  TlsFiles tls_files;
  double stage_timeout_s = 30;
  LifecycleFlags lifecycle;
  FlagSet flags("coordinator",
                "Serves xkv.v1.Generation (--listen) and xkv.v1.Admin (--admin-listen) over the "
                "pipeline\nstages of --workers (one `xkv worker` per stage, in layer order).");
  RegisterServeFlags(flags, &f);
  flags.String("workers", &workers, "comma-separated worker addresses, first stage first");
  flags.String("data-plane", &data_plane,
               "hidden states between workers: grpc (any device) or nccl (CUDA workers, one GPU "
               "each; needs a CUDA/NCCL build)");
  flags.Int("wait-for-workers", &wait_for_workers_s,
            "seconds to keep retrying (with backoff) while a worker is unreachable at start, so "
            "pods may start in any order (0: fail at once)");
  flags.Double("stage-timeout", &stage_timeout_s,
               "seconds a pipeline step (or a compaction) may take on the workers before the "
               "coordinator gives up on it (its requests get UNAVAILABLE); also the workers' wait "
               "for each other's hidden rows");
  RegisterLifecycleFlags(flags, &lifecycle);
  RegisterTlsFlags(flags, "the coordinator (a client of the workers)", &tls_files);
  if (auto code = flags.ParseOrExitCode(argc, argv, 2)) return *code;
  std::vector<std::string> addresses = absl::StrSplit(workers, ',', absl::SkipWhitespace());
  if (addresses.empty()) {
    std::fprintf(stderr, "xkv coordinator: --workers is empty\n");
    return 2;
  }
  if (wait_for_workers_s < 0) {
    std::fprintf(stderr, "xkv coordinator: --wait-for-workers must be >= 0\n");
    return 2;
  }
  if (!(stage_timeout_s > 0 && stage_timeout_s <= 3600)) {
    std::fprintf(stderr, "xkv coordinator: --stage-timeout must be in (0, 3600] seconds\n");
    return 2;
  }
#if defined(XKV_WITH_NCCL)
  const NcclUniqueIdSource nccl = &NcclStageLink::NewNcclUniqueId;
#else
  const NcclUniqueIdSource nccl = nullptr;
#endif
  // The defaults of --micro-batches 0, --max-batched-tokens 0 and --reconstruct-chunk 0 follow
  // the workers' devices, and a step fits what every worker takes, known once they answer.
  const OptionsForStages options_for =
      [&](const StageProbe& probe) -> absl::StatusOr<CoordinatorOptions> {
    absl::StatusOr<CoordinatorOptions> options = CoordinatorOptionsFromFlags(
        f, static_cast<int64_t>(addresses.size()), AnyGpuDevice(probe.devices), probe);
    if (!options.ok()) return options.status();
    options->link_timeout = absl::Seconds(stage_timeout_s);
    RETURN_IF_ERROR(ApplyLifecycleFlags(lifecycle, &*options));
    if (absl::Status s = ApplyDataPlane(data_plane, nccl, &*options); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("--data-plane: ", s.message()));
    }
    return options;
  };
  // Bad flags exit here, before any worker is asked (what the workers are changes defaults).
  if (absl::StatusOr<CoordinatorOptions> o = options_for(StageProbe{}); !o.ok()) {
    std::fprintf(stderr, "xkv coordinator: %s\n", std::string(o.status().message()).c_str());
    return 2;
  }
  absl::StatusOr<std::optional<TlsMaterial>> tls = LoadTlsMaterial(tls_files);
  if (!tls.ok()) {
    std::fprintf(stderr, "xkv coordinator: %s\n", std::string(tls.status().message()).c_str());
    return 2;
  }
  const std::shared_ptr<grpc::ChannelCredentials> credentials =
      tls->has_value() ? MutualTlsChannelCredentials(**tls) : nullptr;
  absl::StatusOr<std::unique_ptr<Coordinator>> coordinator =
      StartWithBackoff(options_for, addresses, credentials, absl::Seconds(wait_for_workers_s),
                       absl::Seconds(stage_timeout_s));
  if (!coordinator.ok()) {
    std::fprintf(stderr, "xkv coordinator: %s\n",
                 std::string(coordinator.status().message()).c_str());
    return 1;
  }
  return ServeUntilSignal(f, coordinator->get(), "coordinator");
}

}  // namespace xkv
