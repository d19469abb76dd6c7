// `xkv generate`: one prompt through the service's own pipeline (architecture.md §2) in this
// process: an embedded Coordinator over one in-process stage (CPU, or `--device cuda:N`), the
// same chat handling, stop rules, sampling and XKV steps as `xkv serve`; text streamed to stdout.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "base/status_macros.h"
#include "coordinator/coordinator.h"
#include "coordinator/request_validation.h"
#include "embedded/in_process_stage_client.h"
#include "embedded/local_generation.h"
#include "model/layer_calibration.h"
#include "model/reconstruct_scorer.h"
#include "model/sampler.h"
#include "tools/commands.h"
#include "tools/flag_set.h"
#include "worker/stage_engine_factory.h"

namespace xkv {
namespace {

// Prompt tokens of one prefill step (the Generator this path replaced used the same chunk).
constexpr int64_t kPrefillChunk = 2048;

struct GenerateFlags {
  std::string model = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
  std::string prompt;
  std::string system;
  bool chat = false;
  std::string chat_template;  // empty: the GGUF's own
  int64_t max_tokens = 128;
  double temperature = 0;
  int64_t top_k = 0;
  double top_p = 1.0;
  int64_t seed = 0;
  int64_t threads = 0;
  std::string stop;
  std::string numerics = "ggml";
  std::string device = "cpu";
  // XKV
  std::string policy = "full";
  int64_t budget_tokens = -1;
  double retention = -1;
  int64_t budget_bytes = -1;
  double budget_fraction = -1;
  std::string profile = "per_request";
  int64_t reconstruct_chunk = 0;  // 0: DefaultRereadChunk of --device
  std::string allocator;          // empty: DefaultAllocator (allocator/kv_spec.h)
  double floor = 0.75;
  double cap = AllocatorParams{}.cap;
  std::string per_head = "0";
  int64_t window = 8;
  std::string granularity = "kv_head";
  bool show_allocation = false;
  std::string calibration;  // per-layer weights (model/layer_calibration.h)
};

// The CLI's KV default: the full cache (a retention target of 0.9 once --policy xkv is named),
// with --calibration's weights.
KvSettings CliDefaultKv(CalibrationWeights weights) {
  KvSettings kv;
  kv.policy = PolicyKind::kFull;
  kv.allocator.layer_weights = std::move(weights.layers);
  kv.allocator.head_weights = std::move(weights.heads);
  kv.allocator.kind_by_default = true;
  kv.allocator.floor_by_default = true;
  return kv;
}

// The request's KV settings from the flags, onto the CLI's default (the full cache; a retention
// target of 0.9 for xkv), checked here with the service's own rules (allocator/kv_spec.h) so that
// a bad flag fails before the model loads. INVALID_ARGUMENT naming the flag and the allowed range.
absl::StatusOr<KvPolicyOverride> KvOverride(const GenerateFlags& f, const FlagSet& flags,
                                            const CalibrationWeights& weights) {
  KvPolicyOverride ov;
  ov.policy = f.policy;
  ov.profile_mode = f.profile;
  ov.allocator = f.allocator;
  if (flags.WasSet("budget-tokens")) ov.budget_tokens = f.budget_tokens;
  if (flags.WasSet("budget-bytes")) ov.budget_bytes = f.budget_bytes;
  if (flags.WasSet("budget-fraction")) ov.budget_fraction = f.budget_fraction;
  if (flags.WasSet("retention")) ov.retention = f.retention;
  if (flags.WasSet("floor")) ov.floor = f.floor;
  if (flags.WasSet("cap")) ov.cap = f.cap;
  if (flags.WasSet("per-head")) {
    ASSIGN_OR_RETURN(ov.per_head, ParsePerHead(f.per_head));
  }
  const bool has_target = ov.budget_tokens || ov.budget_bytes || ov.budget_fraction || ov.retention;
  ASSIGN_OR_RETURN(const PolicyKind policy, ParsePolicy(f.policy));
  if (!has_target && policy != PolicyKind::kFull && policy != PolicyKind::kXkv) {
    return absl::InvalidArgumentError(
        "--policy " + f.policy +
        " needs --budget-tokens N, --budget-bytes M or --budget-fraction F");
  }
  ASSIGN_OR_RETURN(const KvSettings kv, ApplyOverride(CliDefaultKv(weights), ov));
  RETURN_IF_ERROR(CheckHeadWeights(kv));
  RETURN_IF_ERROR(ValidateWindow(f.window, "--window"));
  if (f.granularity != "kv_head" && f.granularity != "query_head") {
    return absl::InvalidArgumentError("--score-granularity '" + f.granularity +
                                      "' is not one of kv_head, query_head");
  }
  return ov;
}

// --show-allocation: each layer's cache at the end of the request, from the usage the service
// reports (kept prefix + window + decoded tokens per KV head).
void PrintAllocation(const xkv::v1::Usage& u, int window) {
  std::fprintf(stderr, "\nallocation: policy %s, profile %s, prompt %d tokens (window %d)\n",
               u.policy().c_str(), u.profile_mode().empty() ? "-" : u.profile_mode().c_str(),
               u.prompt_tokens(), window);
  std::fprintf(stderr, "layer  tokens held  bytes held\n");
  for (const xkv::v1::LayerCacheSize& l : u.layers()) {
    std::fprintf(stderr, "%5d  %11lld  %10lld\n", l.layer(),
                 static_cast<long long>(l.kept_tokens()), static_cast<long long>(l.bytes()));
  }
  std::fprintf(stderr, "KV bytes held %lld of a full cache's %lld (%.1f%%)",
               static_cast<long long>(u.kv_bytes_held()), static_cast<long long>(u.kv_bytes_full()),
               u.kv_bytes_full() > 0 ? 100.0 * u.kv_bytes_held() / u.kv_bytes_full() : 100.0);
  if (u.has_retention()) std::fprintf(stderr, ", retention %.4f", u.retention());
  if (!u.reachable()) std::fprintf(stderr, " (retention target unreachable: everything kept)");
  std::fprintf(stderr, "\n");
}

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "xkv generate: %s\n", std::string(status.message()).c_str());
  return 1;
}

