// `xkv bench gpu` batched section: the real model's pure batched decode, the quantity llama.cpp's
// llama-batched-bench reports as S_TG. For each batch size B: B sequences of the same prompt
// prefilled one after the other (S_PP), then gen_tokens decode steps that each advance all B
// sequences by one token (S_TG = B x gen_tokens / decode time), greedy on the device, the host
// round trip of every step included. Each batch size runs twice on fresh sequences; the second run
// is reported (the first captures the decode graph for that width).
#include <algorithm>
#include <cstdio>
#include <memory>
#include <vector>

#include "base/status_macros.h"
#include "bench/cpu_bench.h"
#include "bench/cuda/gpu_bench_util.h"
#include "bench/cuda/gpu_sections.h"
#include "kernels/cuda/gemv.cuh"
#include "kernels/cuda/paged_kv.cuh"
#include "model/gguf.h"
#include "model/model_config.h"

namespace xkv {
namespace {

// One prefill + decode of `batch` new sequences (ids first_id..first_id + batch - 1).
absl::StatusOr<BatchedDecodeRow> RunBatch(CudaLlamaModel& m, const GpuBenchOptions& o,
                                          int64_t batch, uint64_t first_id) {
  const std::vector<int32_t> prompt = BenchTokens(o.batched_prompt_tokens, m.config().vocab_size);
  BatchedDecodeRow row;
  row.batch = batch;
  row.prompt_tokens = o.batched_prompt_tokens;
  row.gen_tokens = o.batched_gen_tokens;
  std::vector<int32_t> cur(batch, 0);
  BenchClock::time_point t0 = BenchClock::now();
  for (int64_t i = 0; i < batch; ++i) {
    RETURN_IF_ERROR(PrefillForward(m, first_id + i, prompt, o.step_tokens, &cur[i]));
  }
  row.prefill_ms = MsSince(t0);
  std::vector<CudaTokenStep> steps(batch);
  std::vector<int32_t> next;
  t0 = BenchClock::now();
  for (int64_t s = 0; s < o.batched_gen_tokens; ++s) {
    for (int64_t i = 0; i < batch; ++i) steps[i] = {first_id + i, {&cur[i], 1}};
    RETURN_IF_ERROR(m.Forward(steps, &next));
    std::copy(next.begin(), next.end(), cur.begin());
  }
  row.decode_ms = MsSince(t0);
  row.prefill_tps = batch * o.batched_prompt_tokens / (row.prefill_ms * 1e-3);
  row.decode_tps = batch * o.batched_gen_tokens / (row.decode_ms * 1e-3);
  row.total_tps = batch * (o.batched_prompt_tokens + o.batched_gen_tokens) /
                  ((row.prefill_ms + row.decode_ms) * 1e-3);
  return row;
}

}  // namespace

absl::Status RunBatchedDecodeSection(const GpuBenchOptions& o, GpuBenchReport& report) {
  if (o.model_path.empty()) {
    return absl::InvalidArgumentError("the batched section needs --model (a GGUF)");
  }
  const int64_t max_b = *std::max_element(o.batched_batches.begin(), o.batched_batches.end());
  ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> file, GgufFile::Open(o.model_path));
  CudaEngineOptions e;
  e.device = o.device;
  e.max_batch = static_cast<int>(max_b);
  e.max_step_tokens = std::min(o.step_tokens, o.batched_prompt_tokens);
  e.max_seq_len = o.batched_prompt_tokens + o.batched_gen_tokens + 16;
  // The pool is shared by every layer: room for every layer of every sequence of the largest
  // batch, with one block of slack each.
  ASSIGN_OR_RETURN(const ModelConfig config, ReadModelConfig(*file));
  const int64_t blocks_per_layer =
      (e.max_seq_len + cuda::kKvBlockTokens - 1) / cuda::kKvBlockTokens + 1;
  e.num_kv_blocks = max_b * blocks_per_layer * config.n_layers;
  ASSIGN_OR_RETURN(std::unique_ptr<CudaLlamaModel> m, CudaLlamaModel::Load(*file, e));
  GpuBenchOptions run = o;
  run.step_tokens = e.max_step_tokens;
  uint64_t next_id = 1;
  // Two runs on fresh sequences, the second reported (the first captures the graphs).
  auto run_twice = [&](int64_t batch) -> absl::StatusOr<BatchedDecodeRow> {
    absl::StatusOr<BatchedDecodeRow> row;
    for (int pass = 0; pass < 2; ++pass) {
      row = RunBatch(*m, run, batch, next_id);
      for (int64_t i = 0; i < batch; ++i) m->ReleaseSequence(next_id + i);
      next_id += batch;
      RETURN_IF_ERROR(row.status());
    }
    return row;
  };
  for (int64_t batch : o.batched_batches) {
    ASSIGN_OR_RETURN(BatchedDecodeRow row, run_twice(batch));
    std::fprintf(stderr, "batched: B=%lld prefill %.1f ms, decode %.1f ms, S_TG %.0f tokens/s\n",
                 static_cast<long long>(batch), row.prefill_ms, row.decode_ms, row.decode_tps);
    report.batched.push_back(row);
    // Batches the tensor-core GEMV takes (5..8 rows) also on cuBLAS, right after: the same-GPU
    // A/B that set the default's rows (model/cuda/cuda_llama_step.cc).
    if (batch >= cuda::kGemvMmaMinRows && batch <= m->gemv_max_rows()) {
      m->SetDecodeKernels(false, false);
      absl::StatusOr<BatchedDecodeRow> cublas = run_twice(batch);
      m->SetDecodeKernels(true, true);
      RETURN_IF_ERROR(cublas.status());
      cublas->kernels = "cuBLAS";
      std::fprintf(stderr, "batched: B=%lld on cuBLAS: decode %.1f ms, S_TG %.0f tokens/s\n",
                   static_cast<long long>(batch), cublas->decode_ms, cublas->decode_tps);
      report.batched.push_back(*cublas);
    }
  }
  report.batched_model = o.model_path;
  return absl::OkStatus();
}

}  // namespace xkv
