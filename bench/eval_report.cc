#include "bench/eval_report.h"

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"

namespace xkv {
namespace {

std::string CsvQuote(const std::string& s) {
  return absl::StrCat("\"", absl::StrReplaceAll(s, {{"\"", "\"\""}, {"\n", "\\n"}}), "\"");
}

std::string BudgetLabel(const EvalSummary& s) {
  return s.method == "full" ? "—" : absl::StrFormat("%.0f%%", 100.0 * s.budget);
}

double Percent(const EvalRow& r) {
  return r.kv_bytes_full > 0 ? 100.0 * r.kv_bytes_held / r.kv_bytes_full : 100.0;
}

const EvalSummary* FindFull(const std::vector<EvalSummary>& s) {
  for (const EvalSummary& e : s) {
    if (e.method == "full") return &e;
  }
  return nullptr;
}

std::string WithCi(double value, const Interval& ci) {
  return absl::StrFormat("%.3f [%.2f, %.2f]", value, ci.low, ci.high);
}

// Per-prompt accuracy of the rows that pass `keep` (a prompt's modes averaged), in
// first-appearance order of the prompts: the bootstrap's unit.
std::vector<double> PerPrompt(absl::Span<const EvalRow> rows,
                              const std::function<bool(const EvalRow&)>& keep) {
  std::vector<std::string> ids;
  std::vector<double> ok, n;
  for (const EvalRow& r : rows) {
    if (!keep(r)) continue;
    const size_t i = std::find(ids.begin(), ids.end(), r.prompt_id) - ids.begin();
    if (i == ids.size()) ids.push_back(r.prompt_id), ok.push_back(0), n.push_back(0);
    ok[i] += r.correct ? 1 : 0;
    n[i] += 1;
  }
  for (size_t i = 0; i < ok.size(); ++i) ok[i] /= n[i];
  return ok;
}

double Mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0.0 : s / static_cast<double>(v.size());
}

// One accuracy column per query mode present in the rows.
std::string MainTable(absl::Span<const EvalRow> rows, const std::vector<EvalSummary>& sums) {
  const EvalSummary* full = FindFull(sums);
  std::vector<QueryMode> modes;
  for (QueryMode m : {QueryMode::kAware, QueryMode::kQuestion, QueryMode::kAgnostic}) {
    if (std::any_of(rows.begin(), rows.end(), [m](const EvalRow& r) { return r.mode == m; })) {
      modes.push_back(m);
    }
  }
  std::string out = "| method | budget | KV bytes % of full |", rule = "|---|---|---|";
  for (QueryMode m : modes) {
    absl::StrAppend(&out, " accuracy (", std::string(QueryModeName(m)), ") |");
    absl::StrAppend(&rule, "---|");
  }
  absl::StrAppend(&out,
                  " accuracy (all) | % of full score | greedy agreement | KL (nats) | NLL (nats) "
                  "|\n",
                  rule, "---|---|---|---|---|\n");
  for (const EvalSummary& s : sums) {
    const std::string rel = full != nullptr && full->accuracy > 0
                                ? absl::StrFormat("%.1f%%", 100.0 * s.accuracy / full->accuracy)
                                : "n/a";
    const bool fid = s.fidelity_rows > 0;
    absl::StrAppendFormat(&out, "| %s | %s | %.1f |", s.method, BudgetLabel(s), s.kv_percent);
    for (QueryMode m : modes) {
      const double a = m == QueryMode::kAware      ? s.accuracy_aware
                       : m == QueryMode::kQuestion ? s.accuracy_question
                                                   : s.accuracy_agnostic;
      const Interval& ci = m == QueryMode::kAware      ? s.aware_ci
                           : m == QueryMode::kQuestion ? s.question_ci
                                                       : s.agnostic_ci;
      absl::StrAppend(&out, " ", WithCi(a, ci), " |");
    }
    absl::StrAppendFormat(&out, " %s | %s | %s | %s | %s |\n", WithCi(s.accuracy, s.accuracy_ci),
                          rel, fid ? absl::StrFormat("%.3f", s.agreement) : "—",
                          fid ? absl::StrFormat("%.4f", s.kl) : "—",
                          fid ? absl::StrFormat("%.3f", s.nll) : "—");
  }
  return out;
}

// Accuracy (all modes, 95% interval) of every method × budget per value of `column`.
template <typename T>
std::string BreakdownTable(absl::Span<const EvalRow> rows, const std::vector<EvalSummary>& sums,
                           const std::vector<T>& values, const std::function<T(const EvalRow&)>& of,
                           const std::function<std::string(const T&)>& label) {
  std::string out = "| method | budget |";
  std::string rule = "|---|---|";
  for (const T& v : values) {
    absl::StrAppend(&out, " ", label(v), " |");
    absl::StrAppend(&rule, "---|");
  }
  absl::StrAppend(&out, "\n", rule, "\n");
  for (const EvalSummary& s : sums) {
    absl::StrAppend(&out, "| ", s.method, " | ", BudgetLabel(s), " |");
    for (const T& v : values) {
      const std::vector<double> per = PerPrompt(rows, [&](const EvalRow& r) {
        return r.method == s.method && r.budget == s.budget && of(r) == v;
      });
      absl::StrAppend(&out, " ", per.empty() ? "—" : WithCi(Mean(per), BootstrapMeanCi(per)), " |");
    }
    absl::StrAppend(&out, "\n");
  }
  return out;
}

std::string LengthTable(absl::Span<const EvalRow> rows, const std::vector<EvalSummary>& sums) {
  std::set<int64_t> set;
  for (const EvalRow& r : rows) set.insert(r.target_tokens);
  return BreakdownTable<int64_t>(
      rows, sums, {set.begin(), set.end()}, [](const EvalRow& r) { return r.target_tokens; },
      [](const int64_t& n) { return absl::StrCat(n, " tok"); });
}

std::string TaskTable(absl::Span<const EvalRow> rows, const std::vector<EvalSummary>& sums) {
  std::vector<std::string> tasks;
  for (const EvalRow& r : rows) {
    if (std::find(tasks.begin(), tasks.end(), r.task) == tasks.end()) tasks.push_back(r.task);
  }
  return BreakdownTable<std::string>(
      rows, sums, tasks, [](const EvalRow& r) { return r.task; },
      [](const std::string& t) { return t; });
}

// The goal, checked mechanically (reported, never tuned for).
std::string GoalCheck(const std::vector<EvalSummary>& sums) {
  const EvalSummary* full = FindFull(sums);
  std::string out;
  if (full == nullptr) return "No full-cache reference in this run.\n";
  for (const EvalSummary& x : sums) {
    if (x.method != "xkv") continue;
    const double rel = full->accuracy > 0 ? x.accuracy / full->accuracy : 0.0;
    absl::StrAppendFormat(&out, "- xkv @ %s (%.1f%% of full bytes): %.1f%% of the full score",
                          BudgetLabel(x), x.kv_percent, 100.0 * rel);
    if (x.kv_percent <= 20.0 + 1e-9) {
      absl::StrAppend(&out, rel >= 0.99 ? " — meets the ≥ 99% goal" : " — MISSES the ≥ 99% goal");
    }
    std::vector<std::string> worse;
    for (const EvalSummary& b : sums) {
      if (absl::StartsWith(b.method, "xkv") || b.method == "full" || b.budget != x.budget) {
        continue;
      }
      if (b.accuracy > x.accuracy) {
        worse.push_back(absl::StrFormat("%s (%.3f > %.3f)", b.method, b.accuracy, x.accuracy));
      }
    }
    absl::StrAppend(&out, worse.empty() ? "; accuracy ≥ every baseline at this budget.\n"
                                        : "; below " + absl::StrJoin(worse, ", ") + ".\n");
  }
  return out;
}

}  // namespace

