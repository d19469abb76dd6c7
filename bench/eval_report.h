// Outputs of `xkv eval`: results.csv (one row per prompt × query mode × method × budget),
// summary.md (method × budget table) and quality.png (bench/plot_quality.py).
#ifndef XKV_BENCH_EVAL_REPORT_H_
#define XKV_BENCH_EVAL_REPORT_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "bench/eval_metrics.h"
#include "bench/eval_runner.h"

namespace xkv {

// Mean metrics of one method × budget over every prompt and query mode.
struct EvalSummary {
  std::string method = "full";
  double budget = 1.0;
  int rows = 0;
  double kv_percent = 0.0;      // mean kv_bytes_held / kv_bytes_full, in %
  double accuracy = 0.0;        // all rows
  Interval accuracy_ci;         // bootstrap 95% over prompts (BootstrapMeanCi)
  double accuracy_aware = 0.0;  // query-aware rows
  double accuracy_agnostic = 0.0;
  double agreement = 0.0;
  double kl = 0.0;
};

// Grouped in first-appearance order of (method, budget).
std::vector<EvalSummary> Summarize(absl::Span<const EvalRow> rows);

std::string CsvHeader();
std::string CsvLine(const EvalRow& row);

struct RunInfo {
  std::string suite;
  std::string model;
  std::string machine;   // e.g. "2 CPU cores, x86_64"
  std::string date;      // UTC
  double seconds = 0.0;  // wall time of the whole run
  int prompts = 0;
  std::vector<std::string> corpus_sources;
  int threads = 0;
};

// The Markdown report: run info, the method × budget table, accuracy per length, the goal check.
std::string SummaryMarkdown(absl::Span<const EvalRow> rows, const RunInfo& info);

// One line per row × layer: prompt_id,mode,method,budget,layer,kept_prefix (allocations.csv).
std::string AllocationsCsv(absl::Span<const EvalRow> rows);

// Writes results.csv, allocations.csv and summary.md under dir (created if missing).
absl::Status WriteReports(const std::string& dir, absl::Span<const EvalRow> rows,
                          const RunInfo& info);

// Runs `python plot_script results.csv out.png`; FAILED_PRECONDITION when python is missing.
absl::Status RunPlot(const std::string& python, const std::string& plot_script,
                     const std::string& csv, const std::string& png);

}  // namespace xkv

#endif  // XKV_BENCH_EVAL_REPORT_H_
