#include "tools/serve_flags.h"

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "kernels/status_macros.h"

namespace xkv {
namespace {
volatile std::sig_atomic_t g_stop = 0;
void OnSignal(int) { g_stop = 1; }
}  // namespace

void RegisterServeFlags(FlagSet& flags, ServeFlags* f) {
  flags.String("model", &f->model, "GGUF model file (tokenizer, config; workers load its layers)");
  flags.String("listen", &f->listen, "address of the public Generation service");
  flags.String("admin-listen", &f->admin_listen, "address of the Admin service");
  flags.String("admin-token", &f->admin_token, "bearer token for Admin (or $XKV_ADMIN_TOKEN)");
  flags.String("admin-token-file", &f->admin_token_file, "file holding the Admin bearer token");
  flags.Bool("admin-insecure-local", &f->admin_insecure_local,
             "Admin without a token (local use only)");
  flags.String("policy", &f->policy, "default KV policy: full|streaming|snapkv|pyramidkv|xkv");
  flags.Double("retention", &f->retention, "default xkv average-retention target in (0, 1]");
  flags.Double("budget-fraction", &f->budget_fraction,
               "default kept fraction of the prompt prefix in (0, 1] (instead of --retention)");
  flags.String("profile", &f->profile, "xkv profile mode: per_request|one_pass|sampled:<rho>");
  flags.Int("window", &f->window, "observation window w");
  flags.Int("block-tokens", &f->block_tokens, "tokens per KV block");
  flags.Int("kv-blocks", &f->kv_blocks, "KV blocks per layer on the workers (0: their default)");
  flags.Int("max-batch", &f->max_batch, "running sequences per step");
  flags.Int("max-queue", &f->max_queue, "waiting requests before RESOURCE_EXHAUSTED");
  flags.Int("step-tokens", &f->step_tokens, "token budget of one step (decode + prefill)");
  flags.Int("prefill-chunk", &f->prefill_chunk, "max prompt tokens of one sequence per step");
  flags.Int("default-max-tokens", &f->default_max_tokens, "max_tokens when a request sends 0");
  flags.Int("concurrency", &f->concurrency, "expected concurrent sequences (stage planning)");
  flags.Bool("auto-replan", &f->auto_replan, "re-plan stages when the profile shifts");
}

absl::StatusOr<CoordinatorOptions> CoordinatorOptionsFromFlags(const ServeFlags& f) {
  CoordinatorOptions o;
  o.model_path = f.model;
  ASSIGN_OR_RETURN(o.kv.policy, ParsePolicy(f.policy));
  ASSIGN_OR_RETURN(o.kv.profile, ParseProfileMode(f.profile));
  if (f.budget_fraction > 0) {
    o.kv.target = {KvTarget::Kind::kFraction, f.budget_fraction};
  } else {
    o.kv.target = {KvTarget::Kind::kRetention, f.retention};
  }
  o.window = static_cast<int>(f.window);
  o.block_tokens = static_cast<int>(f.block_tokens);
  o.kv_capacity_blocks = f.kv_blocks;
  o.scheduler.max_running = f.max_batch;
  o.scheduler.max_queue = f.max_queue;
  o.scheduler.step_token_budget = f.step_tokens;
  o.scheduler.prefill_chunk = f.prefill_chunk;
  o.default_max_tokens = f.default_max_tokens;
  o.planner.concurrency = f.concurrency;
  o.auto_replan = f.auto_replan;
  return o;
}

absl::StatusOr<CoordinatorServerOptions> ServerOptionsFromFlags(const ServeFlags& f) {
  CoordinatorServerOptions o;
  o.listen = f.listen;
  o.admin_listen = f.admin_listen;
  o.admin.insecure_local = f.admin_insecure_local;
  o.admin.token = f.admin_token;
  if (o.admin.token.empty()) {
    if (const char* env = std::getenv("XKV_ADMIN_TOKEN"); env != nullptr) o.admin.token = env;
  }
  if (o.admin.token.empty() && !f.admin_token_file.empty()) {
    std::ifstream in(f.admin_token_file);
    if (!in) return absl::NotFoundError("cannot read --admin-token-file " + f.admin_token_file);
    std::stringstream ss;
    ss << in.rdbuf();
    o.admin.token = std::string(absl::StripAsciiWhitespace(ss.str()));
  }
  return o;
}

int ServeUntilSignal(const ServeFlags& f, Coordinator* coordinator, const char* command) {
  absl::StatusOr<CoordinatorServerOptions> so = ServerOptionsFromFlags(f);
  if (!so.ok()) {
    std::fprintf(stderr, "xkv %s: %s\n", command, std::string(so.status().message()).c_str());
    return 1;
  }
  absl::StatusOr<std::unique_ptr<CoordinatorServer>> server =
      CoordinatorServer::Start(*so, coordinator);
  if (!server.ok()) {
    std::fprintf(stderr, "xkv %s: %s\n", command, std::string(server.status().message()).c_str());
    return 1;
  }
  std::fprintf(stderr, "xkv %s: serving Generation on port %d, Admin on port %d\n", command,
               (*server)->port(), (*server)->admin_port());
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  while (!g_stop) {
    struct timespec ts = {0, 100 * 1000 * 1000};
    nanosleep(&ts, nullptr);
  }
  std::fprintf(stderr, "xkv %s: shutting down\n", command);
  coordinator->Shutdown();  // ends every open stream first, so the server's shutdown returns
  (*server)->Shutdown();
  return 0;
}

}  // namespace xkv
