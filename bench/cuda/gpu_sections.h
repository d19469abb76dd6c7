// The measuring sections of `xkv bench gpu` (bench/gpu_bench.h lists them). Each appends its
// results to the report and returns its first error; RunGpuBench records the error and goes on.
#ifndef XKV_BENCH_CUDA_GPU_SECTIONS_H_
#define XKV_BENCH_CUDA_GPU_SECTIONS_H_

#include "absl/status/status.h"
#include "bench/gpu_bench.h"
#include "model/cuda/cuda_llama_model.h"

namespace xkv {

// On the random Llama-3-8B-shaped model (max_seq_len >= context + decode steps, max_batch >= the
// largest decode batch, every sequence released before returning).
absl::Status RunDecodeSection(CudaLlamaModel& model, const GpuBenchOptions& options,
                              GpuBenchReport& report);
absl::Status RunPrefillSection(CudaLlamaModel& model, const GpuBenchOptions& options,
                               GpuBenchReport& report);
// per_request / one_pass / sampled:0.1 at options.prefill_tokens.
absl::Status RunProfileSection(CudaLlamaModel& model, const GpuBenchOptions& options,
                               GpuBenchReport& report);
// Builds its own model with max_seq_len = options.long_context (call with no other model alive).
absl::Status RunConcurrencySection(const GpuBenchOptions& options, GpuBenchReport& report);
// The GGUF at options.model_path, then Hugging Face transformers when options.hf_python is set.
absl::Status RunRealModelSection(const GpuBenchOptions& options, GpuBenchReport& report);
// Batched decode of the GGUF at options.model_path (its own engine, sized for the batches).
absl::Status RunBatchedDecodeSection(const GpuBenchOptions& options, GpuBenchReport& report);

}  // namespace xkv

#endif  // XKV_BENCH_CUDA_GPU_SECTIONS_H_
