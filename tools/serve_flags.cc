#include "tools/serve_flags.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "model/chat_template.h"
#include "model/layer_calibration.h"
#include "model/reconstruct_scorer.h"
#include "tools/serve_metrics.h"

namespace xkv {
namespace {

// A secret from its flag, else the environment variable, else the file (whitespace stripped);
// empty when none is given.
absl::StatusOr<std::string> ReadSecret(const std::string& flag, const char* env,
                                       const std::string& file, const char* file_flag) {
  if (!flag.empty()) return flag;
  if (const char* v = std::getenv(env); v != nullptr && *v != '\0') return std::string(v);
  if (file.empty()) return std::string();
  std::ifstream in(file);
  if (!in) return absl::NotFoundError(std::string("cannot read ") + file_flag + " " + file);
  std::stringstream ss;
  ss << in.rdbuf();
  return std::string(absl::StripAsciiWhitespace(ss.str()));
}

}  // namespace

void RegisterServeFlags(FlagSet& flags, ServeFlags* f) {
  flags.String("model", &f->model, "GGUF model file (tokenizer, config; workers load its layers)");
  flags.String("chat-template", &f->chat_template,
               "chat template family for chat requests (chatml, llama3, llama2, mistral-v3, phi3, "
               "gemma, ...); default: detected from the GGUF");
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
  flags.String(
      "profile", &f->profile,
      "xkv profile mode: per_request|one_pass|sampled:<rho>|reconstruct|auto (reconstruct: "
      "re-read the prompt after its prefill, KVzip; auto: one_pass, the same budgets and "
      "tokens as per_request without its second prefill; a per_request prompt longer than "
      "--max-batched-tokens is profiled one_pass, in chunks)");
  flags.Int("reconstruct-chunk", &f->reconstruct_chunk,
            absl::StrCat(
                "profile reconstruct: prompt tokens re-read per step, in [", kMinRereadChunk, ", ",
                kMaxRereadChunk, "], shrunk to fit --max-batched-tokens; 0: ", kGpuRereadChunk,
                " when a stage runs on a GPU (xkv serve --device cuda:N, or a worker's device "
                "under xkv coordinator), else ",
                kCpuRereadChunk));
  flags.String("allocator", &f->allocator,
               "default xkv allocator: global|paper|heads (heads: per-(layer, KV head) budgets "
               "from --calibration's head weights); not given: heads for a size target "
               "(--budget-fraction, a request's tokens / bytes / fraction) when --calibration has "
               "head weights, else global");
  flags.Double("floor", &f->floor,
               "default floor of the global allocator (per layer) or heads (per KV head), a "
               "fraction of the uniform share in [0, 1]; not given: 0.75 (global), 0 (heads)");
  flags.Double("cap", &f->cap,
               "default per-layer cap of the global allocator (per (layer, KV head) with "
               "--per-head 1), a multiple of the uniform share in [1, 64]");
  flags.String("per-head", &f->per_head,
               "default xkv budgets per (layer, KV head) instead of per layer: 1 or 0 (global "
               "allocator; CPU stages)");
  flags.String("calibration", &f->calibration,
               "per-layer sensitivity weights (global allocator) and head weights (allocator "
               "heads) from `xkv calibrate`, for the default and every request, checked against "
               "--model at start");
  flags.Int("window", &f->window, "observation window w");
  flags.Int("block-tokens", &f->block_tokens, "tokens per KV block");
  flags.Int("kv-blocks", &f->kv_blocks,
            "KV blocks per layer on the workers; each stage's one pool holds this x its layers "
            "(0: their default)");
  flags.String("kv-admission", &f->kv_admission,
               "KV admission policy: max_utilization (admit on the prompt's blocks, preempt and "
               "recompute when full) | guaranteed_no_evict (reserve prompt + max_tokens)");
  flags.Int("max-batch", &f->max_batch, "running sequences per step");
  flags.Int("max-queue", &f->max_queue, "waiting requests before RESOURCE_EXHAUSTED");
  flags.Int("max-batched-tokens", &f->max_batched_tokens,
            absl::StrCat("tokens of one step, all sequences together (decodes + prefill chunks + "
                         "profile passes); sizes a GPU stage's step scratch, and a value above "
                         "what the device holds stops the start (0: ",
                         kGpuMaxBatchedTokens, " when a stage runs on a GPU, else ",
                         kCpuMaxBatchedTokens, ")"));
  flags.Int("step-tokens", &f->step_tokens, "old name of --max-batched-tokens");
  flags.Int("prefill-chunk", &f->prefill_chunk,
            "max prompt tokens of one sequence per step (0: --max-batched-tokens)");
  flags.Int("micro-batches", &f->micro_batches,
            "steps in flight through the pipeline at once, each over its own sequences, in [1, 64]"
            " (0: one per stage on GPUs, one at a time on CPUs)");
  flags.Int("default-max-tokens", &f->default_max_tokens, "max_tokens when a request sends 0");
  flags.Int("concurrency", &f->concurrency, "expected concurrent sequences (stage planning)");
  flags.Bool("auto-replan", &f->auto_replan, "re-plan stages when the profile shifts");
  flags.String("metrics-listen", &f->metrics_listen,
               "host:port of the Prometheus /metrics endpoint (empty: off)");
  flags.String("http-listen", &f->http_listen,
               "host:port of the OpenAI-compatible HTTP API, with /health, /ready and /metrics "
               "(empty: off)");
  flags.String("api-key-file", &f->api_key_file,
               "file holding the API key the HTTP API requires as `Authorization: Bearer` (or "
               "$XKV_API_KEY; neither: no key)");
  flags.String("served-model-name", &f->served_model_name,
               "model id of the HTTP API (empty: the model file's name without .gguf)");
  flags.Int("http-max-body-bytes", &f->http_max_body_bytes,
            "largest HTTP request body; larger ones get 413");
  flags.Int("http-max-concurrent", &f->http_max_concurrent,
            "HTTP generation requests in flight (streams included); more get 429");
  flags.Int("log-step-timing", &f->log_step_timing,
            "every N steps, one stderr line of where their time went: plan, launch, wait (the "
            "stages' own step and engine compute), apply (0: off)");
}

absl::StatusOr<int64_t> MaxBatchedTokensFromFlags(const ServeFlags& f, bool gpu_stages,
                                                  const StageProbe& workers) {
  int64_t n = f.max_batched_tokens;
  if (f.step_tokens != 0) {
    if (f.max_batched_tokens != 0 && f.max_batched_tokens != f.step_tokens) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--step-tokens ", f.step_tokens, " and --max-batched-tokens ", f.max_batched_tokens,
          " disagree: give --max-batched-tokens only (--step-tokens is its old name)"));
    }
    n = f.step_tokens;
  }
  if (n < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max-batched-tokens must be >= 1 (or 0: the device's default), got ", n));
  }
  const int64_t limit = workers.max_step_tokens;
  if (n == 0) {  // the device's default, cut to what every worker takes
    n = DefaultMaxBatchedTokens(gpu_stages);
    return limit > 0 ? std::min(n, limit) : n;
  }
  if (limit > 0 && n > limit) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max-batched-tokens ", n, " is above the ", limit,
                     " tokens one step may carry on worker ", workers.limiting_stage,
                     " (its --max-batched-tokens); give at most ", limit));
  }
  return n;
}

