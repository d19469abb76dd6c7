#include "bench/eval_report.h"

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
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

std::string MainTable(const std::vector<EvalSummary>& sums) {
  const EvalSummary* full = FindFull(sums);
  std::string out =
      "| method | budget | KV bytes % of full | accuracy (aware) | accuracy (agnostic) | "
      "accuracy (all) | 95% CI | % of full score | greedy agreement | KL (nats) |\n"
      "|---|---|---|---|---|---|---|---|---|---|\n";
  for (const EvalSummary& s : sums) {
    const std::string rel = full != nullptr && full->accuracy > 0
                                ? absl::StrFormat("%.1f%%", 100.0 * s.accuracy / full->accuracy)
                                : "n/a";
    absl::StrAppendFormat(
        &out, "| %s | %s | %.1f | %.3f | %.3f | %.3f | [%.3f, %.3f] | %s | %.3f | %.4f |\n",
        s.method, BudgetLabel(s), s.kv_percent, s.accuracy_aware, s.accuracy_agnostic, s.accuracy,
        s.accuracy_ci.low, s.accuracy_ci.high, rel, s.agreement, s.kl);
  }
  return out;
}

// Accuracy (all modes) per target length.
std::string LengthTable(absl::Span<const EvalRow> rows, const std::vector<EvalSummary>& sums) {
  std::map<int64_t, int> lengths;
  for (const EvalRow& r : rows) lengths[r.target_tokens] = 0;
  std::string out = "| method | budget |";
  std::string rule = "|---|---|";
  for (const auto& [len, unused] : lengths) {
    absl::StrAppend(&out, " ", len, " tok |");
    absl::StrAppend(&rule, "---|");
  }
  absl::StrAppend(&out, "\n", rule, "\n");
  for (const EvalSummary& s : sums) {
    absl::StrAppend(&out, "| ", s.method, " | ", BudgetLabel(s), " |");
    for (const auto& [len, unused] : lengths) {
      int n = 0, ok = 0;
      for (const EvalRow& r : rows) {
        if (r.method != s.method || r.budget != s.budget || r.target_tokens != len) continue;
        ++n;
        ok += r.correct ? 1 : 0;
      }
      absl::StrAppendFormat(&out, " %.3f |", n > 0 ? static_cast<double>(ok) / n : 0.0);
    }
    absl::StrAppend(&out, "\n");
  }
  return out;
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

// Accuracy of one method × budget per prompt (both query modes), in first-appearance order.
std::vector<double> PerPromptAccuracy(absl::Span<const EvalRow> rows, const std::string& method,
                                      double budget) {
  std::vector<std::string> ids;
  std::vector<double> ok, n;
  for (const EvalRow& r : rows) {
    if (r.method != method || r.budget != budget) continue;
    const size_t i = std::find(ids.begin(), ids.end(), r.prompt_id) - ids.begin();
    if (i == ids.size()) ids.push_back(r.prompt_id), ok.push_back(0), n.push_back(0);
    ok[i] += r.correct ? 1 : 0;
    n[i] += 1;
  }
  for (size_t i = 0; i < ok.size(); ++i) ok[i] /= n[i];
  return ok;
}

}  // namespace

std::vector<EvalSummary> Summarize(absl::Span<const EvalRow> rows) {
  std::vector<EvalSummary> out;
  std::vector<int> aware, agnostic, aware_ok, agnostic_ok;
  for (const EvalRow& r : rows) {
    size_t i = 0;
    while (i < out.size() && !(out[i].method == r.method && out[i].budget == r.budget)) ++i;
    if (i == out.size()) {
      out.push_back({r.method, r.budget});
      aware.push_back(0), agnostic.push_back(0), aware_ok.push_back(0), agnostic_ok.push_back(0);
    }
    EvalSummary& s = out[i];
    ++s.rows;
    s.kv_percent += Percent(r);
    s.accuracy += r.correct ? 1 : 0;
    s.agreement += r.agreement;
    s.kl += r.kl;
    const bool is_aware = r.mode == QueryMode::kAware;
    (is_aware ? aware : agnostic)[i] += 1;
    (is_aware ? aware_ok : agnostic_ok)[i] += r.correct ? 1 : 0;
  }
  for (size_t i = 0; i < out.size(); ++i) {
    EvalSummary& s = out[i];
    s.accuracy_ci = BootstrapMeanCi(PerPromptAccuracy(rows, s.method, s.budget));
    s.kv_percent /= s.rows;
    s.accuracy /= s.rows;
    s.agreement /= s.rows;
    s.kl /= s.rows;
    s.accuracy_aware = aware[i] > 0 ? static_cast<double>(aware_ok[i]) / aware[i] : 0.0;
    s.accuracy_agnostic = agnostic[i] > 0 ? static_cast<double>(agnostic_ok[i]) / agnostic[i] : 0.0;
  }
  return out;
}

std::string CsvHeader() {
  return "prompt_id,task,mode,target_tokens,prompt_tokens,depth,method,budget,kv_bytes_held,"
         "kv_bytes_full,kv_percent,retention,expected,answer,correct,agreement,kl,fidelity_steps";
}

std::string CsvLine(const EvalRow& r) {
  return absl::StrFormat(
      "%s,%s,%s,%d,%d,%.4f,%s,%.4f,%d,%d,%.3f,%s,%s,%s,%d,%.5f,%.6f,%d", r.prompt_id,
      TaskName(r.task), QueryModeName(r.mode), r.target_tokens, r.prompt_tokens, r.depth, r.method,
      r.budget, r.kv_bytes_held, r.kv_bytes_full, Percent(r),
      r.retention ? absl::StrFormat("%.5f", *r.retention) : "", r.expected, CsvQuote(r.answer),
      r.correct ? 1 : 0, r.agreement, r.kl, r.fidelity_steps);
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
  const std::vector<EvalSummary> sums = Summarize(rows);
  std::string out = absl::StrFormat(
      "# xkv eval — suite `%s`\n\n"
      "- model: `%s`\n- machine: %s, %d threads\n- date: %s\n- prompts: %d (each run in both "
      "query modes), %d result rows, wall time %.1f min\n- text: %s\n\n",
      info.suite, info.model, info.machine, info.threads, info.date, info.prompts, rows.size(),
      info.seconds / 60.0, absl::StrJoin(info.corpus_sources, ", "));
  absl::StrAppend(&out,
                  "Accuracy: exact match of the key (first digit run of the greedy answer). "
                  "Agreement and KL: over the full cache's first greedy tokens of a summary "
                  "answer, teacher-forced (bench/eval_metrics.h).\n\n",
                  MainTable(sums), "\n### Accuracy by prompt length\n\n", LengthTable(rows, sums),
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
                     const std::string& csv, const std::string& png) {
  if (!std::filesystem::exists(python)) {
    return absl::FailedPreconditionError(absl::StrCat("no python at ", python));
  }
  const std::string cmd =
      absl::StrCat("'", python, "' '", plot_script, "' '", csv, "' '", png, "'");
  const int rc = std::system(cmd.c_str());
  if (rc != 0) return absl::InternalError(absl::StrCat("plot failed (exit ", rc, "): ", cmd));
  return absl::OkStatus();
}

}  // namespace xkv