using WallClock = std::chrono::steady_clock;

void PrintSpeed(int64_t prompt, int64_t generated, WallClock::time_point start,
                WallClock::time_point first, WallClock::time_point end, double load_s) {
  const double prefill_s = std::chrono::duration<double>(first - start).count();
  const double decode_s = std::chrono::duration<double>(end - first).count();
  std::fprintf(stderr,
               "\nprompt: %lld tokens, %.1f tokens/s | generation: %lld tokens, %.1f tokens/s | "
               "load %.2f s\n",
               static_cast<long long>(prompt), prefill_s > 0 ? prompt / prefill_s : 0.0,
               static_cast<long long>(generated),
               decode_s > 0 && generated > 1 ? (generated - 1) / decode_s : 0.0, load_s);
}

// The request of the flags (the coordinator renders the chat template and tokenizes).
GenerateParams MakeParams(const GenerateFlags& f, KvPolicyOverride kv) {
  GenerateParams p;
  if (f.chat) {
    p.chat = true;
    if (!f.system.empty()) p.messages.push_back({"system", f.system});
    p.messages.push_back({"user", f.prompt});
  } else {
    p.prompt = f.prompt;
  }
  p.max_tokens = f.max_tokens;
  p.temperature = f.temperature;
  p.top_k = f.top_k;
  p.top_p = f.top_p;
  p.seed = static_cast<uint64_t>(f.seed);
  if (!f.stop.empty()) p.stop = absl::StrSplit(f.stop, '|', absl::SkipEmpty());
  p.kv = std::move(kv);
  return p;
}

// The embedded service: one in-process stage on --device, one request at a time.
absl::StatusOr<std::unique_ptr<Coordinator>> StartPipeline(const GenerateFlags& f,
                                                           CalibrationWeights weights,
                                                           int64_t reread_chunk) {
  InProcessStageSettings settings;
  if (f.numerics == "exact") settings.numerics = Numerics::kExact;
  if (f.numerics == "bf16") settings.numerics = Numerics::kBf16;
  settings.num_threads = static_cast<int>(
      f.threads > 0 ? f.threads : std::max(1u, std::thread::hardware_concurrency()));
  ASSIGN_OR_RETURN(std::vector<std::unique_ptr<StageClient>> stages,
                   MakeInProcessStages(1, {f.device}, settings));
  CoordinatorOptions o;
  o.model_path = f.model;
  o.kv = CliDefaultKv(std::move(weights));
  o.window = static_cast<int>(f.window);
  o.query_head_scores = f.granularity == "query_head";
  o.reread_chunk = reread_chunk;
  o.chat_template = f.chat_template;
  o.seed = static_cast<uint64_t>(f.seed);
  o.scheduler.max_running = 1;
  o.scheduler.step_token_budget = kPrefillChunk;
  o.scheduler.prefill_chunk = kPrefillChunk;
  o.health_interval = absl::ZeroDuration();  // no monitor thread: nothing else uses the stage
  o.shutdown_grace = absl::ZeroDuration();
  return Coordinator::Start(o, std::move(stages));
}

