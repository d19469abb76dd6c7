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

// Mean metrics of one method × budget over the rows given (every prompt and query mode).
struct EvalSummary {
  std::string method = "full";
  double budget = 1.0;
  int rows = 0;
  double kv_percent = 0.0;      // mean kv_bytes_held / kv_bytes_full, in %
  double accuracy = 0.0;        // all rows
  Interval accuracy_ci;         // bootstrap 95% over prompts (BootstrapMeanCi), modes kept together
  double accuracy_aware = 0.0;  // query-aware rows
  Interval aware_ci;
  double accuracy_question = 0.0;  // question-in-context rows (kvpress's compress_questions)
  Interval question_ci;
  double accuracy_agnostic = 0.0;
  Interval agnostic_ci;
  int fidelity_rows = 0;  // rows with fidelity metrics (prompts with a continuation)
  double agreement = 0.0;
  double kl = 0.0;
  double nll = 0.0;
};

// Grouped in first-appearance order of (method, budget).
std::vector<EvalSummary> Summarize(absl::Span<const EvalRow> rows);

// Tasks whose full-cache accuracy is below `min_accuracy` (sorted): dropped from the headline
// numbers because a compressed cache cannot be told apart from a model that fails anyway.
std::vector<std::string> WeakTasks(absl::Span<const EvalRow> rows, double min_accuracy);
inline constexpr double kMinFullAccuracy = 0.5;

std::string CsvHeader();
std::string CsvLine(const EvalRow& row);

struct RunInfo {
  std::string suite;
  std::string model;
  std::string machine;   // e.g. "2 CPU cores, x86_64" or the GPU's name
  std::string device;    // "cpu", "cuda:0"
  std::string date;      // UTC
  double seconds = 0.0;  // wall time of the whole run
  int prompts = 0;
  std::vector<std::string> corpus_sources;
  int threads = 0;
};

// The Markdown report: run info, the headline method × budget table (tasks the full cache solves
// at least half of the time), accuracy per task and per length (95% intervals in every cell),
// the goal check.
std::string SummaryMarkdown(absl::Span<const EvalRow> rows, const RunInfo& info);

// One line per row × layer: prompt_id,mode,method,budget,layer,kept_prefix (allocations.csv).
std::string AllocationsCsv(absl::Span<const EvalRow> rows);

// Writes results.csv, allocations.csv and summary.md under dir (created if missing).
absl::Status WriteReports(const std::string& dir, absl::Span<const EvalRow> rows,
                          const RunInfo& info);

// Runs `python plot_script results.csv out.png [--exclude t1,t2]`; FAILED_PRECONDITION when
// python is missing.
absl::Status RunPlot(const std::string& python, const std::string& plot_script,
                     const std::string& csv, const std::string& png,
                     const std::vector<std::string>& exclude_tasks);

}  // namespace xkv

#endif  // XKV_BENCH_EVAL_REPORT_H_
