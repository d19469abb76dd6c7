// `xkv eval`: the quality-evaluation harness (bench/eval_*.h). Builds the RULER-style suite from
// Debian's own English text (or reads a prompts file), runs every method × budget against the
// full cache with one shared prefill per prompt on the CPU or CUDA engine, and writes
// results.csv, summary.md and quality.png under --out.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "base/status_macros.h"
#include "bench/eval_multi_question.h"
#include "bench/eval_prompts.h"
#include "bench/eval_report.h"
#include "bench/eval_runner.h"
#include "bench/eval_tasks.h"
#include "bench/machine_info.h"
#include "model/chat_template.h"
#include "model/gguf.h"
#include "model/layer_calibration.h"
#include "model/reconstruct_scorer.h"
#include "model/tokenizer.h"
#include "tools/commands.h"
#include "tools/flag_set.h"
#include "tools/suite_text.h"
#include "worker/stage_engine_factory.h"

namespace xkv {
namespace {

struct EvalFlags {
  std::string model = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
  std::string suite = "quick";
  std::string device = "cpu";
  std::string prompts;         // a prompts file to run instead of the built-in suite
  std::string export_prompts;  // write the built-in suite here and stop
  std::string modes = "aware,agnostic";
  double kv_gib = 16.0;  // CUDA: KV pool
  std::string out;
  int64_t threads = 0;
  std::string methods = "streaming,snapkv,pyramidkv,paper,xkv";
  std::string tasks;  // default: every task
  std::string split = "test";
  std::string budgets;  // default per suite
  int64_t seed = 1;
  int64_t limit = 0;
  int64_t window = kDefaultWindow;
  int64_t reconstruct_chunk = 0;  // 0: DefaultRereadChunk of --device
  int64_t answer_tokens = 12;
  int64_t fidelity_tokens = 32;
  std::string python;
  std::string plot_script = "bench/plot_quality.py";
  bool plot = true;
  bool verbose = false;
  bool multi_question = false;  // bench/eval_multi_question.h
  std::string calibration;      // layer weights for the xkv methods (model/layer_calibration.h)
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

absl::StatusOr<std::vector<QueryMode>> ParseModes(const std::string& text) {
  std::vector<QueryMode> out;
  for (absl::string_view item : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    if (item == "aware") {
      out.push_back(QueryMode::kAware);
    } else if (item == "question") {
      out.push_back(QueryMode::kQuestion);
    } else if (item == "agnostic") {
      out.push_back(QueryMode::kAgnostic);
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "--modes: '", item, "' is not a query mode; allowed: aware, question, agnostic"));
    }
  }
  if (out.empty()) return absl::InvalidArgumentError("--modes is empty");
  return out;
}

SuiteChoice ChoiceOf(const EvalFlags& f) { return {f.suite, f.split, f.seed, f.tasks}; }

absl::Status ExportPrompts(const EvalFlags& f) {
  ASSIGN_OR_RETURN(ModelText text, OpenModelText(f.model));
  TextCorpus corpus;
  ASSIGN_OR_RETURN(std::vector<TaskRecord> records, BuildRecords(ChoiceOf(f), text, &corpus));
  Limit(f.limit, &records);
  RETURN_IF_ERROR(WriteTaskFile(f.export_prompts, records));
  std::fprintf(stderr, "xkv eval: wrote %zu prompts (suite %s, split %s) to %s\n", records.size(),
               f.suite.c_str(), f.split.c_str(), f.export_prompts.c_str());
  return absl::OkStatus();
}

absl::Status Evaluate(const EvalFlags& f, const std::string& out_dir) {
  const auto start = std::chrono::steady_clock::now();
  // Everything the user gave is checked before the model's weights are loaded.
  ASSIGN_OR_RETURN(const int device, ParseStageDevice(f.device));
  RETURN_IF_ERROR(ValidateWindow(f.window, "--window"));
  ASSIGN_OR_RETURN(const int64_t reconstruct_chunk,
                   RereadChunkFromFlag(f.reconstruct_chunk, device >= 0, "--reconstruct-chunk"));
  EvalOptions options;
  ImportanceOptions base;
  base.window = static_cast<int>(f.window);
  ASSIGN_OR_RETURN(options.methods, ParseMethods(f.methods, base));
  CalibrationWeights weights;
  if (!f.calibration.empty()) {
    ASSIGN_OR_RETURN(weights, LoadWeightsForModel(f.calibration, f.model));
  }
  RETURN_IF_ERROR(ApplyCalibration(weights, &options.methods));
  ASSIGN_OR_RETURN(options.budgets, ParseBudgets(!f.budgets.empty() ? f.budgets : "0.1,0.2,0.4"));
  ASSIGN_OR_RETURN(options.modes, ParseModes(f.modes));
  if (!(f.kv_gib > 0.0 && f.kv_gib <= 1024.0)) {
    return absl::InvalidArgumentError("--kv-gib must be in (0, 1024]");
  }
  ASSIGN_OR_RETURN(ModelText text, OpenModelText(f.model));
  TextCorpus corpus;
  std::vector<TaskRecord> records;
  if (!f.prompts.empty()) {
    ASSIGN_OR_RETURN(records, ReadTaskFile(f.prompts));
    corpus.sources = {f.prompts};
  } else {
    ASSIGN_OR_RETURN(records, BuildRecords(ChoiceOf(f), text, &corpus));
  }
  Limit(f.limit, &records);
  const int64_t vocab = text.tokenizer->vocab_size();
  std::vector<EvalPrompt> prompts;
  std::vector<std::vector<EvalPrompt>> sets;  // --multi-question: the questions of each context
  if (f.multi_question) {
    ASSIGN_OR_RETURN(const std::vector<MultiQuestionSet> mq, MultiQuestionSets(records));
    for (const MultiQuestionSet& set : mq) {
      std::vector<EvalPrompt>& questions = sets.emplace_back();
      for (const TaskRecord& r : set.questions) {
        ASSIGN_OR_RETURN(EvalPrompt p, TokenizeRecord(r, text.encode, text.render, vocab));
        questions.push_back(p);
        prompts.push_back(std::move(p));
      }
    }
  } else {
    for (const TaskRecord& r : records) {
      ASSIGN_OR_RETURN(EvalPrompt p, TokenizeRecord(r, text.encode, text.render, vocab));
      prompts.push_back(std::move(p));
    }
  }
  options.answer_tokens = static_cast<int>(f.answer_tokens);
  options.fidelity_tokens = static_cast<int>(f.fidelity_tokens);
  const int threads =
      f.threads > 0 ? static_cast<int>(f.threads) : std::thread::hardware_concurrency();
  options.threads = std::max(threads, 1);
  for (const char* t : {"<|im_end|>", "<|endoftext|>"}) {
    const int32_t id = text.tokenizer->FindToken(t);
    if (id >= 0) options.stop_tokens.push_back(id);
  }
  if (text.tokenizer->eos() >= 0) options.stop_tokens.push_back(text.tokenizer->eos());
  ASSIGN_OR_RETURN(options.repeat, MakeRepeatPrompt(*text.tokenizer, ChatTemplate::SmolLm2()));

  StageOptions so;
  so.model_path = f.model;
  so.device = f.device;
  so.num_threads = options.threads;
  so.importance = base;
  if (device >= 0) {  // one pool for every copy of a prompt: --kv-gib of bf16 K and V
    so.kv_capacity_bytes = static_cast<int64_t>(f.kv_gib * (1 << 30));
    options.max_step_tokens = 8192;
    options.max_step_sequences = 256;
    options.max_step_logit_rows = 256;
  }
  // Re-reading chunks as asked, shrunk to what one step holds after the instruction.
  options.reconstruct.chunk_tokens = reconstruct_chunk;
  options.reconstruct.chunk_tokens =
      RereadChunkTokens(options.repeat, options.reconstruct, options.max_step_tokens);
  ASSIGN_OR_RETURN(std::unique_ptr<StageEngine> engine, LoadStageEngine(so));
  EvalRunner runner(engine.get(), text.tokenizer.get(), options);
  for (const EvalPrompt& p : prompts) RETURN_IF_ERROR(runner.CheckPrompt(p));
  std::fprintf(
      stderr, "xkv eval: %zu prompts%s, %zu methods x %zu budgets + full, %s, %s\n", prompts.size(),
      f.multi_question ? absl::StrCat(" over ", sets.size(), " contexts").c_str() : "",
      options.methods.size(), options.budgets.size(), engine->device().c_str(), out_dir.c_str());
  const size_t units = f.multi_question ? sets.size() : prompts.size();

  std::vector<EvalRow> rows;
  const auto run_start = std::chrono::steady_clock::now();
  auto elapsed = [&run_start] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - run_start).count();
  };
  // Rows are appended as prompts finish, so a run cut short keeps what it measured.
  std::error_code ec;
  std::filesystem::create_directories(out_dir, ec);
  std::ofstream partial(out_dir + "/results.partial.csv", std::ios::trunc);
  partial << CsvHeader() << "\n";
  Progress(0, units, 0);
  for (size_t i = 0; i < units; ++i) {
    PromptTiming timing;
    ASSIGN_OR_RETURN(std::vector<EvalRow> r, f.multi_question
                                                 ? runner.RunMultiQuestion(sets[i], &timing)
                                                 : runner.Run(prompts[i], &timing));
    const EvalPrompt& p = f.multi_question ? sets[i][0] : prompts[i];
    if (f.verbose) {
      std::fprintf(stderr,
                   "\r%s: %zu context tokens, prefill %.2fs, total %.2fs, full answer \"%s\"\n",
                   p.id.c_str(), p.context.size(), timing.prefill_s, timing.total_s,
                   r.empty() ? "" : r[0].answer.c_str());
    }
    for (const EvalRow& row : r) partial << CsvLine(row) << "\n";
    partial.flush();
    rows.insert(rows.end(), r.begin(), r.end());
    Progress(i + 1, units, elapsed());
  }
  std::fprintf(stderr, "\n");

  RunInfo info;
  info.suite = !f.prompts.empty() ? absl::StrCat("prompts file ", f.prompts)
                                  : absl::StrCat("suite ", f.suite, ", split ", f.split);
  if (f.multi_question) absl::StrAppend(&info.suite, ", multi-question");
  info.model = f.model;
  info.device = engine->device();
  info.machine = absl::StrCat(std::thread::hardware_concurrency(), " CPU cores (", CpuModel(), ")");
  info.threads = options.threads;
  info.date = UtcNow();
  info.prompts = static_cast<int>(units);
  info.corpus_sources = corpus.sources;
  info.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  RETURN_IF_ERROR(WriteReports(out_dir, rows, info));
  partial.close();
  std::filesystem::remove(out_dir + "/results.partial.csv", ec);
  std::fputs(SummaryMarkdown(rows, info).c_str(), stdout);
  if (f.plot) {
    const std::string python = !f.python.empty() ? f.python : VenvPython();
    absl::Status s = RunPlot(python, f.plot_script, out_dir + "/results.csv",
                             out_dir + "/quality.png", WeakTasks(rows, kMinFullAccuracy));
    if (!s.ok()) std::fprintf(stderr, "xkv eval: warning: no plot: %s\n", s.ToString().c_str());
  }
  return absl::OkStatus();
}

}  // namespace

