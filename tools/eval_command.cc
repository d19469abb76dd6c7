// `xkv eval`: the quality-evaluation harness (bench/eval_*.h). Builds the retrieval suite from
// Debian's own English text, runs every method × budget against the full cache with one shared
// prefill per prompt, and writes results.csv, summary.md and quality.png under --out.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "base/status_macros.h"
#include "bench/eval_report.h"
#include "bench/eval_runner.h"
#include "bench/eval_tasks.h"
#include "bench/machine_info.h"
#include "model/chat_template.h"
#include "model/loaded_model.h"
#include "tools/commands.h"
#include "tools/flag_set.h"

namespace xkv {
namespace {

struct EvalFlags {
  std::string model = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
  std::string suite = "quick";
  std::string out;
  int64_t threads = 0;
  std::string methods = "streaming,snapkv,pyramidkv,paper,xkv";
  std::string split = "test";
  std::string budgets;  // default per suite
  int64_t seed = 1;
  int64_t limit = 0;
  int64_t window = 8;
  int64_t answer_tokens = 12;
  int64_t fidelity_tokens = 32;
  std::string python;
  std::string plot_script = "bench/plot_quality.py";
  bool plot = true;
  bool verbose = false;
};

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "xkv eval: %s\n", std::string(status.message()).c_str());
  return 1;
}

absl::StatusOr<std::vector<EvalMethod>> ParseMethods(const std::string& text,
                                                     const ImportanceOptions& base) {
  std::vector<EvalMethod> out;
  for (absl::string_view name : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    ASSIGN_OR_RETURN(EvalMethod m, ParseEvalMethod(name, base));
    if (m.name != "full") out.push_back(std::move(m));  // full always runs as the reference
  }
  return out;
}

absl::StatusOr<std::vector<double>> ParseBudgets(const std::string& text) {
  std::vector<double> out;
  for (absl::string_view item : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    double f = 0;
    if (!absl::SimpleAtod(item, &f) || !(f > 0.0 && f < 1.0)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--budgets: '", item, "' is not a fraction in (0, 1)"));
    }
    out.push_back(f);
  }
  if (out.empty()) return absl::InvalidArgumentError("--budgets is empty");
  return out;
}

std::string UtcNow() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M UTC", &tm);
  return buf;
}

void Progress(int done, int total, double elapsed_s) {
  constexpr int kWidth = 30;
  const int filled = total > 0 ? done * kWidth / total : kWidth;
  std::string bar(filled, '#');
  bar.resize(kWidth, '.');
  std::string eta = "?";
  if (done > 0) {
    const double left = elapsed_s / done * (total - done);
    eta = left >= 90 ? absl::StrFormat("%.0fm", left / 60) : absl::StrFormat("%.0fs", left);
  }
  std::fprintf(stderr, "\r[%s] %d/%d prompts, elapsed %.0fs, eta %s   ", bar.c_str(), done, total,
               elapsed_s, eta.c_str());
  std::fflush(stderr);
}

absl::StatusOr<std::vector<EvalPrompt>> BuildPrompts(const EvalFlags& f, const Tokenizer& tok,
                                                     TextCorpus* corpus) {
  ASSIGN_OR_RETURN(SuiteOptions suite, SuiteByName(f.suite));
  ASSIGN_OR_RETURN(const Split split, ParseSplit(f.split));
  suite.seed = SplitSeed(split, static_cast<uint64_t>(f.seed));
  ASSIGN_OR_RETURN(*corpus, LoadCorpus(CorpusPaths(split)));
  auto encode = [&tok](std::string_view text) { return tok.Encode(text, true); };
  auto render = [](std::string_view user) {
    const ChatMessage msg{"user", std::string(user)};
    return ApplyChatTemplate(absl::MakeConstSpan(&msg, 1), /*add_generation_prompt=*/true);
  };
  ASSIGN_OR_RETURN(std::vector<EvalPrompt> prompts, BuildSuite(*corpus, suite, encode, render));
  if (f.limit > 0 && static_cast<int64_t>(prompts.size()) > f.limit) {
    // Keep a spread over the suite rather than its first entries.
    std::vector<EvalPrompt> picked;
    for (int64_t i = 0; i < f.limit; ++i) {
      picked.push_back(std::move(prompts[i * prompts.size() / f.limit]));
    }
    prompts = std::move(picked);
  }
  return prompts;
}