std::string ProfileModeFromFlags(const ServeFlags& f) {
  return f.profile == "auto" ? "one_pass" : f.profile;
}

absl::StatusOr<CoordinatorOptions> CoordinatorOptionsFromFlags(const ServeFlags& f,
                                                               int64_t num_stages, bool gpu_stages,
                                                               const StageProbe& workers) {
  CoordinatorOptions o;
  const int64_t micro_batches = f.micro_batches != 0 ? f.micro_batches
                                : gpu_stages         ? num_stages
                                                     : 1;
  if (micro_batches < 1 || micro_batches > kMaxMicroBatches) {
    return absl::InvalidArgumentError(absl::StrCat("--micro-batches ", f.micro_batches,
                                                   " is outside [1, ", kMaxMicroBatches,
                                                   "] (0: one per stage)"));
  }
  o.scheduler.micro_batches = micro_batches;
  if (f.log_step_timing < 0 || f.log_step_timing > 1000000) {
    return absl::InvalidArgumentError(
        absl::StrCat("--log-step-timing ", f.log_step_timing, " is outside [0, 1000000] (0: off)"));
  }
  o.log_step_timing = static_cast<int>(f.log_step_timing);
  if (!f.metrics_listen.empty() || !f.http_listen.empty()) {
    o.on_request_done = RecordServedRequest;
  }
  o.model_path = f.model;
  o.chat_template = f.chat_template;
  if (!f.chat_template.empty()) RETURN_IF_ERROR(ChatTemplate::FromName(f.chat_template).status());
  ASSIGN_OR_RETURN(o.kv.policy, ParsePolicy(f.policy));
  ASSIGN_OR_RETURN(o.kv.profile, ParseProfileMode(ProfileModeFromFlags(f)));
  ASSIGN_OR_RETURN(o.reread_chunk,
                   RereadChunkFromFlag(f.reconstruct_chunk, gpu_stages, "--reconstruct-chunk"));
  o.kv.allocator.kind_by_default = f.allocator.empty();
  if (!f.allocator.empty()) {
    ASSIGN_OR_RETURN(o.kv.allocator.kind, ParseAllocator(f.allocator));
  }
  o.kv.allocator.floor_by_default = std::isnan(f.floor);
  o.kv.allocator.floor = std::isnan(f.floor) ? DefaultFloor(o.kv.allocator.kind) : f.floor;
  o.kv.allocator.cap = f.cap;
  ASSIGN_OR_RETURN(o.kv.allocator.per_head, ParsePerHead(f.per_head));
  if (!f.calibration.empty()) {
    ASSIGN_OR_RETURN(CalibrationWeights w, LoadWeightsForModel(f.calibration, f.model));
    o.kv.allocator.layer_weights = std::move(w.layers);
    o.kv.allocator.head_weights = std::move(w.heads);
  }
  if (f.budget_fraction > 0) {
    o.kv.target = {KvTarget::Kind::kFraction, f.budget_fraction};
  } else {
    o.kv.target = {KvTarget::Kind::kRetention, f.retention};
  }
  ResolveDefaultAllocator(o.kv);
  RETURN_IF_ERROR(ValidateWindow(f.window, "--window"));
  o.window = static_cast<int>(f.window);
  o.block_tokens = static_cast<int>(f.block_tokens);
  o.kv_capacity_blocks = f.kv_blocks;
  absl::StatusOr<KvAdmission> admission = ParseKvAdmission(f.kv_admission);
  if (!admission.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--kv-admission: ", admission.status().message()));
  }
  o.scheduler.kv_admission = *admission;
  o.scheduler.max_running = f.max_batch;
  o.scheduler.max_queue = f.max_queue;
  ASSIGN_OR_RETURN(o.scheduler.step_token_budget,
                   MaxBatchedTokensFromFlags(f, gpu_stages, workers));
  o.scheduler.prefill_chunk =
      f.prefill_chunk != 0 ? f.prefill_chunk : o.scheduler.step_token_budget;
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
  ASSIGN_OR_RETURN(o.admin.token, ReadSecret(f.admin_token, "XKV_ADMIN_TOKEN", f.admin_token_file,
                                             "--admin-token-file"));
  return o;
}

