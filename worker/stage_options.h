// What one pipeline stage is asked to be: its layer range, device, numerics, KV pool and scoring
// (StageOptions, the engine-side settings a LoadStage request and the worker process give), read
// from a LoadStage request with every field bounded, and the stage pool's size in blocks.
#ifndef XKV_WORKER_STAGE_OPTIONS_H_
#define XKV_WORKER_STAGE_OPTIONS_H_

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "kernels/cpu/importance.h"
#include "model/gpu_memory_budget.h"
#include "model/llama_model.h"
#include "worker/worker_limits.h"
#include "xkv/v1/worker.pb.h"

namespace xkv {

inline constexpr int64_t kDefaultBlocksPerLayer = 4096;

struct StageOptions {
  std::string model_path;  // GGUF (Load only)
  int layer_begin = 0;
  int layer_end = -1;  // exclusive; -1 = n_layers
  int stage_index = 0;
  std::string device = "cpu";  // "cpu" or "cuda:N" (needs a CUDA build; block_tokens 16)
  int num_threads = 1;
  // kGgml: the same numerics as `xkv generate` (and llama.cpp) on a GGUF; kExact for fp32 tests.
  Numerics numerics = Numerics::kGgml;
  int block_tokens = 16;
  // The stage's ONE KV pool, shared by all its layers, in blocks of one layer's block_tokens
  // tokens; the first that is set: the sum of layer_capacity_blocks, kv_capacity_blocks per layer
  // of the stage, kv_capacity_bytes / block bytes; none: kDefaultBlocksPerLayer per layer.
  std::vector<int64_t> layer_capacity_blocks;
  int64_t kv_capacity_blocks = 0;
  int64_t kv_capacity_bytes = 0;
  // Bound on the pool (all layers, bytes; 0: none): RESOURCE_EXHAUSTED for a larger capacity.
  int64_t max_kv_bytes = 0;
  // Bound on a step's new tokens (the sum of its sequences' n_new): a worker's --max-step-tokens;
  // in-process stages take the coordinator's steps as they come.
  int64_t max_step_tokens = std::numeric_limits<int64_t>::max();
  ImportanceOptions importance;
  absl::Duration link_timeout = absl::Seconds(30);  // default wait for the previous stage
  // GPU stages (model/gpu_memory_budget.h): tokens of one step, all sequences together (the step
  // scratch; 0: the model's context length + 256), and the fraction of the device's free memory
  // the stage may use (its KV pool gets what weights and scratch leave, unless a capacity above
  // is set), of which `gpu_memory_share` (stages sharing one device in one process).
  int64_t max_batched_tokens = 0;
  double gpu_memory_utilization = kDefaultGpuMemoryUtilization;
  double gpu_memory_share = 1.0;
  // Last stage on a GPU: sample on the device (only token ids come back). Off: the logits come
  // to the host and the CPU Sampler picks (tests compare the two).
  bool device_sampling = true;
  // One block table per (layer, KV head) when the engine supports per-head counts
  // (StageEngine::supports_per_head_kv): the pool then counts blocks of one head's K and V
  // (architecture.md §5), and the stage takes per-(layer, KV head) budgets.
  bool per_head_tables = false;
  // Async decode (a stage that is both first and last): after a pure-decode step whose sequences
  // all sampled, the stage queues the same sequences' next decode step (the sampled tokens,
  // positions + 1) on the engine before it answers, and adopts it when the coordinator's next step
  // is exactly that one; any other call undoes it first (StageExecutor::Ahead). Tokens are the
  // same either way; on a GPU the host's work between steps overlaps the device's.
  bool lookahead = false;
};

// The stage's options (model_path, range, capacity, importance, timeouts), every field bounded
// (block_tokens <= kMaxBlockTokens, capacities >= 0, link_timeout_ms <= kMaxLinkTimeout, ...).
// device and threads come from the worker process; request.device, when set, must be the
// worker's device. model_path is taken as it is (`xkv serve`, in-process).
absl::StatusOr<StageOptions> StageOptionsFromRequest(const xkv::v1::LoadStageRequest& request,
                                                     const std::string& device, int num_threads);

// For a LoadStage that came over the network: model_path must lie inside limits.model_dir
// (ResolveModelPath; replaced by its canonical path), the KV pool within limits.max_kv_bytes
// (0: the host's memory; CheckStageKvPool) and a step within limits.max_step_tokens -- all
// before the worker drops its current stage.
absl::Status ApplyWorkerLimits(const WorkerLimits& limits, StageOptions* options);

// The stage pool's blocks for `options` (StageOptions' capacity fields): INVALID_ARGUMENT for a
// negative one, RESOURCE_EXHAUSTED when they exceed options.max_kv_bytes.
absl::StatusOr<int64_t> KvPoolCapacity(const StageOptions& options, int num_layers,
                                       int64_t block_bytes);

}  // namespace xkv

#endif  // XKV_WORKER_STAGE_OPTIONS_H_
