#include "bench/cpu_bench.h"

#include <array>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <memory>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "base/status_macros.h"
#include "bench/machine_info.h"
#include "model/loaded_model.h"

namespace xkv {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// One prefill of `tokens` into a fresh cache; returns seconds.
absl::StatusOr<double> TimePrefill(LlamaModel& model, const std::vector<int32_t>& tokens,
                                   KvCache& cache) {
  BatchStep step;
  step.sequences.push_back({&cache, static_cast<int64_t>(tokens.size()), 0, false});
  const Clock::time_point t0 = Clock::now();
  RETURN_IF_ERROR(model.Forward(tokens, step).status());
  return Seconds(t0, Clock::now());
}

absl::StatusOr<double> BestPrefillTps(LlamaModel& model, int64_t n, int repeats) {
  const std::vector<int32_t> tokens = BenchTokens(n, model.config().vocab_size);
  double best = 0;
  for (int r = 0; r < repeats; ++r) {
    std::unique_ptr<KvCache> cache = model.NewCache();
    ASSIGN_OR_RETURN(double s, TimePrefill(model, tokens, *cache));
    best = std::max(best, n / s);
  }
  return best;
}

absl::StatusOr<double> BestDecodeTps(LlamaModel& model, int64_t context, int64_t steps,
                                     int repeats) {
  const std::vector<int32_t> tokens = BenchTokens(context, model.config().vocab_size);
  double best = 0;
  for (int r = 0; r < repeats; ++r) {
    std::unique_ptr<KvCache> cache = model.NewCache();
    RETURN_IF_ERROR(TimePrefill(model, tokens, *cache).status());
    const Clock::time_point t0 = Clock::now();
    for (int64_t i = 0; i < steps; ++i) {
      BatchStep step;
      step.sequences.push_back({cache.get(), 1, context + i, false});
      RETURN_IF_ERROR(model.Forward({&tokens[i], 1}, step).status());
    }
    best = std::max(best, steps / Seconds(t0, Clock::now()));
  }
  return best;
}

// Runs llama_cpp_speed.py and parses its "prefill N tps" / "decode N tps" lines.
absl::Status MeasureLlamaCpp(const CpuBenchOptions& o, int threads,
                             std::vector<CpuBenchRow>& rows) {
  const std::string command = absl::StrFormat(
      "'%s' '%s' '%s' %d %s %d %d %d", o.python, o.llama_script, o.model_path, threads,
      absl::StrJoin(o.prefill_lengths, ","), o.decode_context, o.decode_tokens, o.repeats);
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return absl::InternalError("could not start " + command);
  std::array<char, 256> line;
  while (std::fgets(line.data(), line.size(), pipe) != nullptr) {
    std::vector<std::string> f = absl::StrSplit(std::string(line.data()), ' ');
    if (f.size() != 3) continue;
    for (CpuBenchRow& row : rows) {
      if (row.what == f[0] && absl::StrCat(row.tokens) == f[1]) row.llama_tps = std::stod(f[2]);
    }
  }
  if (pclose(pipe) != 0) {
    return absl::UnavailableError("llama.cpp measurement failed: " + command +
                                  " (scripts/setup --test installs llama-cpp-python; --no-llama "
                                  "measures xkv alone)");
  }
  return absl::OkStatus();
}

// <= 0: every hardware thread (the same rule LoadModel applies).
int ResolveThreads(int threads) {
  return threads > 0 ? threads
                     : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

}  // namespace

std::vector<int32_t> BenchTokens(int64_t n, int32_t vocab) {
  std::vector<int32_t> out(n);
  uint64_t x = 42;
  for (int64_t i = 0; i < n; ++i) {
    x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    out[i] = static_cast<int32_t>((x >> 33) % static_cast<uint64_t>(vocab - 1000)) + 100;
  }
  return out;
}

absl::StatusOr<std::vector<CpuBenchRow>> RunCpuBench(const CpuBenchOptions& o) {
  const int threads = ResolveThreads(o.threads);
  std::vector<CpuBenchRow> rows;
  {
    ASSIGN_OR_RETURN(LoadedModel loaded, LoadModel(o.model_path, threads));
    for (int64_t n : o.prefill_lengths) {
      ASSIGN_OR_RETURN(double tps, BestPrefillTps(*loaded.model, n, o.repeats));
      rows.push_back({"prefill", n, tps, 0});
      std::fprintf(stderr, "xkv prefill %lld: %.1f tokens/s\n", static_cast<long long>(n), tps);
    }
    ASSIGN_OR_RETURN(double tps,
                     BestDecodeTps(*loaded.model, o.decode_context, o.decode_tokens, o.repeats));
    rows.push_back({"decode", o.decode_context, tps, 0});
    std::fprintf(stderr, "xkv decode at %lld: %.1f tokens/s\n",
                 static_cast<long long>(o.decode_context), tps);
  }  // the engine's memory is released before llama.cpp loads
  if (!o.python.empty()) RETURN_IF_ERROR(MeasureLlamaCpp(o, threads, rows));
  return rows;
}

std::string FormatCpuBench(const CpuBenchOptions& o, const std::vector<CpuBenchRow>& rows) {
  char date[32];
  const std::time_t now = std::time(nullptr);
  std::strftime(date, sizeof(date), "%Y-%m-%d", std::gmtime(&now));
  const int threads = ResolveThreads(o.threads);
  std::string out = absl::StrFormat(
      "%s, %s, %d threads, model %s, best of %d\n\n"
      "| measurement | tokens | xkv tokens/s | llama.cpp tokens/s | xkv / llama.cpp |\n"
      "|---|---|---|---|---|\n",
      date, CpuModel(), threads, o.model_path, o.repeats);
  for (const CpuBenchRow& r : rows) {
    const std::string what =
        r.what == "prefill" ? "prefill" : absl::StrFormat("decode (%d steps)", o.decode_tokens);
    absl::StrAppendFormat(
        &out, "| %s | %d | %.1f | %s | %s |\n", what, r.tokens, r.xkv_tps,
        r.llama_tps > 0 ? absl::StrFormat("%.1f", r.llama_tps) : "-",
        r.llama_tps > 0 ? absl::StrFormat("%.2fx", r.xkv_tps / r.llama_tps) : "-");
  }
  return out;
}

}  // namespace xkv