std::vector<EvalSummary> Summarize(absl::Span<const EvalRow> rows) {
  std::vector<EvalSummary> out;
  for (const EvalRow& r : rows) {
    size_t i = 0;
    while (i < out.size() && !(out[i].method == r.method && out[i].budget == r.budget)) ++i;
    if (i == out.size()) out.push_back({r.method, r.budget});
    EvalSummary& s = out[i];
    ++s.rows;
    s.kv_percent += Percent(r);
    if (r.fidelity.has_value()) {
      ++s.fidelity_rows;
      s.agreement += r.fidelity->agreement;
      s.kl += r.fidelity->mean_kl;
      s.nll += r.fidelity->mean_nll;
    }
  }
  for (EvalSummary& s : out) {
    auto cell = [&](std::optional<QueryMode> mode, double* value, Interval* ci) {
      const std::vector<double> per = PerPrompt(rows, [&](const EvalRow& r) {
        return r.method == s.method && r.budget == s.budget && (!mode || r.mode == *mode);
      });
      *value = Mean(per);
      *ci = BootstrapMeanCi(per);
    };
    cell(std::nullopt, &s.accuracy, &s.accuracy_ci);
    cell(QueryMode::kAware, &s.accuracy_aware, &s.aware_ci);
    cell(QueryMode::kQuestion, &s.accuracy_question, &s.question_ci);
    cell(QueryMode::kAgnostic, &s.accuracy_agnostic, &s.agnostic_ci);
    s.kv_percent /= s.rows;
    if (s.fidelity_rows > 0) {
      s.agreement /= s.fidelity_rows;
      s.kl /= s.fidelity_rows;
      s.nll /= s.fidelity_rows;
    }
  }
  return out;
}