absl::StatusOr<HttpApiOptions> HttpApiOptionsFromFlags(const ServeFlags& f) {
  if (f.http_max_body_bytes < 1) {
    return absl::InvalidArgumentError("--http-max-body-bytes must be >= 1");
  }
  if (f.http_max_concurrent < 1 || f.http_max_concurrent > 4096) {
    return absl::InvalidArgumentError("--http-max-concurrent must be in [1, 4096]");
  }
  HttpApiOptions o;
  o.routes.max_concurrent = static_cast<int>(f.http_max_concurrent);
  o.routes.model_name = f.served_model_name;
  if (o.routes.model_name.empty()) {
    o.routes.model_name = std::filesystem::path(f.model).filename().string();
    if (absl::EndsWith(o.routes.model_name, ".gguf")) {
      o.routes.model_name.resize(o.routes.model_name.size() - 5);
    }
  }
  ASSIGN_OR_RETURN(o.routes.api_key,
                   ReadSecret("", "XKV_API_KEY", f.api_key_file, "--api-key-file"));
  if (o.routes.api_key.empty() && !f.api_key_file.empty()) {
    return absl::InvalidArgumentError("--api-key-file " + f.api_key_file + " is empty");
  }
  o.server.listen = f.http_listen;
  o.server.max_body_bytes = static_cast<size_t>(f.http_max_body_bytes);
  o.server.threads = o.routes.max_concurrent + 8;  // streams hold a thread; probes get the rest
  return o;
}

}  // namespace xkv
