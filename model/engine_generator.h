// Single-request generation over any StageEngine holding the whole model (CPU or CUDA): chunked
// prefill, optional XKV eviction right after the prompt, then sampling until EOS, a stop string or
// max_tokens. `xkv generate --device cuda:N` runs on it; on a CpuStageEngine it produces the same
// tokens as Generator (tests/unit/model/engine_generator_test.cc).
//
// Eviction (when `compress`): kOnePass observes the prompt's last chunk (>= w tokens) and compacts
// every layer after the prefill; kPerRequest first runs a scores-only mini-prefill of the whole
// prompt (the paper's two passes). Budgets and kept slots come from PlanAllocation.
#ifndef XKV_MODEL_ENGINE_GENERATOR_H_
#define XKV_MODEL_ENGINE_GENERATOR_H_

#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "allocator/kv_policy.h"
#include "allocator/kv_spec.h"
#include "model/generator.h"
#include "model/stage_engine.h"

namespace xkv {

struct EngineGeneratorOptions {
  std::function<std::string(int32_t)> token_bytes;  // required for stop strings and text
  std::vector<int32_t> eos_tokens;                  // empty: the config's eos_token
  int64_t prefill_chunk = 2048;                     // max prompt tokens per step
  bool compress = false;                            // XKV eviction after the prompt
  // Policy, target, allocator and profile mode: one_pass scores the real prefill's last chunk;
  // per_request (and sampled, which has no store here: every request is profiled) runs a
  // scores-only mini-prefill first.
  KvSettings kv;
  ImportanceOptions importance;  // window, pool kernel; reduction and pooling: ScoringFor(kv, ·)
};

// The engine must hold every layer (embedding and lm_head included). `id` names the sequence in
// the engine; it is released at the end. result.allocation is set when compress.
absl::StatusOr<GenerationResult> EngineGenerate(StageEngine& engine, uint64_t id,
                                                const GenerationRequest& request,
                                                const EngineGeneratorOptions& options,
                                                const TokenCallback& on_token = nullptr);

}  // namespace xkv

#endif  // XKV_MODEL_ENGINE_GENERATOR_H_