void DeclareGenerateFlags(GenerateFlags& f, FlagSet& flags) {
  flags.String("model", &f.model, "GGUF model file");
  flags.String("prompt", &f.prompt, "prompt text (required)");
  flags.Bool("chat", &f.chat, "wrap the prompt in the model's chat template as a user message");
  flags.String("system", &f.system, "system message for --chat (default: the template's own)");
  flags.String("chat-template", &f.chat_template,
               "chat template family for --chat (chatml, llama3, llama2, mistral-v3, phi3, gemma, "
               "...); default: detected from the GGUF's tokenizer.chat_template");
  flags.Int("max-tokens", &f.max_tokens, "maximum tokens to generate");
  flags.Double("temperature", &f.temperature, "sampling temperature; 0 is greedy");
  flags.Int("top-k", &f.top_k, "keep the k most likely tokens; 0 disables");
  flags.Double("top-p", &f.top_p, "nucleus sampling mass in (0, 1]; 1 disables");
  flags.Int("seed", &f.seed, "random seed for sampling (reproducible)");
  flags.Int("threads", &f.threads, "CPU threads; 0 uses every hardware thread");
  flags.String("stop", &f.stop, "stop strings, separated by '|' (not printed)");
  flags.String("numerics", &f.numerics,
               "ggml (llama.cpp's CPU arithmetic, bit-exact on Q4_1/Q8_0 Llama files: the same "
               "logits and text as llama.cpp), exact (fp32) or bf16 (the CUDA engine's rounding, "
               "its CPU reference)");
  flags.String("device", &f.device,
               "cpu (the CPU engine) or cuda:N (the CUDA engine on GPU N; CUDA builds)");
  flags.String("policy", &f.policy, "KV policy: full, streaming, snapkv, pyramidkv, xkv");
  flags.Int("budget-tokens", &f.budget_tokens,
            "total kept prompt tokens over all layers (beyond each layer's window)");
  flags.Double("retention", &f.retention,
               "xkv: average attention retention target in (0, 1] (default 0.9 for xkv)");
  flags.Int("budget-bytes", &f.budget_bytes, "total KV bytes of the kept prompt tokens");
  flags.Double("budget-fraction", &f.budget_fraction, "kept fraction of the prompt prefix, (0, 1]");
  flags.String(
      "profile", &f.profile,
      "xkv profile mode: per_request, one_pass, sampled:RHO, reconstruct (KVzip re-reading)");
  flags.Int("reconstruct-chunk", &f.reconstruct_chunk,
            absl::StrCat("--profile reconstruct: prompt tokens re-read per step, in [",
                         kMinRereadChunk, ", ", kMaxRereadChunk, "]; 0: ", kGpuRereadChunk,
                         " on cuda (kvpress's KVzip), ", kCpuRereadChunk, " on the cpu"));
  flags.String("allocator", &f.allocator,
               "xkv budget split: global (raw scores, per-layer floor and cap around the uniform "
               "share), paper (gains divided by each layer's total, no floors) or heads (per "
               "(layer, KV head) budgets from --calibration's head weights, --floor of the "
               "uniform share each); not given: heads for a size target (--budget-tokens, "
               "--budget-bytes, --budget-fraction) when --calibration has head weights, else "
               "global");
  flags.Double("floor", &f.floor,
               "global allocator: per-layer floor as a fraction of the uniform share, [0, 1] "
               "(1 = uniform SnapKV budgets)");
  flags.Double("cap", &f.cap,
               "global allocator: per-layer cap (per (layer, KV head) with --per-head 1) as a "
               "multiple of the uniform share, [1, 64]; 64 with --floor 0 ranks every layer and "
               "head together (KVzip's split)");
  flags.String("per-head", &f.per_head,
               "xkv, global allocator: budgets per (layer, KV head) instead of per layer, 1 or 0 "
               "(--floor then applies per head; CPU engine)");
  flags.Int("window", &f.window,
            "observation window w in [8, 64] (last prompt tokens, always kept)");
  flags.String("score-granularity", &f.granularity,
               "kv_head (GQA-true selection) or query_head (the paper's code, for comparison)");
  flags.String("calibration", &f.calibration,
               "xkv: per-layer sensitivity weights (global allocator) and head weights "
               "(--allocator heads) from `xkv calibrate` (e.g. <model>.xkv-calib.json), checked "
               "against --model");
  flags.Bool("show-allocation", &f.show_allocation,
             "print each layer's kept tokens and the KV bytes held vs a full cache");
}

}  // namespace