// KVzip's re-reading instruction (profile=reconstruct), in the model's chat template.
absl::StatusOr<RepeatPrompt> MakeRepeatPrompt(const Tokenizer& tok) {
  constexpr std::string_view kMark = "@@XKV@@";
  const ChatMessage msg{"user", std::string(kMark)};
  ASSIGN_OR_RETURN(const std::string turn,
                   ApplyChatTemplate(absl::MakeConstSpan(&msg, 1), /*add_generation_prompt=*/true));
  const size_t mark = turn.find(kMark);
  if (mark == std::string::npos) return absl::InternalError("the chat template lost the user turn");
  RepeatPrompt r;
  auto encode = [&tok](std::string_view text) {
    return tok.Encode(text, /*parse_special=*/true, /*add_special=*/false);
  };
  ASSIGN_OR_RETURN(r.first, encode("\n\nRepeat the previous context exactly."));
  ASSIGN_OR_RETURN(r.next,
                   encode("\n\nRepeat the part of the previous context exactly, starting with"));
  ASSIGN_OR_RETURN(r.suffix, encode(turn.substr(mark + kMark.size())));
  return r;
}

absl::Status Evaluate(const EvalFlags& f, const std::string& out_dir) {
  const auto start = std::chrono::steady_clock::now();
  ASSIGN_OR_RETURN(LoadedModel m, LoadModel(f.model, static_cast<int>(f.threads)));
  TextCorpus corpus;
  ASSIGN_OR_RETURN(std::vector<EvalPrompt> prompts, BuildPrompts(f, *m.tokenizer, &corpus));
  EvalOptions options;
  RETURN_IF_ERROR(ValidateWindow(f.window, "--window"));
  ImportanceOptions base;
  base.window = static_cast<int>(f.window);
  ASSIGN_OR_RETURN(options.methods, ParseMethods(f.methods, base));
  ASSIGN_OR_RETURN(options.budgets, ParseBudgets(!f.budgets.empty()  ? f.budgets
                                                 : f.suite == "full" ? "0.05,0.1,0.2,0.3,0.5"
                                                                     : "0.1,0.2,0.4"));
  options.answer_tokens = static_cast<int>(f.answer_tokens);
  options.fidelity_tokens = static_cast<int>(f.fidelity_tokens);
  for (const char* t : {"<|im_end|>", "<|endoftext|>"}) {
    if (m.tokenizer->FindToken(t) >= 0) options.stop_tokens.push_back(m.tokenizer->FindToken(t));
  }
  if (m.tokenizer->eos() >= 0) options.stop_tokens.push_back(m.tokenizer->eos());
  ASSIGN_OR_RETURN(options.repeat, MakeRepeatPrompt(*m.tokenizer));
  std::fprintf(stderr, "xkv eval: suite %s, %zu prompts, %zu methods x %zu budgets + full, %s\n",
               f.suite.c_str(), prompts.size(), options.methods.size(), options.budgets.size(),
               out_dir.c_str());

  EvalRunner runner(m.model.get(), m.tokenizer.get(), options);
  std::vector<EvalRow> rows;
  const auto run_start = std::chrono::steady_clock::now();
  auto elapsed = [&run_start] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - run_start).count();
  };
  Progress(0, prompts.size(), 0);
  for (size_t i = 0; i < prompts.size(); ++i) {
    PromptTiming timing;
    ASSIGN_OR_RETURN(std::vector<EvalRow> r, runner.Run(prompts[i], &timing));
    if (f.verbose) {
      std::fprintf(stderr,
                   "\r%s: %zu context tokens, prefill %.1fs, total %.1fs, full answer \"%s\"\n",
                   prompts[i].id.c_str(), prompts[i].context.size(), timing.prefill_s,
                   timing.total_s, r.empty() ? "" : r[0].answer.c_str());
    }
    rows.insert(rows.end(), r.begin(), r.end());
    Progress(i + 1, prompts.size(), elapsed());
  }
  std::fprintf(stderr, "\n");

  RunInfo info;
  info.suite = absl::StrCat(f.suite, ", split ", f.split);
  info.model = f.model;
  info.machine = absl::StrCat(std::thread::hardware_concurrency(), " CPU cores (", CpuModel(), ")");
  info.threads = static_cast<int>(f.threads);
  info.date = UtcNow();
  info.prompts = static_cast<int>(prompts.size());
  info.corpus_sources = corpus.sources;
  info.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  RETURN_IF_ERROR(WriteReports(out_dir, rows, info));
  std::fputs(SummaryMarkdown(rows, info).c_str(), stdout);
  if (f.plot) {
    const std::string python = !f.python.empty() ? f.python : VenvPython();
    absl::Status s =
        RunPlot(python, f.plot_script, out_dir + "/results.csv", out_dir + "/quality.png");
    if (!s.ok()) std::fprintf(stderr, "xkv eval: warning: no plot: %s\n", s.ToString().c_str());
  }
  return absl::OkStatus();
}

}  // namespace

