// Builds the compute engine of one stage from StageOptions: "cpu" → CpuStageEngine over the GGUF's
// layer range; "cuda:N" → CudaLlamaModel on GPU N (CUDA builds only; UNIMPLEMENTED elsewhere).
#ifndef XKV_WORKER_STAGE_ENGINE_FACTORY_H_
#define XKV_WORKER_STAGE_ENGINE_FACTORY_H_

#include <memory>

#include "absl/status/statusor.h"
#include "model/stage_engine.h"
#include "worker/stage_executor.h"

namespace xkv {

// Parses "cpu" (or empty) → -1 and "cuda:N" / "cuda" → N (0); INVALID_ARGUMENT otherwise.
absl::StatusOr<int> ParseStageDevice(const std::string& device);

absl::StatusOr<std::unique_ptr<StageEngine>> LoadStageEngine(const StageOptions& options);

// Before anything is loaded: the KV pool `options` asks for fits options.max_kv_bytes, from the
// model file's header (a CPU stage's fp32 K and V). OK for a CUDA stage, whose engine sizes its
// pool against the device's memory.
absl::Status CheckStageKvPool(const StageOptions& options);

}  // namespace xkv

#endif  // XKV_WORKER_STAGE_ENGINE_FACTORY_H_
