// Builds the compute engine of one stage from StageOptions: "cpu" → CpuStageEngine over the GGUF's
// layer range; "cuda:N" → CudaLlamaModel on GPU N (CUDA builds only; UNIMPLEMENTED elsewhere).
#ifndef XKV_WORKER_STAGE_ENGINE_FACTORY_H_
#define XKV_WORKER_STAGE_ENGINE_FACTORY_H_

#include <memory>

#include "absl/status/statusor.h"
#include "model/stage_engine.h"
#include "worker/stage_options.h"

namespace xkv {

// Parses "cpu" (or empty) → -1 and "cuda:N" / "cuda" → N (0); INVALID_ARGUMENT otherwise.
absl::StatusOr<int> ParseStageDevice(const std::string& device);

// A CUDA stage's engine is sized by options.max_batched_tokens (step scratch) and
// options.gpu_memory_utilization (its KV pool: what weights and scratch leave; a step above what
// the device holds is RESOURCE_EXHAUSTED with the limit) and reports its memory on stderr.
absl::StatusOr<std::unique_ptr<StageEngine>> LoadStageEngine(const StageOptions& options);

// `options` with the accounting capacity of an engine that sized its own pool (a GPU stage with
// no capacity asked for): every layer gets the pool's blocks, less one step's, over the layers.
// Otherwise `options` unchanged.
StageOptions StageOptionsForEngine(const StageOptions& options, const StageEngine& engine);

// Tokens of one step a stage's engine is sized for: options.max_batched_tokens, else the
// model's context length + 256 (the default before --max-batched-tokens).
int64_t StageMaxBatchedTokens(const StageOptions& options, int64_t context_length);

// Before anything is loaded: the KV pool `options` asks for fits options.max_kv_bytes, from the
// model file's header (a CPU stage's fp32 K and V). OK for a CUDA stage, whose engine sizes its
// pool against the device's memory.
absl::Status CheckStageKvPool(const StageOptions& options);

}  // namespace xkv

#endif  // XKV_WORKER_STAGE_ENGINE_FACTORY_H_
