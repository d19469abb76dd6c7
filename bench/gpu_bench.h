// `xkv bench gpu` (issue 5, item 5): model-level GPU benchmarks against the limits measured on the
// same GPU in the same run.
//   1. ceilings: device-to-device copy bandwidth (bytes read + written), cuBLAS bf16 GEMM rate;
//   2. Llama-3-8B shape, random bf16 weights: decode step time at batch 1/8/32 with an 8K context
//      against the bytes-moved floor;
//   3. prefill of 8K tokens against the FLOP floor (share of the measured GEMM rate);
//   4. concurrent 32K-token sequences that fit: full cache vs XKV at a fixed budget fraction
//      (measured on a real prefill + compaction, then checked by filling the pool);
//   5. profiling + solving time as % of prefill time per profile mode;
//   6. the real model (GGUF): decode tokens/s of xkv next to Hugging Face transformers (same GPU,
//      same file, same prompt ids, bf16), run one after the other in the same command;
//   7. the real model's pure batched decode (section "batched", --batched-decode): B sequences
//      prefilled, then B-wide decode steps; tokens/s of the decode phase as llama.cpp's
//      llama-batched-bench reports it (S_TG), with S_PP and S beside it.
//
// The report types, the floors and the formatting here are plain C++ (xkv_bench, every build);
// the measuring code is CUDA-only (bench/cuda/, library xkv_bench_cuda): RunGpuBench exists only
// in CUDA builds (XKV_WITH_CUDA).
#ifndef XKV_BENCH_GPU_BENCH_H_
#define XKV_BENCH_GPU_BENCH_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/model_config.h"

