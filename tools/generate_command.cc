// `xkv generate`: one prompt through the in-process engine (CPU, or `--device cuda:N`), text
// streamed to stdout.
#include <chrono>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "base/status_macros.h"
#include "model/chat_template.h"
#include "model/engine_generator.h"
#include "model/generator.h"
#include "model/gguf.h"
#include "model/kv_compressor.h"
#include "model/loaded_model.h"
#include "model/sampler.h"
#include "model/stop_tokens.h"
#include "model/tokenizer.h"
#include "tools/commands.h"
#include "tools/flag_set.h"
#include "worker/stage_engine_factory.h"

namespace xkv {
namespace {

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
  std::string allocator = "global";
  double floor = 0.75;
  int64_t window = 8;
  std::string granularity = "kv_head";
  bool show_allocation = false;
};

// The compressor options from the flags. INVALID_ARGUMENT naming the flag and the allowed range.
absl::StatusOr<KvCompressorOptions> CompressorOptions(const GenerateFlags& f,
                                                      const FlagSet& flags) {
  KvCompressorOptions o;
  // The same override and rules as a Generate request (allocator/kv_spec.h), onto the CLI's
  // default: the full cache, and a retention target of 0.9 for xkv.
  KvPolicyOverride ov;
  ov.policy = f.policy;
  ov.profile_mode = f.profile;
  ov.allocator = f.allocator;
  if (flags.WasSet("budget-tokens")) ov.budget_tokens = f.budget_tokens;
  if (flags.WasSet("budget-bytes")) ov.budget_bytes = f.budget_bytes;
  if (flags.WasSet("budget-fraction")) ov.budget_fraction = f.budget_fraction;
  if (flags.WasSet("retention")) ov.retention = f.retention;
  if (flags.WasSet("floor")) ov.floor = f.floor;
  const bool has_target = ov.budget_tokens || ov.budget_bytes || ov.budget_fraction || ov.retention;
  ASSIGN_OR_RETURN(const PolicyKind policy, ParsePolicy(f.policy));
  if (!has_target && policy != PolicyKind::kFull && policy != PolicyKind::kXkv) {
    return absl::InvalidArgumentError(
        "--policy " + f.policy +
        " needs --budget-tokens N, --budget-bytes M or --budget-fraction F");
  }
  KvSettings base;
  base.policy = PolicyKind::kFull;
  ASSIGN_OR_RETURN(o.kv, ApplyOverride(base, ov));
  RETURN_IF_ERROR(ValidateProfileFor(o.kv.profile, SpecEntry::kGenerate));
  RETURN_IF_ERROR(ValidateWindow(f.window, "--window"));
  o.importance.window = static_cast<int>(f.window);
  if (f.granularity == "query_head") {
    o.importance.granularity = ScoreGranularity::kQueryHead;
  } else if (f.granularity != "kv_head") {
    return absl::InvalidArgumentError("--score-granularity '" + f.granularity +
                                      "' is not one of kv_head, query_head");
  }
  o.seed = static_cast<uint64_t>(f.seed);
  return o;
}

void PrintAllocation(const AllocationReport& r) {
  std::fprintf(stderr, "\nallocation: policy %s, prompt %lld tokens (window %d)%s%s\n",
               std::string(PolicyName(r.policy)).c_str(), static_cast<long long>(r.prompt_len),
               r.window,
               r.compressed ? "" : ", not compressed: ", r.compressed ? "" : r.note.c_str());
  std::fprintf(stderr, "layer  kept prefix  tokens held  bytes held\n");
  for (const LayerAllocation& l : r.layers) {
    std::fprintf(stderr, "%5d  %11lld  %11lld  %10lld\n", l.layer,
                 static_cast<long long>(l.kept_prefix), static_cast<long long>(l.tokens_held),
                 static_cast<long long>(l.bytes_held));
  }
  std::fprintf(stderr, "KV bytes held %lld of a full cache's %lld (%.1f%%)",
               static_cast<long long>(r.kv_bytes_held), static_cast<long long>(r.kv_bytes_full),
               r.kv_bytes_full > 0 ? 100.0 * r.kv_bytes_held / r.kv_bytes_full : 100.0);
  if (r.average_retention) std::fprintf(stderr, ", retention %.4f", *r.average_retention);
  if (!r.reachable) std::fprintf(stderr, " (retention target unreachable: everything kept)");
  std::fprintf(stderr, "\n");
}

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "xkv generate: %s\n", std::string(status.message()).c_str());
  return 1;
}

// The model's chat template (with --chat or --chat-template) and its stop tokens.
struct ChatSetup {
  std::optional<ChatTemplate> chat;
  std::vector<int32_t> stop;
};

