// Flags shared by `xkv serve` and `xkv coordinator`: listeners, admin auth, KV policy, batching.
#ifndef XKV_TOOLS_SERVE_FLAGS_H_
#define XKV_TOOLS_SERVE_FLAGS_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "coordinator/coordinator.h"
#include "coordinator/coordinator_server.h"
#include "tools/flag_set.h"

namespace xkv {

struct ServeFlags {
  std::string model = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
  std::string listen = "127.0.0.1:50051";
  std::string admin_listen = "127.0.0.1:50052";
  std::string admin_token;
  std::string admin_token_file;
  bool admin_insecure_local = false;
  std::string policy = "xkv";
  double retention = 0.9;
  double budget_fraction = 0;
  std::string profile = "per_request";
  std::string allocator = "global";
  double floor = 0.75;
  int64_t window = 8;
  int64_t block_tokens = 16;
  int64_t kv_blocks = 0;
  int64_t max_batch = 16;
  int64_t max_queue = 256;
  int64_t step_tokens = 512;
  int64_t prefill_chunk = 512;
  int64_t default_max_tokens = 256;
  int64_t concurrency = 8;
  bool auto_replan = false;
  std::string metrics_listen;  // empty: no /metrics endpoint
};

void RegisterServeFlags(FlagSet& flags, ServeFlags* f);
// Options from the flags; the admin token from --admin-token, $XKV_ADMIN_TOKEN or
// --admin-token-file (in that order).
absl::StatusOr<CoordinatorOptions> CoordinatorOptionsFromFlags(const ServeFlags& f);
absl::StatusOr<CoordinatorServerOptions> ServerOptionsFromFlags(const ServeFlags& f);
// Serves until SIGINT/SIGTERM; returns the exit code.
int ServeUntilSignal(const ServeFlags& f, Coordinator* coordinator, const char* command);

}  // namespace xkv

#endif  // XKV_TOOLS_SERVE_FLAGS_H_
