// `xkv calibrate`: per-layer sensitivity weights of one model (bench/layer_sensitivity.h), measured
// on the eval suite's DEV split only, written beside the model (model/layer_calibration.h) for
// `xkv eval / generate / serve --calibration`.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "bench/eval_prompts.h"
#include "bench/eval_tasks.h"
#include "bench/layer_sensitivity.h"
#include "model/layer_calibration.h"
#include "model/model_config.h"
#include "tools/commands.h"
#include "tools/flag_set.h"
#include "tools/suite_text.h"
#include "worker/stage_engine_factory.h"

namespace xkv {
namespace {

struct CalibrateFlags {
  std::string model = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
  std::string out;  // default: <model>.xkv-calib.json
  std::string device = "cpu";
  double fraction = 0.1;
  int64_t prompts = 16;
  int64_t length = 1024;
  int64_t seed = 1;
  int64_t fidelity_tokens = 32;
  int64_t threads = 0;
  double kv_gib = 4.0;
  int64_t heads = 0;  // 1: also the per-(layer, KV head) weights of allocator `heads`
};

absl::Status Calibrate(const CalibrateFlags& f) {
  const auto start = std::chrono::steady_clock::now();
  ASSIGN_OR_RETURN(const int device, ParseStageDevice(f.device));
  if (!(f.fraction > 0.0 && f.fraction < 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--fraction is ", f.fraction, "; it must be in (0, 1)"));
  }
  if (f.prompts < 1 || f.prompts > 1000) {
    return absl::InvalidArgumentError(
        absl::StrCat("--prompts is ", f.prompts, "; it must be in [1, 1000]"));
  }
  if (f.heads != 0 && f.heads != 1) {
    return absl::InvalidArgumentError(absl::StrCat("--heads is ", f.heads, "; it must be 0 or 1"));
  }
  if (f.fidelity_tokens < 1 || f.fidelity_tokens > 64) {
    return absl::InvalidArgumentError(
        absl::StrCat("--fidelity-tokens is ", f.fidelity_tokens, "; it must be in [1, 64]"));
  }
  // Built-in prompts have ~100 continuation tokens; the suite's lengths start at 1024.
  if (f.length < 256 || f.length > 8000) {
    return absl::InvalidArgumentError(
        absl::StrCat("--length is ", f.length, "; it must be in [256, 8000]"));
  }
  ASSIGN_OR_RETURN(ModelText text, OpenModelText(f.model));
  ASSIGN_OR_RETURN(const ModelConfig config, ReadModelConfig(*text.file));
  LayerCalibration c;
  ASSIGN_OR_RETURN(c.model, FingerprintModel(*text.file, config));
  c.fraction = f.fraction;
  c.seed = f.seed;
  c.split = "dev";  // never the test split: the weights are a parameter
  c.fidelity_tokens = static_cast<int>(f.fidelity_tokens);

  SuiteOptions suite = QuickSuite();
  suite.lengths = {f.length};
  suite.seed = static_cast<uint64_t>(f.seed);
  suite.repeats = static_cast<int>((f.prompts + suite.tasks.size() - 1) / suite.tasks.size());
  ASSIGN_OR_RETURN(const TextCorpus corpus, LoadCorpus(CorpusPaths(Split::kDev)));
  ASSIGN_OR_RETURN(std::vector<TaskRecord> records,
                   BuildSuite(corpus, suite, Split::kDev, text.encode, text.render));
  Limit(f.prompts, &records);
  std::vector<EvalPrompt> prompts;
  for (const TaskRecord& r : records) {
    ASSIGN_OR_RETURN(EvalPrompt p,
                     TokenizeRecord(r, text.encode, text.render, text.tokenizer->vocab_size()));
    prompts.push_back(std::move(p));
  }
  c.prompts = static_cast<int>(prompts.size());

  StageOptions so;
  so.model_path = f.model;
  so.device = f.device;
  so.num_threads = f.threads > 0 ? static_cast<int>(f.threads)
                                 : std::max(1u, std::thread::hardware_concurrency());
  if (device >= 0) so.kv_capacity_bytes = static_cast<int64_t>(f.kv_gib * (1 << 30));
  ASSIGN_OR_RETURN(std::unique_ptr<StageEngine> engine, LoadStageEngine(so));
  std::fprintf(stderr,
               "xkv calibrate: %d layers, %d dev prompts of %lld tokens, each layer compressed "
               "alone to %.0f%%, %s\n",
               config.n_layers, c.prompts, static_cast<long long>(f.length), f.fraction * 100,
               engine->device().c_str());
  SensitivityOptions options;
  options.fraction = f.fraction;
  options.fidelity_tokens = c.fidelity_tokens;
  options.progress = [](int done, int total) {
    std::fprintf(stderr, "\rxkv calibrate: %d/%d prompts", done, total);
    std::fflush(stderr);
  };
  ASSIGN_OR_RETURN(c.mean_kl, MeasureLayerSensitivity(engine.get(), prompts, options));
  c.weights = SensitivityWeights(c.mean_kl);
  if (f.heads == 1) {
    std::fprintf(stderr,
                 "\nxkv calibrate: each of the %d x %d KV heads alone cut to %.0f%% "
                 "(sinks + recent), KL on the answers\n",
                 config.n_layers, config.n_kv_heads, f.fraction * 100);
    std::vector<std::vector<int32_t>> answers;
    for (const EvalPrompt& p : prompts) {
      ASSIGN_OR_RETURN(std::vector<int32_t> a, text.encode(absl::StrCat(" ", p.answers[0]), false));
      answers.push_back(std::move(a));
    }
    HeadSensitivityOptions head_options;
    head_options.fraction = f.fraction;
    head_options.progress = options.progress;
    ASSIGN_OR_RETURN(c.head_mean_kl,
                     MeasureHeadSensitivity(engine.get(), prompts, answers, head_options));
    c.head_weights = SensitivityWeights(c.head_mean_kl);
  }
  const std::string out = !f.out.empty() ? f.out : DefaultCalibrationPath(f.model);
  RETURN_IF_ERROR(WriteCalibration(out, c));
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::fprintf(stderr, "\nxkv calibrate: wrote %s in %.0f s; weights (layer 0 first):", out.c_str(),
               seconds);
  for (double w : c.weights) std::fprintf(stderr, " %.2f", w);
  std::fprintf(stderr, "\n");
  if (!c.head_weights.empty()) {
    std::fprintf(stderr,
                 "xkv calibrate: head weights (layer-major, %d per layer):", config.n_kv_heads);
    for (double w : c.head_weights) std::fprintf(stderr, " %.2f", w);
    std::fprintf(stderr, "\n");
  }
  return absl::OkStatus();
}

}  // namespace

int RunCalibrate(int argc, char** argv) {
  CalibrateFlags f;
  FlagSet flags("calibrate",
                "Measures each layer's sensitivity to compression once per model (LU-KV / "
                "BaKlaVa style): on\nthe eval suite's dev prompts, each layer alone keeps "
                "--fraction of its KV (xkv's scoring,\nevery other layer full) and the KL "
                "divergence to the full cache's next-token distributions\nover a real text "
                "continuation is measured. Writes the weights w_l = KL_l / mean KL (floored at\n"
                "0.01) beside the model for `xkv eval / generate / serve --calibration FILE`.");
  flags.String("model", &f.model, "GGUF model file");
  flags.String("out", &f.out, "calibration file (default: <model>.xkv-calib.json)");
  flags.String("device", &f.device, "cpu (the CPU engine) or cuda:N (the CUDA engine on GPU N)");
  flags.Double("fraction", &f.fraction, "kept fraction of the compressed layer's KV, in (0, 1)");
  flags.Int("prompts", &f.prompts, "dev prompts, spread over the suite's tasks, in [1, 1000]");
  flags.Int("length", &f.length, "prompt length in tokens, in [256, 8000]");
  flags.Int("seed", &f.seed, "suite seed (mixed with the dev split)");
  flags.Int("fidelity-tokens", &f.fidelity_tokens,
            "teacher-forced continuation tokens per prompt, in [1, 64]");
  flags.Int("threads", &f.threads, "CPU threads; 0 uses every hardware thread");
  flags.Double("kv-gib", &f.kv_gib, "cuda: KV pool, GiB");
  flags.Int("heads", &f.heads,
            "1: also each KV head's weight for --allocator heads (the head alone cut to sinks + "
            "recent,\nKL on the dev prompts' answers)");
  if (auto code = flags.ParseOrExitCode(argc, argv, 2)) return *code;
  if (absl::Status s = Calibrate(f); !s.ok()) {
    std::fprintf(stderr, "xkv calibrate: %s\n", std::string(s.message()).c_str());
    return 1;
  }
  return 0;
}

}  // namespace xkv