absl::StatusOr<ChatSetup> MakeChatSetup(const GenerateFlags& f, const GgufFile& file,
                                        const Tokenizer& tok) {
  ChatSetup s;
  if (f.chat || !f.chat_template.empty()) {
    ASSIGN_OR_RETURN(s.chat, ChatTemplate::ForModel(file, f.chat_template));
  }
  s.stop = StopTokens(tok, s.chat ? &*s.chat : nullptr);
  return s;
}

absl::StatusOr<std::vector<int32_t>> PromptIds(const GenerateFlags& f, const Tokenizer& tok,
                                               const ChatSetup& chat) {
  if (f.prompt.empty()) return absl::InvalidArgumentError("--prompt is empty");
  if (!f.chat) return tok.Encode(f.prompt, /*parse_special=*/false);
  std::vector<ChatMessage> messages;
  if (!f.system.empty()) messages.push_back({"system", f.system});
  messages.push_back({"user", f.prompt});
  absl::StatusOr<std::string> text = chat.chat->Apply(messages, /*add_generation_prompt=*/true);
  if (!text.ok()) return text.status();
  return tok.Encode(*text, /*parse_special=*/true);
}

using Clock = std::chrono::steady_clock;

void PrintSpeed(size_t prompt, int64_t generated, Clock::time_point start, Clock::time_point first,
                Clock::time_point end, double load_s) {
  const double prefill_s = std::chrono::duration<double>(first - start).count();
  const double decode_s = std::chrono::duration<double>(end - first).count();
  std::fprintf(stderr,
               "\nprompt: %zu tokens, %.1f tokens/s | generation: %lld tokens, %.1f tokens/s | "
               "load %.2f s\n",
               prompt, prefill_s > 0 ? prompt / prefill_s : 0.0, static_cast<long long>(generated),
               decode_s > 0 && generated > 1 ? (generated - 1) / decode_s : 0.0, load_s);
}

// The request of the flags: the prompt (checked against the context) and the sampling.
absl::StatusOr<GenerationRequest> MakeRequest(const GenerateFlags& f, const Tokenizer& tok,
                                              const ChatSetup& chat, int64_t context_length,
                                              const SamplingParams& sampling) {
  ASSIGN_OR_RETURN(std::vector<int32_t> ids, PromptIds(f, tok, chat));
  if (ids.empty()) return absl::InvalidArgumentError("the prompt encodes to no tokens");
  if (static_cast<int64_t>(ids.size()) + f.max_tokens > context_length) {
    return absl::InvalidArgumentError(
        absl::StrCat("the prompt's ", ids.size(), " tokens + --max-tokens ", f.max_tokens,
                     " exceed the model's context length of ", context_length, " tokens"));
  }
  GenerationRequest request;
  request.prompt = std::move(ids);
  request.max_tokens = static_cast<int>(f.max_tokens);
  request.sampling = sampling;
  if (!f.stop.empty()) request.stop = absl::StrSplit(f.stop, '|', absl::SkipEmpty());
  return request;
}

// Streams the generated bytes to stdout and times the first token.
struct Streamer {
  Clock::time_point start = Clock::now(), first = start;
  int64_t generated = 0;
  TokenCallback callback() {
    return [this](int, int32_t token, std::string_view bytes) {
      if (token >= 0 && generated++ == 0) first = Clock::now();
      std::fwrite(bytes.data(), 1, bytes.size(), stdout);
      std::fflush(stdout);
    };
  }
};

