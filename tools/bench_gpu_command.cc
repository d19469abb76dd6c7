// `xkv bench gpu`: model-level GPU benchmarks against the ceilings measured on the same GPU
// (bench/gpu_bench.h). Measures only in CUDA builds; a CPU-only xkv says so and exits 1.
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "bench/gpu_bench.h"
#include "model/model_shapes.h"
#include "tools/flag_set.h"

namespace xkv {
namespace {

// INVALID_ARGUMENT for a name not in kGpuBenchSections.
absl::Status ParseSections(const std::string& text, std::vector<std::string>* out) {
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    bool known = false;
    for (const char* s : kGpuBenchSections) known = known || part == s;
    if (!known) {
      return absl::InvalidArgumentError(
          "unknown section '" + std::string(part) +
          "' (ceilings, decode, prefill, profile, concurrency, real, batched)");
    }
    out->emplace_back(part);
  }
  return absl::OkStatus();
}

// "8,32": batch sizes in 1..kMaxBatch.
absl::Status ParseBatches(const std::string& text, std::vector<int64_t>* out) {
  constexpr int64_t kMaxBatch = 1024;
  out->clear();
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    int64_t b = 0;
    if (!absl::SimpleAtoi(part, &b) || b < 1 || b > kMaxBatch) {
      return absl::InvalidArgumentError(
          absl::StrCat("--batch '", part, "': sequences per step, 1..", kMaxBatch));
    }
    out->push_back(b);
  }
  if (out->empty()) return absl::InvalidArgumentError("--batch: at least one batch size");
  return absl::OkStatus();
}

#if defined(XKV_WITH_CUDA)
absl::Status WriteFile(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << text;
  f.close();
  if (!f) return absl::UnavailableError("could not write " + path);
  return absl::OkStatus();
}
#endif

// Runs the benchmark, prints the Markdown, writes the JSON. Exit code 1 when any section failed.
int RunAndPrint(const GpuBenchOptions& o, const std::string& json) {
#if defined(XKV_WITH_CUDA)
  absl::StatusOr<GpuBenchReport> report = RunGpuBench(o);
  if (!report.ok()) {
    std::fprintf(stderr, "xkv bench gpu: %s\n", std::string(report.status().message()).c_str());
    return 1;
  }
  std::fputs(FormatGpuBench(o, *report).c_str(), stdout);
  if (!json.empty()) {
    if (absl::Status s = WriteFile(json, GpuBenchJson(*report)); !s.ok()) {
      std::fprintf(stderr, "xkv bench gpu: %s\n", std::string(s.message()).c_str());
      return 1;
    }
  }
  return report->errors.empty() ? 0 : 1;
#else
  (void)o;
  (void)json;
  std::fputs(
      "xkv bench gpu: needs a CUDA build; this xkv was built without CUDA (configure on a "
      "machine with nvcc, without -DXKV_CPU_ONLY=ON)\n",
      stderr);
  return 1;
#endif
}

}  // namespace

