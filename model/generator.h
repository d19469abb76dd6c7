// A simple single-process generation loop over LlamaModel (all layers in this process): prefill
// every prompt (batched, chunked), then decode all live requests together, one token each per
// step, until EOS, max_tokens, the context limit, or a stop string. Token ids in, ids out; text
// only for stop strings and streaming (through GeneratorOptions::token_bytes).
#ifndef XKV_MODEL_GENERATOR_H_
#define XKV_MODEL_GENERATOR_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "model/kv_cache.h"
#include "model/kv_compressor.h"
#include "model/llama_model.h"
#include "model/sampler.h"

namespace xkv {

enum class FinishReason { kEos, kLength, kStop };

struct GenerationRequest {
  std::vector<int32_t> prompt;  // >= 1 token ids
  int max_tokens = 16;          // >= 0 generated tokens
  SamplingParams sampling;
  std::vector<std::string> stop;  // stop strings, matched on decoded bytes; never emitted
  bool ignore_eos = false;
};

struct GenerationResult {
  // Generated ids. EOS is not included; the token that completed a stop string is.
  std::vector<int32_t> tokens;
  std::string text;  // emitted bytes (everything from the stop string on is cut)
  FinishReason finish = FinishReason::kLength;
  int64_t prompt_tokens = 0;
  int64_t kv_bytes_held = 0;  // cache bytes at the end
  // What the compressor did to this request's cache (GeneratorOptions::compressor set).
  std::optional<AllocationReport> allocation;
};

// Called once per generated token with the bytes that became safe to emit (possibly empty while a
// stop string might be starting), and once more with token = -1 for held-back bytes released at
// the end (EOS or length). Never called for EOS itself.
using TokenCallback = std::function<void(int request, int32_t token, std::string_view bytes)>;

struct GeneratorOptions {
  // Bytes of one token; required when any request has stop strings, else only used for text.
  std::function<std::string(int32_t)> token_bytes;
  std::vector<int32_t> eos_tokens;  // empty: the model config's eos_token
  int64_t prefill_chunk = 2048;     // max prompt tokens of one sequence per prefill step
  // Optional: runs after a request's prompt is fully prefilled, before decoding (e.g. XKV
  // eviction compacting the cache).
  std::function<absl::Status(int request, KvCache& cache)> after_prefill;
  // Optional: prefill through an XKV compressor (its policy, budget and profile mode) instead of
  // plain chunked prefill; every request of a Generate call is prefilled in one compressor batch.
  KvCompressor* compressor = nullptr;
};

class Generator {
 public:
  // `model` must hold every layer plus embedding and lm_head, and outlive the Generator.
  Generator(LlamaModel* model, GeneratorOptions options);

  absl::StatusOr<std::vector<GenerationResult>> Generate(
      absl::Span<const GenerationRequest> requests, const TokenCallback& on_token = nullptr);

 private:
  struct State;
  absl::Status Validate(absl::Span<const GenerationRequest> requests) const;
  absl::Status Prefill(std::vector<State>& states);
  absl::Status CompressedPrefill(std::vector<State>& states);
  absl::Status DecodeStep(std::vector<State>& states);
  // Handles a freshly sampled token: EOS / stop / length checks and streaming.
  void Accept(State& st, int32_t token);
  void Finish(State& st, FinishReason reason);
  bool IsEos(int32_t token) const;

  LlamaModel* model_;
  GeneratorOptions options_;
  TokenCallback on_token_;
};

// Stop-string matcher over a byte stream: Push returns the bytes that are safe to emit, holding
// back a suffix that may still become a stop string. Exposed for tests.
class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {}
  // Appends bytes; returns what can be emitted now. Sets *stopped when a stop string completed
  // (the returned bytes then end right before it, and later pushes are ignored).
  std::string Push(std::string_view bytes, bool* stopped);
  // Releases the held-back bytes (at the end of generation).
  std::string Flush();

 private:
  std::vector<std::string> stops_;
  std::string pending_;
  bool stopped_ = false;
};

}  // namespace xkv

#endif  // XKV_MODEL_GENERATOR_H_