// `--device cuda:N`: the whole model on one GPU through EngineGenerate; eviction one_pass or, for
// the other profile modes, the two-pass (per_request) way.
int GenerateOnDevice(const GenerateFlags& f, const KvCompressorOptions& c,
                     const SamplingParams& sampling) {
  const Clock::time_point load_start = Clock::now();
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open(f.model);
  if (!file.ok()) return Fail(file.status());
  absl::StatusOr<ModelConfig> config = ReadModelConfig(**file);
  if (!config.ok()) return Fail(config.status());
  absl::StatusOr<std::unique_ptr<Tokenizer>> tok = Tokenizer::FromGguf(**file);
  if (!tok.ok()) return Fail(tok.status());
  absl::StatusOr<ChatSetup> chat = MakeChatSetup(f, **file, **tok);
  if (!chat.ok()) return Fail(chat.status());
  StageOptions so;
  so.model_path = f.model;
  so.device = f.device;
  so.importance = ScoringFor(c.kv, c.importance);
  absl::StatusOr<std::unique_ptr<StageEngine>> engine = LoadStageEngine(so);
  if (!engine.ok()) return Fail(engine.status());
  const double load_s = std::chrono::duration<double>(Clock::now() - load_start).count();
  absl::StatusOr<GenerationRequest> request =
      MakeRequest(f, **tok, *chat, config->context_length, sampling);
  if (!request.ok()) return Fail(request.status());
  EngineGeneratorOptions o;
  const Tokenizer* t = tok->get();
  o.token_bytes = [t](int32_t id) { return t->TokenBytes(id); };
  o.eos_tokens = chat->stop;
  o.compress = c.kv.policy != PolicyKind::kFull || f.show_allocation;
  o.kv = c.kv;
  o.importance = c.importance;
  Streamer stream;
  absl::StatusOr<GenerationResult> result =
      EngineGenerate(**engine, 1, *request, o, stream.callback());
  const Clock::time_point end = Clock::now();
  std::fputc('\n', stdout);
  if (!result.ok()) return Fail(result.status());
  if (f.show_allocation && result->allocation) PrintAllocation(*result->allocation);
  PrintSpeed(request->prompt.size(), stream.generated, stream.start, stream.first, end, load_s);
  return 0;
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
  flags.String("profile", &f.profile,
               "xkv profile mode: per_request, one_pass, sampled:RHO (reconstruct: xkv eval only)");
  flags.String("allocator", &f.allocator,
               "xkv budget split: global (raw scores, per-layer floor and cap around the uniform "
               "share) or paper (gains divided by each layer's total, no floors)");
  flags.Double("floor", &f.floor,
               "global allocator: per-layer floor as a fraction of the uniform share, [0, 1] "
               "(1 = uniform SnapKV budgets)");
  flags.Int("window", &f.window,
            "observation window w in [8, 64] (last prompt tokens, always kept)");
  flags.String("score-granularity", &f.granularity,
               "kv_head (GQA-true selection) or query_head (the paper's code, for comparison)");
  flags.Bool("show-allocation", &f.show_allocation,
             "print each layer's kept tokens and the KV bytes held vs a full cache");
}

// The CPU engine's path: Generator (+ KvCompressor), tokens streamed to stdout.
int GenerateOnCpu(const GenerateFlags& f, const KvCompressorOptions& compression,
                  const SamplingParams& sampling) {
  absl::StatusOr<std::unique_ptr<KvCompressor>> compressor = KvCompressor::Create(compression);
  if (!compressor.ok()) return Fail(compressor.status());
  absl::StatusOr<LoadedModel> loaded = LoadModel(f.model, static_cast<int>(f.threads),
                                                 f.numerics == "exact"  ? Numerics::kExact
                                                 : f.numerics == "bf16" ? Numerics::kBf16
                                                                        : Numerics::kGgml);
  if (!loaded.ok()) return Fail(loaded.status());
  absl::StatusOr<ChatSetup> chat = MakeChatSetup(f, *loaded->file, *loaded->tokenizer);
  if (!chat.ok()) return Fail(chat.status());
  absl::StatusOr<GenerationRequest> request =
      MakeRequest(f, *loaded->tokenizer, *chat, loaded->config.context_length, sampling);
  if (!request.ok()) return Fail(request.status());
  GeneratorOptions options;
  options.eos_tokens = chat->stop;
  const Tokenizer* tok = loaded->tokenizer.get();
  options.token_bytes = [tok](int32_t id) { return tok->TokenBytes(id); };
  if (compression.kv.policy != PolicyKind::kFull || f.show_allocation) {
    options.compressor = compressor->get();
  }
  Generator generator(loaded->model.get(), options);

  Streamer stream;
  absl::StatusOr<std::vector<GenerationResult>> results =
      generator.Generate({&*request, 1}, stream.callback());
  const Clock::time_point end = Clock::now();
  std::fputc('\n', stdout);
  if (!results.ok()) return Fail(results.status());
  if (f.show_allocation && (*results)[0].allocation) PrintAllocation(*(*results)[0].allocation);
  PrintSpeed(request->prompt.size(), stream.generated, stream.start, stream.first, end,
             loaded->load_seconds);
  return 0;
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
  if (f.max_tokens < 0) return Fail(absl::InvalidArgumentError("--max-tokens must be >= 0"));
  // As the service's API: a negative temperature or top-k is an error, not a synonym of greedy
  // or of "no top-k" (0 is both).
  if (f.temperature < 0) {
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
  absl::StatusOr<KvCompressorOptions> compression = CompressorOptions(f, flags);
  if (!compression.ok()) return Fail(compression.status());
  absl::StatusOr<int> device = ParseStageDevice(f.device);
  if (!device.ok()) return Fail(device.status());
  if (*device < 0) return GenerateOnCpu(f, *compression, sampling);
  if (flags.WasSet("numerics")) {
    return Fail(absl::InvalidArgumentError(
        "--numerics applies to the CPU engine (the CUDA engine computes in bf16/fp32)"));
  }
  return GenerateOnDevice(f, *compression, sampling);
}

}  // namespace xkv