std::vector<std::string> WeakTasks(absl::Span<const EvalRow> rows, double min_accuracy) {
  std::map<std::string, std::pair<int, int>> full;  // task → (correct, rows)
  for (const EvalRow& r : rows) {
    if (r.method != "full") continue;
    full[r.task].first += r.correct ? 1 : 0;
    full[r.task].second += 1;
  }
  std::vector<std::string> out;
  for (const auto& [task, c] : full) {
    if (c.first < min_accuracy * c.second) out.push_back(task);
  }
  return out;
}

std::string CsvHeader() {
  return "prompt_id,task,mode,target_tokens,prompt_tokens,depth,method,budget,kv_bytes_held,"
         "kv_bytes_full,kv_percent,retention,answers,answer,correct,agreement,kl,nll,"
         "fidelity_steps";
}

std::string CsvLine(const EvalRow& r) {
  const std::optional<FidelityScore>& f = r.fidelity;
  return absl::StrFormat(
      "%s,%s,%s,%d,%d,%.4f,%s,%.4f,%d,%d,%.3f,%s,%s,%s,%d,%s,%s,%s,%d", r.prompt_id, r.task,
      QueryModeName(r.mode), r.target_tokens, r.prompt_tokens, r.depth, r.method, r.budget,
      r.kv_bytes_held, r.kv_bytes_full, Percent(r),
      r.retention ? absl::StrFormat("%.5f", *r.retention) : "",
      CsvQuote(absl::StrJoin(r.answers, "|")), CsvQuote(r.answer), r.correct ? 1 : 0,
      f ? absl::StrFormat("%.5f", f->agreement) : "", f ? absl::StrFormat("%.6f", f->mean_kl) : "",
      f ? absl::StrFormat("%.5f", f->mean_nll) : "", f ? f->steps : 0);
}

std::string AllocationsCsv(absl::Span<const EvalRow> rows) {
  std::string out = "prompt_id,mode,method,budget,prompt_tokens,layer,kept_prefix\n";
  for (const EvalRow& r : rows) {
    for (size_t l = 0; l < r.layer_budgets.size(); ++l) {
      absl::StrAppendFormat(&out, "%s,%s,%s,%.4f,%d,%d,%d\n", r.prompt_id, QueryModeName(r.mode),
                            r.method, r.budget, r.prompt_tokens, l, r.layer_budgets[l]);
    }
  }
  return out;
}

