// `xkv bench cpu`: prefill and decode speed of the CPU engine on a real GGUF, side by side with
// llama.cpp (llama-cpp-python, same file, same thread count) measured in the same run.
#ifndef XKV_BENCH_CPU_BENCH_H_
#define XKV_BENCH_CPU_BENCH_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace xkv {

struct CpuBenchOptions {
  std::string model_path;
  int threads = 0;  // <= 0: all hardware threads
  std::vector<int64_t> prefill_lengths = {512, 2048};
  int64_t decode_context = 2048;
  int64_t decode_tokens = 32;
  int repeats = 2;     // best of
  std::string python;  // venv python with llama_cpp; empty: skip llama.cpp
  std::string llama_script = "bench/llama_cpp_speed.py";
};

struct CpuBenchRow {
  std::string what;      // "prefill" or "decode"
  int64_t tokens = 0;    // prompt tokens (prefill) or context (decode)
  double xkv_tps = 0;    // tokens per second, best of repeats
  double llama_tps = 0;  // 0 when llama.cpp was not measured
};

// Token ids of the benchmark prompts: a fixed LCG sequence shared with llama_cpp_speed.py.
std::vector<int32_t> BenchTokens(int64_t n, int32_t vocab);

absl::StatusOr<std::vector<CpuBenchRow>> RunCpuBench(const CpuBenchOptions& options);

// A Markdown table of the rows with the machine description and date.
std::string FormatCpuBench(const CpuBenchOptions& options, const std::vector<CpuBenchRow>& rows);

}  // namespace xkv

#endif  // XKV_BENCH_CPU_BENCH_H_