int RunEval(int argc, char** argv) {
  EvalFlags f;
  FlagSet flags("eval",
                "Measures answer quality of every KV policy against the full cache on a RULER-"
                "style suite built\nfrom Debian's own text (or a prompts file), with the question "
                "inside the compressed context\n(aware) and after it (agnostic), plus greedy "
                "agreement, KL and NLL on real text. Writes\nresults.csv, summary.md and "
                "quality.png under --out.");
  flags.String("model", &f.model, "GGUF model file");
  flags.String("device", &f.device, "cpu (the CPU engine) or cuda:N (the CUDA engine on GPU N)");
  flags.String("suite", &f.suite, "quick (24 prompts, every task at 1K/2K/4K) or full (416)");
  flags.String("tasks", &f.tasks,
               "built-in tasks, comma-separated (default all): niah_number, niah_word, "
               "niah_code, multikey, multivalue, multiquery, vt, cwe");
  flags.String("prompts", &f.prompts,
               "run this JSON Lines prompts file instead of the built-in suite (format: "
               "bench/eval_prompts.h)");
  flags.String("export-prompts", &f.export_prompts,
               "write the built-in suite (--suite, --split, --seed, --tasks, --limit) to this "
               "JSON Lines file and stop");
  flags.String("modes", &f.modes,
               "query modes, comma-separated: aware (the whole prompt compressed, answer prefix "
               "included), question (context + question compressed, kvpress's "
               "compress_questions), agnostic (the context alone compressed)");
  flags.Double("kv-gib", &f.kv_gib, "cuda: KV pool for every copy of a prompt, GiB");
  flags.String("out", &f.out, "output folder (default bench/out/eval-<suite>-<split>)");
  flags.Int("threads", &f.threads, "CPU threads; 0 uses every hardware thread");
  flags.String(
      "methods", &f.methods,
      "compressed methods, comma-separated (full always runs): streaming, snapkv, "
      "pyramidkv, adakv (AdaKV over SnapKV, alpha 0.2), paper (xkv with the paper's "
      "allocator), xkv (the default allocator: heads with --calibration's head weights, "
      "else global); snapkv@kvpress, pyramidkv@kvpress, "
      "adakv@kvpress, streaming@kvpress: kvpress's settings (window 64, kernel 5); "
      "parameters as xkv:floor=0.25:cap=4:window=16:pool=max:kernel=31:sinks=4:recent=0; "
      "xkv:profile=reconstruct:mix=max scores by re-reading the context (KVzip); "
      "xkv:per_head=1 budgets per (layer, KV head); xkv:allocator=heads:hpow=1.5 per-model "
      "head budgets (shares w^hpow)");
  flags.String("split", &f.split, "dev (choose parameters here) or test (report here)");
  flags.String("budgets", &f.budgets, "KV budgets as fractions of full KV bytes");
  flags.Int("seed", &f.seed, "suite seed (text positions, keys, values); mixed with the split");
  flags.Int("limit", &f.limit, "at most this many prompts (0: all), spread over the suite");
  flags.Int("window", &f.window,
            "observation window w in [8, 64]: the last w tokens of what is compressed (the "
            "context's tail too when the question is shorter; methods may override)");
  flags.Int("reconstruct-chunk", &f.reconstruct_chunk,
            absl::StrCat("profile=reconstruct: context tokens re-read per step, in [",
                         kMinRereadChunk, ", ", kMaxRereadChunk, "]; 0: ", kGpuRereadChunk,
                         " on cuda (kvpress's KVzip), ", kCpuRereadChunk,
                         " on the cpu; each step's softmax spans the sinks, the chunk and the "
                         "re-reading input"));
  flags.Int("answer-tokens", &f.answer_tokens, "greedy answer length cap");
  flags.Int("fidelity-tokens", &f.fidelity_tokens,
            "teacher-forced continuation tokens for agreement, KL and NLL");
  flags.String("python", &f.python,
               "python with matplotlib (default: the scripts venv, $XKV_CACHE or ~/.cache/xkv)");
  flags.String("plot-script", &f.plot_script, "the plotting script");
  flags.Bool("plot", &f.plot, "write quality.png");
  flags.Bool("verbose", &f.verbose, "one line per prompt: sizes, timings, the full cache's answer");
  flags.Bool("multi-question", &f.multi_question,
             "several questions over one compressed context: each multikey / multiquery context "
             "is compressed once without a question, then each needle's key is asked alone on "
             "its own copy of the cache (--modes is not used)");
  flags.String("calibration", &f.calibration,
               "per-layer sensitivity weights from `xkv calibrate` for the xkv methods (global "
               "allocator; a method's calib=0 opts out, calib=1 insists); checked against --model");
  if (auto code = flags.ParseOrExitCode(argc, argv, 2)) return *code;
  if (f.answer_tokens < 1 || f.fidelity_tokens < 1) {
    return Fail(absl::InvalidArgumentError("--answer-tokens and --fidelity-tokens must be >= 1"));
  }
  if (!f.export_prompts.empty()) {
    if (!f.prompts.empty()) {
      return Fail(absl::InvalidArgumentError("--prompts and --export-prompts exclude each other"));
    }
    if (absl::Status s = ExportPrompts(f); !s.ok()) return Fail(s);
    return 0;
  }
  const std::string out_dir =
      !f.out.empty() ? f.out : absl::StrCat("bench/out/eval-", f.suite, "-", f.split);
  if (absl::Status s = Evaluate(f, out_dir); !s.ok()) return Fail(s);
  return 0;
}

}  // namespace xkv