std::string SummaryMarkdown(absl::Span<const EvalRow> rows, const RunInfo& info) {
  const std::vector<std::string> weak = WeakTasks(rows, kMinFullAccuracy);
  std::vector<EvalRow> headline;
  for (const EvalRow& r : rows) {
    if (std::find(weak.begin(), weak.end(), r.task) == weak.end()) headline.push_back(r);
  }
  const std::vector<EvalSummary> sums = Summarize(headline);
  const std::vector<EvalSummary> all_sums = Summarize(rows);
  std::string out = absl::StrFormat(
      "# xkv eval — %s\n\n"
      "- model: `%s`\n- device: %s (%s), %d host threads\n- date: %s\n- prompts: %d, %d result "
      "rows, wall time %.1f min\n- text: %s\n\n",
      info.suite, info.model, info.device, info.machine, info.threads, info.date, info.prompts,
      rows.size(), info.seconds / 60.0, absl::StrJoin(info.corpus_sources, ", "));
  absl::StrAppend(
      &out,
      "Accuracy: the greedy answer contains an expected answer (RULER's string match); "
      "[low, high] is the 95% bootstrap interval over prompts. Agreement, KL and NLL: "
      "teacher-forced over the real text that follows the document (bench/eval_metrics.h).\n\n");
  absl::StrAppend(&out, weak.empty()
                            ? "Every task is in the headline table: the full cache solves each at "
                              "least half of the time.\n\n"
                            : absl::StrCat("Dropped from the headline table (the full cache "
                                           "solves them less than half of the time, so a "
                                           "compressed cache has nothing to keep): ",
                                           absl::StrJoin(weak, ", "), ".\n\n"));
  absl::StrAppend(&out, MainTable(headline, sums), "\n### Accuracy by task (every task)\n\n",
                  TaskTable(rows, all_sums), "\n### Accuracy by prompt length (headline tasks)\n\n",
                  LengthTable(headline, sums),
                  "\n### Goal check (xkv ≤ 20% bytes keeps ≥ 99% of full; ≥ every baseline)\n\n",
                  GoalCheck(sums));
  return out;
}

absl::Status WriteReports(const std::string& dir, absl::Span<const EvalRow> rows,
                          const RunInfo& info) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("eval: cannot create ", dir, ": ", ec.message()));
  std::ofstream csv(dir + "/results.csv");
  csv << CsvHeader() << "\n";
  for (const EvalRow& r : rows) csv << CsvLine(r) << "\n";
  std::ofstream alloc(dir + "/allocations.csv");
  alloc << AllocationsCsv(rows);
  std::ofstream md(dir + "/summary.md");
  md << SummaryMarkdown(rows, info);
  if (!csv || !md || !alloc)
    return absl::InternalError(absl::StrCat("eval: cannot write under ", dir));
  return absl::OkStatus();
}

absl::Status RunPlot(const std::string& python, const std::string& plot_script,
                     const std::string& csv, const std::string& png,
                     const std::vector<std::string>& exclude_tasks) {
  if (!std::filesystem::exists(python)) {
    return absl::FailedPreconditionError(absl::StrCat("no python at ", python));
  }
  std::string cmd = absl::StrCat("'", python, "' '", plot_script, "' '", csv, "' '", png, "'");
  if (!exclude_tasks.empty()) {
    absl::StrAppend(&cmd, " --exclude '", absl::StrJoin(exclude_tasks, ","), "'");
  }
  const int rc = std::system(cmd.c_str());
  if (rc != 0) return absl::InternalError(absl::StrCat("plot failed (exit ", rc, "): ", cmd));
  return absl::OkStatus();
}

}  // namespace xkv
