// Flags shared by `xkv serve` and `xkv coordinator`: listeners, admin auth, KV policy, batching,
// the HTTP API.
#ifndef XKV_TOOLS_SERVE_FLAGS_H_
#define XKV_TOOLS_SERVE_FLAGS_H_

#include <cstdint>
#include <limits>
#include <string>

#include "absl/status/statusor.h"
#include "coordinator/coordinator.h"
#include "coordinator/coordinator_server.h"
#include "coordinator/stage_probe.h"
#include "http/http_server.h"
#include "http/openai_routes.h"
#include "tools/flag_set.h"

namespace xkv {

// A step's tokens when --max-batched-tokens is not given: 8192 on GPU stages (vLLM's and
// TensorRT-LLM's default on 80 GB GPUs; it holds a 2048-token re-reading chunk, kGpuRereadChunk,
// with its repeat instruction, and sizes the step scratch: 0.3 GiB for SmolLM2), 512 on CPU ones
// (where a step's tokens cost milliseconds each and decodes wait behind them).
inline constexpr int64_t kCpuMaxBatchedTokens = 512, kGpuMaxBatchedTokens = 8192;
inline int64_t DefaultMaxBatchedTokens(bool gpu_stages) {
  return gpu_stages ? kGpuMaxBatchedTokens : kCpuMaxBatchedTokens;
}

struct ServeFlags {
  std::string model = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
  std::string chat_template;  // empty: the GGUF's tokenizer.chat_template
  std::string listen = "127.0.0.1:50051";
  std::string admin_listen = "127.0.0.1:50052";
  std::string admin_token;
  std::string admin_token_file;
  bool admin_insecure_local = false;
  std::string policy = "xkv";
  double retention = 0.9;
  double budget_fraction = 0;
  std::string profile = "auto";   // one_pass (ProfileModeFromFlags)
  int64_t reconstruct_chunk = 0;  // 0: DefaultRereadChunk of the stages' device
  std::string allocator;          // empty: DefaultAllocator (allocator/kv_spec.h)
  // NaN (not given; the flag parser refuses a NaN): the allocator's default (DefaultFloor).
  double floor = std::numeric_limits<double>::quiet_NaN();
  double cap = AllocatorParams{}.cap;
  std::string per_head = "0";  // per-(layer, KV head) budgets: 1|true|0|false
  std::string calibration;     // per-layer weights for --model (model/layer_calibration.h)
  int64_t window = 8;
  int64_t block_tokens = 16;
  int64_t kv_blocks = 0;
  std::string kv_admission = "max_utilization";
  int64_t max_batch = 16;
  int64_t max_queue = 256;
  int64_t max_batched_tokens = 0;  // 0: DefaultMaxBatchedTokens of the stages' device
  int64_t step_tokens = 0;         // the old name of --max-batched-tokens (0: not given)
  int64_t prefill_chunk = 0;       // 0: the step's whole budget (--max-batched-tokens)
  int64_t micro_batches = 0;       // 0: one per pipeline stage
  int64_t default_max_tokens = 256;
  int64_t concurrency = 8;
  bool auto_replan = false;
  std::string metrics_listen;  // empty: no /metrics endpoint
  std::string http_listen;     // empty: no HTTP API
  std::string api_key_file;
  std::string served_model_name;  // empty: the model file's stem
  int64_t http_max_body_bytes = 1 << 20;
  int64_t http_max_concurrent = 32;
  int64_t log_step_timing = 0;  // 0: off
};

// The HTTP API's listener and routes.
struct HttpApiOptions {
  HttpServerOptions server;
  OpenAiRoutesOptions routes;
};

void RegisterServeFlags(FlagSet& flags, ServeFlags* f);
// Options from the flags. num_stages: the pipeline's stages; gpu_stages: some stage runs on a GPU
// (AnyGpuDevice). On GPUs --micro-batches 0 means one per stage and --reconstruct-chunk 0
// kGpuRereadChunk; on CPUs one step at a time (a CPU stage's threads gain nothing from a second
// step in flight) and kCpuRereadChunk. workers: what `xkv coordinator`'s workers reported
// (MaxBatchedTokensFromFlags); empty for in-process stages.
absl::StatusOr<CoordinatorOptions> CoordinatorOptionsFromFlags(const ServeFlags& f,
                                                               int64_t num_stages, bool gpu_stages,
                                                               const StageProbe& workers = {});
// --max-batched-tokens, or its old name --step-tokens (both given and different: an error);
// neither (or 0): DefaultMaxBatchedTokens(gpu_stages), cut to the smallest step limit the
// workers reported (their --max-batched-tokens); a given value above that limit is
// INVALID_ARGUMENT naming the worker and the limit.
absl::StatusOr<int64_t> MaxBatchedTokensFromFlags(const ServeFlags& f, bool gpu_stages,
                                                  const StageProbe& workers = {});
// --profile, "one_pass" for auto: the same budgets and tokens as per_request (its scores-only
// pass sees the same queries and keys as one_pass's observed prefill) without a second prefill of
// every prompt; on the CPU per_request served 0.6x the requests per second of one_pass
// (docs/benchmarks-serving.md).
std::string ProfileModeFromFlags(const ServeFlags& f);
// The admin token from --admin-token, $XKV_ADMIN_TOKEN or --admin-token-file (in that order).
absl::StatusOr<CoordinatorServerOptions> ServerOptionsFromFlags(const ServeFlags& f);
// The API key from $XKV_API_KEY or --api-key-file (in that order); the limits, the model id.
absl::StatusOr<HttpApiOptions> HttpApiOptionsFromFlags(const ServeFlags& f);

}  // namespace xkv

#endif  // XKV_TOOLS_SERVE_FLAGS_H_
