// `xkv bench <what>`: benchmarks. `cpu` compares the CPU engine against llama.cpp; `gpu` (in
// tools/bench_gpu_command.cc) measures the GPU engine against the GPU's limits.
#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "bench/cpu_bench.h"
#include "bench/machine_info.h"
#include "tools/commands.h"
#include "tools/flag_set.h"

namespace xkv {
namespace {

constexpr char kBenchUsage[] =
    "usage: xkv bench <what> [flags]\n\n"
    "  cpu    prefill and decode tokens/s of the CPU engine next to llama.cpp\n"
    "  gpu    GPU engine vs the GPU's measured limits; real model next to transformers\n"
    "  serve  closed-loop serving load (TTFT, TPOT, ITL, throughput, KV) against --server\n"
    "  model  write a random-weight GGUF of a real model's shape (e.g. Llama-3-8B)\n\n"
    "`xkv bench <what> --help` lists its flags.\n";

int RunBenchCpu(int argc, char** argv) {
  CpuBenchOptions o;
  o.model_path = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
  o.python = VenvPython();
  std::string lengths = "512,2048";
  int64_t threads = 0, context = o.decode_context, steps = o.decode_tokens, repeats = o.repeats;
  bool no_llama = false;
  FlagSet flags(
      "bench cpu",
      "Prefill tokens/s at each --prefill length and decode tokens/s at --decode-context,\n"
      "for xkv and for llama.cpp (llama-cpp-python, same GGUF, same threads), as a "
      "Markdown table.");
  flags.String("model", &o.model_path, "GGUF model file");
  flags.Int("threads", &threads, "CPU threads for both engines; 0 uses every hardware thread");
  flags.String("prefill", &lengths, "comma-separated prompt lengths");
  flags.Int("decode-context", &context, "context length before the decode steps");
  flags.Int("decode-tokens", &steps, "decode steps timed");
  flags.Int("repeats", &repeats, "runs per measurement; the best is reported");
  flags.String("python", &o.python, "python with llama_cpp (the scripts venv)");
  flags.String("llama-script", &o.llama_script, "path of bench/llama_cpp_speed.py");
  flags.Bool("no-llama", &no_llama, "measure xkv only");
  if (auto code = flags.ParseOrExitCode(argc, argv, 3)) return *code;
  o.prefill_lengths.clear();
  for (absl::string_view part : absl::StrSplit(lengths, ',', absl::SkipEmpty())) {
    int64_t n;
    if (!absl::SimpleAtoi(part, &n) || n < 1) {
      std::fprintf(stderr, "xkv bench cpu: bad --prefill length '%s'\n", std::string(part).c_str());
      return 2;
    }
    o.prefill_lengths.push_back(n);
  }
  if (context < 1 || steps < 1 || repeats < 1) {
    std::fprintf(stderr,
                 "xkv bench cpu: --decode-context, --decode-tokens, --repeats must be >= 1\n");
    return 2;
  }
  o.threads = static_cast<int>(threads);
  o.decode_context = context;
  o.decode_tokens = steps;
  o.repeats = static_cast<int>(repeats);
  if (no_llama) o.python.clear();
  absl::StatusOr<std::vector<CpuBenchRow>> rows = RunCpuBench(o);
  if (!rows.ok()) {
    std::fprintf(stderr, "xkv bench cpu: %s\n", std::string(rows.status().message()).c_str());
    return 1;
  }
  std::fputs(FormatCpuBench(o, *rows).c_str(), stdout);
  return 0;
}

}  // namespace

int RunBenchServe(int argc, char** argv);  // tools/bench_serve_command.cc
int RunBenchGpu(int argc, char** argv);    // tools/bench_gpu_command.cc
int RunBenchModel(int argc, char** argv);  // tools/bench_model_command.cc

int RunBench(int argc, char** argv) {
  const std::string what = argc > 2 ? argv[2] : "";
  if (what == "cpu") return RunBenchCpu(argc, argv);
  if (what == "serve") return RunBenchServe(argc, argv);
  if (what == "gpu") return RunBenchGpu(argc, argv);
  if (what == "model") return RunBenchModel(argc, argv);
  const bool help = what == "--help" || what == "-h";
  std::fputs(kBenchUsage, help ? stdout : stderr);
  return help ? 0 : 2;
}

}  // namespace xkv