namespace xkv {

struct GpuBenchOptions {
  int device = 0;
  bool quick = false;  // smoke run: small sizes (ApplyQuick)
  // Sections to run (names as kGpuBenchSections); empty: every section.
  std::vector<std::string> sections;
  std::string shape = "llama3-8b";  // random-weight model (model/model_shapes.h ShapeByName)
  int64_t context = 8192;           // decode context
  std::vector<int64_t> decode_batches = {1, 8, 32};
  int64_t decode_steps = 32;         // timed decode steps per batch size
  int64_t prefill_tokens = 8192;     // one sequence
  int64_t step_tokens = 8192;        // engine max_step_tokens (prefill chunk)
  int64_t long_context = 32768;      // concurrency section
  double budget_fraction = 0.25;     // XKV budget, of the evictable prefix
  double verify_seconds = 150;       // time box for filling the pool
  double kv_memory_fraction = 0.95;  // of the free memory after weights + scratch
  // Real model.
  std::string model_path;  // GGUF; empty: skip
  int64_t real_prompt_tokens = 32;
  int64_t real_decode_tokens = 128;
  int repeats = 3;        // real-model runs; the median is reported
  std::string hf_python;  // python with torch + transformers (+ gguf); empty: skip HF
  std::string hf_script = "bench/hf_decode_speed.py";
  // Batched decode of the real model (section "batched").
  int64_t batched_prompt_tokens = 2048;
  int64_t batched_gen_tokens = 128;
  std::vector<int64_t> batched_batches = {8, 32};
};

// Section names, in run order.
inline constexpr const char* kGpuBenchSections[] = {"ceilings",    "decode", "prefill", "profile",
                                                    "concurrency", "real",   "batched"};

// Shrinks the sizes for a smoke run (the model shape stays what --shape says; only contexts,
// batches and steps shrink).
void ApplyQuick(GpuBenchOptions& options);
bool SectionEnabled(const GpuBenchOptions& options, const std::string& section);

struct GpuCeilings {
  double copy_gbs = 0;              // device-to-device copy, (read + write bytes) / time
  double copy_bytes = 0;            // bytes copied per timed copy
  double gemm_tflops = 0;           // cuBLAS bf16 in / bf16 out, fp32 accumulate, 8192^3
  double gemm_fp32_out_tflops = 0;  // the same with fp32 output (what the engine's GEMMs write)
  int64_t gemm_n = 8192;
};

// The engine's decode kernels at small batch (CudaEngineOptions), as the decode rows name them.
inline constexpr char kDefaultDecodeKernels[] = "GEMV+PDL";

struct DecodeRow {
  std::string kernels = kDefaultDecodeKernels;
  int64_t batch = 0;
  int64_t context = 0;  // tokens cached per sequence at the first timed step
  int64_t steps = 0;
  double step_ms = 0;  // median wall time of one Forward step (host work included)
  double mean_ms = 0;
  double weight_bytes = 0;  // weights read per step
  double kv_bytes = 0;      // K and V read per step (at the first timed step's context)
  double floor_ms = 0;      // (weight + kv bytes) / copy bandwidth
};

struct PrefillRow {
  int64_t tokens = 0;
  double ms = 0;  // median wall time of one Forward of the whole prompt
  double matmul_flops = 0;
  double attention_flops = 0;
  double floor_ms = 0;  // all FLOPs at the measured GEMM rate
};

struct ProfileRow {
  std::string mode;       // per_request | one_pass | sampled:0.1
  int64_t tokens = 0;     // prompt length
  double prefill_ms = 0;  // the plain prefill it is compared with
  double profile_ms = 0;  // mini-prefill wall (per_request) or scoring kernels (one_pass)
  double solve_ms = 0;    // budgets (profiles + solver) + kept-slot selection, host wall
  double percent = 0;     // (profile + solve) / prefill
  std::string note;
};

struct ConcurrencyResult {
  int64_t seq_len = 0;
  int64_t block_tokens = 16;
  int64_t block_bytes = 0;
  int64_t pool_blocks = 0;  // the engine's shared KV pool
  double budget_fraction = 0;
  int64_t full_blocks_per_seq = 0;
  int64_t xkv_blocks_per_seq = 0;  // held after the real prefill + compaction
  int64_t kept_tokens = 0;         // sum over layers of b_l + w
  double retention = 0;            // average retention of the solved budgets
  int64_t full_fit = 0;            // pool_blocks / full_blocks_per_seq
  int64_t xkv_fit = 0;             // pool_blocks / xkv_blocks_per_seq
  int64_t xkv_fit_transient = 0;   // with one full-size prefill in flight (one_pass peak)
  int64_t full_filled = -1;        // sequences actually placed (-1: not tried)
  int64_t xkv_filled = -1;
  std::string fill_note;
  double prefill_ms = 0;           // unobserved 32K prefill (RunLayers, host hidden)
  double observed_prefill_ms = 0;  // the same prompt observed
  double score_ms = 0;             // scoring kernels of the observed prefill
  double solve_ms = 0;
  double select_ms = 0;
  double compact_ms = 0;
  double per_request_ms = 0;  // chunked mini-prefill (0: not measured)
};

struct RealModelResult {
  std::string model;
  int64_t prompt_tokens = 0;
  int64_t decode_tokens = 0;
  double xkv_tps = 0;  // decode tokens/s, median of repeats
  double xkv_prefill_ms = 0;
  double hf_tps = 0;    // 0: not measured
  std::string hf_note;  // versions, or why HF was not measured
  int64_t agree = -1;   // greedy tokens equal to HF's (prefix length), -1: unknown
};

// One batch size of the batched section, named as llama-batched-bench's columns: PP = prompt
// tokens per sequence, TG = generated tokens per sequence, B = sequences.
struct BatchedDecodeRow {
  int64_t batch = 0;
  int64_t prompt_tokens = 0;
  int64_t gen_tokens = 0;
  double prefill_ms = 0;   // all B prompts (T_PP)
  double decode_ms = 0;    // gen_tokens B-wide steps (T_TG)
  double prefill_tps = 0;  // S_PP = B x PP / T_PP
  double decode_tps = 0;   // S_TG = B x TG / T_TG
  double total_tps = 0;    // S = B x (PP + TG) / (T_PP + T_TG)
  // The decode kernels: "default", or "cuBLAS" (B = 5..8 on cuBLAS instead of the tensor-core
  // GEMV, the A/B of model/cuda/cuda_llama_step.cc, timed right after the default's row).
  std::string kernels = "default";
};

struct GpuBenchReport {
  std::string date;    // UTC, YYYY-MM-DD
  std::string device;  // the GPU's name
  int sms = 0;
  double memory_gib = 0;
  std::string model_shape;  // "Llama-3-8B shape (...)"
  int64_t weight_bytes = 0;
  std::optional<GpuCeilings> ceilings;
  std::vector<DecodeRow> decode;
  std::vector<PrefillRow> prefill;
  std::vector<ProfileRow> profile;
  std::optional<ConcurrencyResult> concurrency;
  std::optional<RealModelResult> real;
  std::string batched_model;
  std::vector<BatchedDecodeRow> batched;
  std::vector<std::string> errors;  // "section: message" of sections that failed
};

// Bytes one decode step must read: every weight matrix and norm except the embedding table (only
// `batch` rows of it, counted), plus K and V of batch x context cached tokens in every layer
// (bf16).
double DecodeWeightBytes(const ModelConfig& c, int64_t batch);
double DecodeKvBytes(const ModelConfig& c, int64_t batch, int64_t context);
// FLOPs of a prefill of T tokens: 2 * (layer matrix parameters) * T, plus the head on the last
// token only (2 * hidden * vocab), and causal attention 2 matmuls x 2 FLOPs x T (T + 1) / 2
// visible pairs x heads x head_dim per layer.
double PrefillMatmulFlops(const ModelConfig& c, int64_t tokens);
double PrefillAttentionFlops(const ModelConfig& c, int64_t tokens);

// Markdown: one table per section, targets stated as met / missed.
std::string FormatGpuBench(const GpuBenchOptions& options, const GpuBenchReport& report);
// The same figures as JSON.
std::string GpuBenchJson(const GpuBenchReport& report);

// Runs the enabled sections (bench/cuda/gpu_bench_run.cc; CUDA builds only). A failing section is
// recorded in report.errors and the others still run; errors only when no device is usable.
absl::StatusOr<GpuBenchReport> RunGpuBench(const GpuBenchOptions& options);

}  // namespace xkv

#endif  // XKV_BENCH_GPU_BENCH_H_