int RunGenerate(int argc, char** argv) {
  GenerateFlags f;
  FlagSet flags(
      "generate",
      "Generates a continuation of --prompt (or a chat answer with --chat) and streams it "
      "to stdout;\nprompt and generation speed go to stderr at the end.");
  DeclareGenerateFlags(f, flags);
  if (auto code = flags.ParseOrExitCode(argc, argv, 2)) return *code;
  if (f.prompt.empty()) return Fail(absl::InvalidArgumentError("--prompt is empty"));
  if (f.max_tokens < 1) {
    return Fail(absl::InvalidArgumentError("--max-tokens must be >= 1"));
  }
  // As the service's API: a negative temperature or top-k is an error, not a synonym of greedy
  // or of "no top-k" (0 is both).
  if (!(f.temperature >= 0)) {
    return Fail(absl::InvalidArgumentError("--temperature must be >= 0 (0 is greedy)"));
  }
  if (f.top_k < 0) return Fail(absl::InvalidArgumentError("--top-k must be >= 0 (0 disables)"));
  SamplingParams sampling{static_cast<float>(f.temperature), static_cast<int>(f.top_k),
                          static_cast<float>(f.top_p), static_cast<uint64_t>(f.seed)};
  if (absl::Status s = ValidateSamplingParams(sampling); !s.ok()) return Fail(s);
  if (f.numerics != "ggml" && f.numerics != "exact" && f.numerics != "bf16") {
    return Fail(absl::InvalidArgumentError("--numerics '" + f.numerics +
                                           "' is not one of ggml, exact, bf16"));
  }
  CalibrationWeights weights;
  if (!f.calibration.empty()) {
    absl::StatusOr<CalibrationWeights> w = LoadWeightsForModel(f.calibration, f.model);
    if (!w.ok()) return Fail(w.status());
    weights = *std::move(w);
  }
  absl::StatusOr<KvPolicyOverride> kv = KvOverride(f, flags, weights);
  if (!kv.ok()) return Fail(kv.status());
  absl::StatusOr<int> device = ParseStageDevice(f.device);
  if (!device.ok()) return Fail(device.status());
  if (*device >= 0 && flags.WasSet("numerics")) {
    return Fail(absl::InvalidArgumentError(
        "--numerics applies to the CPU engine (the CUDA engine computes in bf16/fp32)"));
  }
  absl::StatusOr<int64_t> reread_chunk =
      RereadChunkFromFlag(f.reconstruct_chunk, *device >= 0, "--reconstruct-chunk");
  if (!reread_chunk.ok()) return Fail(reread_chunk.status());
  GenerateParams params = MakeParams(f, *std::move(kv));
  if (absl::Status s = ValidateGenerateParams(params); !s.ok()) return Fail(s);

  const WallClock::time_point load_start = WallClock::now();
  absl::StatusOr<std::unique_ptr<Coordinator>> coordinator =
      StartPipeline(f, std::move(weights), *reread_chunk);
  if (!coordinator.ok()) return Fail(coordinator.status());
  const WallClock::time_point start = WallClock::now();
  const double load_s = std::chrono::duration<double>(start - load_start).count();
  WallClock::time_point first = start;
  int64_t generated = 0;
  absl::StatusOr<std::vector<LocalResult>> results =
      GenerateLocally(**coordinator, {std::move(params)},
                      [&](size_t, const std::string& text, absl::Span<const int32_t> tokens) {
                        if (generated == 0 && !tokens.empty()) first = WallClock::now();
                        generated += static_cast<int64_t>(tokens.size());
                        std::fwrite(text.data(), 1, text.size(), stdout);
                        std::fflush(stdout);
                      });
  const WallClock::time_point end = WallClock::now();
  if (!results.ok()) return Fail(results.status());
  std::fputc('\n', stdout);
  const LocalResult& r = (*results)[0];
  if (!r.status.ok()) return Fail(r.status);
  if (f.show_allocation) PrintAllocation(r.usage, static_cast<int>(f.window));
  PrintSpeed(r.usage.prompt_tokens(), generated, start, first, end, load_s);
  return 0;
}

}  // namespace xkv
