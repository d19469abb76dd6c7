// `xkv coordinator`: the coordinator process in front of `xkv worker` processes.
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "coordinator/coordinator.h"
#include "coordinator/grpc_stage_client.h"
#include "tools/commands.h"
#include "tools/flag_set.h"
#include "tools/serve_flags.h"

namespace xkv {

int RunCoordinator(int argc, char** argv) {
  ServeFlags f;
  std::string workers;
  FlagSet flags("coordinator",
                "Serves xkv.v1.Generation (--listen) and xkv.v1.Admin (--admin-listen) over the "
                "pipeline\nstages of --workers (one `xkv worker` per stage, in layer order).");
  RegisterServeFlags(flags, &f);
  flags.String("workers", &workers, "comma-separated worker addresses, first stage first");
  if (absl::Status s = flags.Parse(argc, argv, 2); !s.ok()) {
    std::fprintf(stderr, "xkv coordinator: %s\n", std::string(s.message()).c_str());
    return 2;
  }
  if (flags.help_requested()) {
    std::fputs(flags.Usage().c_str(), stdout);
    return 0;
  }
  std::vector<std::unique_ptr<StageClient>> clients;
  for (absl::string_view a : absl::StrSplit(workers, ',', absl::SkipWhitespace())) {
    clients.push_back(MakeGrpcStageClient({std::string(a)}));
  }
  if (clients.empty()) {
    std::fprintf(stderr, "xkv coordinator: --workers is empty\n");
    return 2;
  }
  absl::StatusOr<CoordinatorOptions> options = CoordinatorOptionsFromFlags(f);
  if (!options.ok()) {
    std::fprintf(stderr, "xkv coordinator: %s\n", std::string(options.status().message()).c_str());
    return 2;
  }
  absl::StatusOr<std::unique_ptr<Coordinator>> coordinator =
      Coordinator::Start(*options, std::move(clients));
  if (!coordinator.ok()) {
    std::fprintf(stderr, "xkv coordinator: %s\n",
                 std::string(coordinator.status().message()).c_str());
    return 1;
  }
  return ServeUntilSignal(f, coordinator->get(), "coordinator");
}

}  // namespace xkv
