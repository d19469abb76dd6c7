// `xkv worker`: one pipeline stage behind the internal xkv.v1.Worker gRPC service. It starts
// empty (health NOT_SERVING); the coordinator's LoadStage assigns its layer range. SIGINT/SIGTERM
// shut it down gracefully.
#include <pthread.h>
#include <signal.h>

#include <cstdio>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "tools/commands.h"
#include "tools/flag_set.h"
#include "worker/worker_service.h"

namespace xkv {
namespace {

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "xkv worker: %s\n", std::string(status.message()).c_str());
  return 1;
}

}  // namespace

int RunWorker(int argc, char** argv) {
  std::string listen = "0.0.0.0:50061";
  std::string device = "cpu";
  int64_t threads = 1;
  FlagSet flags("worker",
                "Serve one pipeline stage (xkv.v1.Worker) for a coordinator; the coordinator "
                "assigns the model file and layer range with LoadStage.");
  flags.String("listen", &listen, "host:port to listen on (port 0 picks a free port)");
  flags.String("device", &device, "device of this stage: cpu");
  flags.Int("threads", &threads, "CPU threads for the stage's compute");
  if (absl::Status s = flags.Parse(argc, argv, 2); !s.ok()) return Fail(s);
  if (flags.help_requested()) {
    std::fputs(flags.Usage().c_str(), stdout);
    return 0;
  }
  if (device != "cpu") {
    return Fail(absl::InvalidArgumentError(
        absl::StrCat("--device ", device, " is not supported yet (use cpu)")));
  }
  if (threads < 1) return Fail(absl::InvalidArgumentError("--threads must be >= 1"));
  // Block the shutdown signals before gRPC starts its threads, so only sigwait sees them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  WorkerServerOptions options;
  options.listen = listen;
  options.service.device = device;
  options.service.num_threads = static_cast<int>(threads);
  absl::StatusOr<std::unique_ptr<WorkerServer>> server = WorkerServer::Start(options);
  if (!server.ok()) return Fail(server.status());
  std::fprintf(stderr, "xkv worker: listening on %s (port %d), device %s, waiting for LoadStage\n",
               listen.c_str(), (*server)->port(), device.c_str());
  int signal = 0;
  sigwait(&signals, &signal);
  std::fprintf(stderr, "xkv worker: signal %d, shutting down\n", signal);
  (*server)->Shutdown();
  (*server)->Wait();
  return 0;
}

}  // namespace xkv