int RunBenchGpu(int argc, char** argv) {
  GpuBenchOptions o;
  std::string json, sections, batches = "8,32";
  bool quick = false, batched_decode = false;
  int64_t prompt_tokens = o.batched_prompt_tokens, gen_tokens = o.batched_gen_tokens;
  int64_t device = 0;
  FlagSet flags(
      "bench gpu",
      "Model-level GPU benchmarks against the limits measured on the same GPU: copy bandwidth and\n"
      "cuBLAS GEMM rate; a random model of a real shape (--shape, default Llama-3-8B): decode at\n"
      "batch 1/8/32 with 8K context vs the bytes-moved floor, 8K prefill vs the FLOP floor,\n"
      "concurrent 32K sequences with a full cache vs XKV, profile-mode cost; the real GGUF's\n"
      "decode tokens/s next to Hugging Face transformers; --batched-decode: the real GGUF's pure\n"
      "batched decode (llama-batched-bench's S_TG). Markdown on stdout; --json writes the "
      "figures.");
  flags.String("model", &o.model_path, "real GGUF model for the decode comparison (empty: skip)");
  flags.String("json", &json, "also write the results as JSON here");
  flags.Bool("quick", &quick, "smoke run: small contexts, batches and steps");
  flags.String("hf-python", &o.hf_python,
               "python with torch + transformers (+ gguf) for the comparison (empty: skip)");
  flags.String("hf-script", &o.hf_script, "path of bench/hf_decode_speed.py");
  flags.String(
      "sections", &sections,
      "comma-separated subset of ceilings,decode,prefill,profile,concurrency,real,batched");
  flags.Int("device", &device, "CUDA device ordinal");
  flags.Bool("batched-decode", &batched_decode,
             "only the batched section (llama-batched-bench -npp -ntg -npl) on --model");
  flags.Int("prompt-tokens", &prompt_tokens, "batched: prompt tokens per sequence");
  flags.Int("gen-tokens", &gen_tokens, "batched: decode steps (tokens per sequence)");
  flags.String("batch", &batches, "batched: comma-separated sequences per step");
  flags.String("shape", &o.shape, "random-weight model shape: llama3-8b or llama3.2-1b");
  flags.Double("budget", &o.budget_fraction, "XKV budget, fraction of the evictable prefix");
  flags.Double("verify-seconds", &o.verify_seconds, "time box for filling the KV pool");
  flags.Double("kv-memory-fraction", &o.kv_memory_fraction,
               "share of the free device memory given to the KV pool");
  if (auto code = flags.ParseOrExitCode(argc, argv, 3)) return *code;
  if (absl::StatusOr<ModelConfig> shape = ShapeByName(o.shape); !shape.ok()) {
    std::fprintf(stderr, "xkv bench gpu: %s\n", std::string(shape.status().message()).c_str());
    return 2;
  }
  if (absl::Status s = ParseSections(sections, &o.sections); !s.ok()) {
    std::fprintf(stderr, "xkv bench gpu: %s\n", std::string(s.message()).c_str());
    return 2;
  }
  if (o.budget_fraction <= 0 || o.budget_fraction > 1 || o.kv_memory_fraction <= 0 ||
      o.kv_memory_fraction > 1 || device < 0) {
    std::fprintf(stderr, "xkv bench gpu: --budget and --kv-memory-fraction must be in (0, 1]\n");
    return 2;
  }
  if (batched_decode) o.sections = {"batched"};
  if (SectionEnabled(o, "batched") && o.sections.size() == 1 && o.model_path.empty()) {
    std::fprintf(stderr, "xkv bench gpu: --batched-decode needs --model (a GGUF)\n");
    return 2;
  }
  o.device = static_cast<int>(device);
  if (quick) ApplyQuick(o);
  // Explicit batched sizes win over --quick's.
  if (!quick || flags.WasSet("prompt-tokens")) o.batched_prompt_tokens = prompt_tokens;
  if (!quick || flags.WasSet("gen-tokens")) o.batched_gen_tokens = gen_tokens;
  if (!quick || flags.WasSet("batch")) {
    if (absl::Status s = ParseBatches(batches, &o.batched_batches); !s.ok()) {
      std::fprintf(stderr, "xkv bench gpu: %s\n", std::string(s.message()).c_str());
      return 2;
    }
  }
  constexpr int64_t kMaxTokens = 1 << 20;
  if (o.batched_prompt_tokens < 1 || o.batched_prompt_tokens > kMaxTokens ||
      o.batched_gen_tokens < 1 || o.batched_gen_tokens > kMaxTokens) {
    std::fprintf(stderr, "xkv bench gpu: --prompt-tokens and --gen-tokens must be in 1..%lld\n",
                 static_cast<long long>(kMaxTokens));
    return 2;
  }
  return RunAndPrint(o, json);
}

}  // namespace xkv