int RunEval(int argc, char** argv) {
  EvalFlags f;
  FlagSet flags("eval",
                "Measures answer quality of every KV policy against the full cache on a long-"
                "context retrieval\nsuite built from Debian's own text (passkey, multi-key, "
                "query-aware and query-agnostic),\nplus greedy agreement and KL under teacher "
                "forcing. Writes results.csv, summary.md and\nquality.png under --out.");
  flags.String("model", &f.model, "GGUF model file");
  flags.String("suite", &f.suite, "quick (18 prompts, ~10 min on 2 cores) or full");
  flags.String("out", &f.out, "output folder (default bench/out/eval-<suite>-<split>)");
  flags.Int("threads", &f.threads, "CPU threads; 0 uses every hardware thread");
  flags.String("methods", &f.methods,
               "compressed methods, comma-separated (full always runs): streaming, snapkv, "
               "pyramidkv, paper (xkv with the paper's allocator), xkv (the global allocator); "
               "parameters as xkv:floor=0.25:cap=4:window=16:pool=max:kernel=7; "
               "xkv:profile=reconstruct scores by re-reading the context (KVzip)");
  flags.String("split", &f.split,
               "dev (choose parameters here), test (report here) or all (the historical suite)");
  flags.String("budgets", &f.budgets,
               "KV budgets as fractions of full KV bytes (default quick 0.1,0.2,0.4; full "
               "0.05,0.1,0.2,0.3,0.5)");
  flags.Int("seed", &f.seed, "suite seed (text positions, keys, names)");
  flags.Int("limit", &f.limit, "at most this many prompts (0: all), spread over the suite");
  flags.Int("window", &f.window, "observation window w in [8, 64] (methods may override)");
  flags.Int("answer-tokens", &f.answer_tokens, "greedy answer length cap");
  flags.Int("fidelity-tokens", &f.fidelity_tokens, "teacher-forced tokens for agreement and KL");
  flags.String("python", &f.python,
               "python with matplotlib (default: the scripts venv, $XKV_CACHE or ~/.cache/xkv)");
  flags.String("plot-script", &f.plot_script, "the plotting script");
  flags.Bool("plot", &f.plot, "write quality.png");
  flags.Bool("verbose", &f.verbose, "one line per prompt: sizes, timings, the full cache's answer");
  if (auto code = flags.ParseOrExitCode(argc, argv, 2)) return *code;
  if (f.answer_tokens < 1 || f.fidelity_tokens < 1) {
    return Fail(absl::InvalidArgumentError("--answer-tokens and --fidelity-tokens must be >= 1"));
  }
  const std::string out_dir =
      !f.out.empty() ? f.out : absl::StrCat("bench/out/eval-", f.suite, "-", f.split);
  if (absl::Status s = Evaluate(f, out_dir); !s.ok()) return Fail(s);
  return 0;
}

}  // namespace xkv
