// `xkv generate`: one prompt through the in-process CPU engine, text streamed to stdout.
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "model/chat_template.h"
#include "model/generator.h"
#include "model/loaded_model.h"
#include "model/sampler.h"
#include "tools/commands.h"
#include "tools/flag_set.h"

namespace xkv {
namespace {

struct GenerateFlags {
  std::string model = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
  std::string prompt;
  std::string system;
  bool chat = false;
  int64_t max_tokens = 128;
  double temperature = 0;
  int64_t top_k = 0;
  double top_p = 1.0;
  int64_t seed = 0;
  int64_t threads = 0;
  std::string stop;
};

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "xkv generate: %s\n", std::string(status.message()).c_str());
  return 1;
}

absl::StatusOr<std::vector<int32_t>> PromptIds(const GenerateFlags& f, const Tokenizer& tok) {
  if (f.prompt.empty()) return absl::InvalidArgumentError("--prompt is empty");
  if (!f.chat) return tok.Encode(f.prompt, /*parse_special=*/false);
  std::vector<ChatMessage> messages;
  if (!f.system.empty()) messages.push_back({"system", f.system});
  messages.push_back({"user", f.prompt});
  absl::StatusOr<std::string> text = ApplyChatTemplate(messages, /*add_generation_prompt=*/true);
  if (!text.ok()) return text.status();
  return tok.Encode(*text, /*parse_special=*/true);
}

}  // namespace

int RunGenerate(int argc, char** argv) {
  GenerateFlags f;
  FlagSet flags(
      "generate",
      "Generates a continuation of --prompt (or a chat answer with --chat) and streams it "
      "to stdout;\nprompt and generation speed go to stderr at the end.");
  flags.String("model", &f.model, "GGUF model file");
  flags.String("prompt", &f.prompt, "prompt text (required)");
  flags.Bool("chat", &f.chat, "wrap the prompt in the model's chat template as a user message");
  flags.String("system", &f.system, "system message for --chat (default: the template's own)");
  flags.Int("max-tokens", &f.max_tokens, "maximum tokens to generate");
  flags.Double("temperature", &f.temperature, "sampling temperature; 0 is greedy");
  flags.Int("top-k", &f.top_k, "keep the k most likely tokens; 0 disables");
  flags.Double("top-p", &f.top_p, "nucleus sampling mass in (0, 1]; 1 disables");
  flags.Int("seed", &f.seed, "random seed for sampling (reproducible)");
  flags.Int("threads", &f.threads, "CPU threads; 0 uses every hardware thread");
  flags.String("stop", &f.stop, "stop strings, separated by '|' (not printed)");
  if (absl::Status s = flags.Parse(argc, argv, 2); !s.ok()) return Fail(s);
  if (flags.help_requested()) {
    std::fputs(flags.Usage().c_str(), stdout);
    return 0;
  }
  if (f.max_tokens < 0) return Fail(absl::InvalidArgumentError("--max-tokens must be >= 0"));
  SamplingParams sampling{static_cast<float>(f.temperature), static_cast<int>(f.top_k),
                          static_cast<float>(f.top_p), static_cast<uint64_t>(f.seed)};
  if (absl::Status s = ValidateSamplingParams(sampling); !s.ok()) return Fail(s);

  absl::StatusOr<LoadedModel> loaded = LoadModel(f.model, static_cast<int>(f.threads));
  if (!loaded.ok()) return Fail(loaded.status());
  absl::StatusOr<std::vector<int32_t>> ids = PromptIds(f, *loaded->tokenizer);
  if (!ids.ok()) return Fail(ids.status());
  if (ids->empty()) return Fail(absl::InvalidArgumentError("the prompt encodes to no tokens"));
  if (static_cast<int64_t>(ids->size()) + f.max_tokens > loaded->config.context_length) {
    return Fail(absl::InvalidArgumentError(
        "prompt tokens + --max-tokens exceed the model's context length"));
  }

  GenerationRequest request;
  request.prompt = *ids;
  request.max_tokens = static_cast<int>(f.max_tokens);
  request.sampling = sampling;
  if (!f.stop.empty()) request.stop = absl::StrSplit(f.stop, '|', absl::SkipEmpty());
  GeneratorOptions options;
  const Tokenizer* tok = loaded->tokenizer.get();
  options.token_bytes = [tok](int32_t id) { return tok->TokenBytes(id); };
  Generator generator(loaded->model.get(), options);

  using Clock = std::chrono::steady_clock;
  const Clock::time_point start = Clock::now();
  Clock::time_point first = start;
  int64_t generated = 0;
  auto on_token = [&](int, int32_t token, std::string_view bytes) {
    if (token >= 0 && generated++ == 0) first = Clock::now();
    std::fwrite(bytes.data(), 1, bytes.size(), stdout);
    std::fflush(stdout);
  };
  absl::StatusOr<std::vector<GenerationResult>> results =
      generator.Generate({&request, 1}, on_token);
  const Clock::time_point end = Clock::now();
  std::fputc('\n', stdout);
  if (!results.ok()) return Fail(results.status());
  const double prefill_s = std::chrono::duration<double>(first - start).count();
  const double decode_s = std::chrono::duration<double>(end - first).count();
  std::fprintf(
      stderr,
      "\nprompt: %zu tokens, %.1f tokens/s | generation: %lld tokens, %.1f tokens/s | "
      "load %.2f s\n",
      ids->size(), prefill_s > 0 ? ids->size() / prefill_s : 0.0, static_cast<long long>(generated),
      decode_s > 0 && generated > 1 ? (generated - 1) / decode_s : 0.0, loaded->load_seconds);
  return 0;
}

}  // namespace xkv
