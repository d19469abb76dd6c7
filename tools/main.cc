// The `xkv` binary: one subcommand per product capability.
#include <cstdio>
#include <cstring>
#include <string>

#include "absl/synchronization/mutex.h"
#include "tools/commands.h"

namespace {

constexpr char kUsage[] =
    "usage: xkv <command> [flags]\n"
    "\n"
    "xkv serves long-context LLMs with a per-layer KV-cache size (XKV).\n"
    "\n"
    "commands:\n"
    "  generate   generate text from a GGUF model, streaming to stdout (CPU, or --device cuda:N)\n"
    "  bench      benchmarks (`xkv bench cpu`: against llama.cpp; `xkv bench gpu`: GPU limits)\n"
    "  eval       answer quality of every KV policy vs the full cache (CSV, Markdown, plot)\n"
    "  calibrate  per-layer sensitivity weights of a model, written beside it (--calibration)\n"
    "  worker     serve one pipeline stage (layer range) for a coordinator (xkv.v1.Worker)\n"
    "  serve      embedded mode: coordinator + N stages in one process (Generation + Admin gRPC)\n"
    "  coordinator  the coordinator in front of `xkv worker` processes (--workers A,B,...)\n"
    "  client     call a server: `client generate --server ADDR --prompt ...`, `client admin RPC`\n"
    "\n"
    "`xkv <command> --help` describes each command's flags.\n";

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0 ||
      std::strcmp(argv[1], "help") == 0) {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  // The system Abseil is built with absl::Mutex deadlock detection on, which records a stack trace
  // and updates a lock graph at every acquire (gRPC's locks are absl::Mutex): about a tenth of the
  // serve loop's CPU per decode step. The binary runs without it; the tests keep it.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  const std::string command = argv[1];
  if (command == "generate") return xkv::RunGenerate(argc, argv);
  if (command == "bench") return xkv::RunBench(argc, argv);
  if (command == "eval") return xkv::RunEval(argc, argv);
  if (command == "calibrate") return xkv::RunCalibrate(argc, argv);
  if (command == "worker") return xkv::RunWorker(argc, argv);
  if (command == "serve") return xkv::RunServe(argc, argv);
  if (command == "coordinator") return xkv::RunCoordinator(argc, argv);
  if (command == "client") return xkv::RunClient(argc, argv);
  std::fprintf(stderr, "xkv: unknown command '%s'\n\n%s", command.c_str(), kUsage);
  return 2;
}
