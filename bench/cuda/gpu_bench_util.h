// Helpers of the `xkv bench gpu` sections: building the random Llama-3-8B-shaped engine, chunked
// prefills through Forward (device only) or RunLayers (the StageEngine path, with importance
// scores), the XKV solve for a budget fraction, compaction of every layer, and wall clocks.
#ifndef XKV_BENCH_CUDA_GPU_BENCH_UTIL_H_
#define XKV_BENCH_CUDA_GPU_BENCH_UTIL_H_

#include <chrono>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "bench/gpu_bench.h"
#include "kernels/cpu/importance.h"
#include "model/cuda/cuda_llama_model.h"
#include "model/importance_collector.h"

namespace xkv {

using BenchClock = std::chrono::steady_clock;

double MsSince(BenchClock::time_point t0);
double Median(std::vector<double> values);

// The Llama-3-8B-shaped model with random weights, its pool sized by options.kv_memory_fraction.
absl::StatusOr<std::unique_ptr<CudaLlamaModel>> MakeRandomLlama3(const GpuBenchOptions& options,
                                                                 int64_t max_seq_len,
                                                                 int max_batch);

// Prefill of `tokens` as sequence `id` through Forward in chunks of at most `chunk` tokens.
// next_token (optional): the greedy token after the prompt.
absl::Status PrefillForward(CudaLlamaModel& model, uint64_t id, absl::Span<const int32_t> tokens,
                            int64_t chunk, int32_t* next_token = nullptr);

// Prefill through Embed + RunLayers (host hidden rows, as a pipeline stage runs it) in chunks of
// at most `chunk` tokens; the last chunk holds >= window tokens. observe: score the last chunk
// (scores and scoring ms into *observation). scores_only: the last chunk is a mini-prefill (its
// KV is not kept).
struct LayersPrefill {
  bool observe = false;
  bool scores_only = false;
  ImportanceOptions importance;
};
absl::Status PrefillLayers(CudaLlamaModel& model, uint64_t id, absl::Span<const int32_t> tokens,
                           int64_t chunk, const LayersPrefill& how,
                           EngineObservation* observation = nullptr);

// XKV budgets for `fraction` of the L x P evictable prefix tokens and every layer's kept slots.
struct XkvKeep {
  std::vector<std::vector<std::vector<int32_t>>> kept;  // [layer][kv_head] slots
  int64_t kept_tokens = 0;                              // sum_l (b_l + w)
  double retention = 0;                                 // sum_l R_l(b_l) / L
  double solve_ms = 0;                                  // SolveBudgets (profiles + solver)
  double select_ms = 0;                                 // KeptSlots of every layer
};
absl::StatusOr<XkvKeep> SolveXkv(const CollectedScores& scores, const ModelConfig& config,
                                 double fraction);

// CompactLayer of every layer of `id` (a prompt of prompt_len tokens) to keep.kept.
absl::Status CompactAll(CudaLlamaModel& model, uint64_t id, int64_t prompt_len,
                        const XkvKeep& keep);

// Blocks of the pool in use.
inline int64_t UsedBlocks(const CudaLlamaModel& model) {
  return model.num_kv_blocks() - model.free_kv_blocks();
}

}  // namespace xkv

#endif  // XKV_BENCH_CUDA_GPU_BENCH_UTIL_H_
