// OpenAI response shapes: chat.completion / text_completion objects, their streamed chunks as
// server-sent events (`data: {chunk}\n\n` … `data: [DONE]\n\n`), and `usage` with the KV figures
// of xkv (bytes held vs a full cache, retention, per-layer sizes on request).
#ifndef XKV_HTTP_OPENAI_RESPONSE_H_
#define XKV_HTTP_OPENAI_RESPONSE_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/types/span.h"
#include "http/openai_request.h"
#include "model/sampler.h"
#include "xkv/v1/generation.pb.h"

namespace xkv {

// What every object of one response repeats.
struct ResponseMeta {
  OpenAiEndpoint endpoint = OpenAiEndpoint::kChatCompletions;
  std::string id;  // chatcmpl-… / cmpl-…
  int64_t created = 0;
  std::string model;
  bool include_usage = false;  // streams: a last chunk with usage (stream_options.include_usage)
  bool kv_layers = false;      // usage.xkv.layers
  bool logprobs = false;       // choices carry "logprobs" objects
  std::function<std::string(int32_t)> token_bytes;  // a token's bytes (the tokenizer's)
};

struct ChoiceResult {
  std::string text;
  xkv::v1::Usage usage;
  std::vector<SampledLogprobs> logprobs;  // one per generated token, when asked
};

// "stop" (EOS or a stop string), "length" (max_tokens or the context).
const char* FinishReasonName(xkv::v1::FinishReason reason);

// The non-streamed response object.
std::string CompletionBody(const ResponseMeta& meta, const std::vector<ChoiceResult>& choices);

inline constexpr char kSseDone[] = "data: [DONE]\n\n";
// Chat only: the first chunk of a choice, {"role": "assistant", "content": ""}.
std::string RoleChunkEvent(const ResponseMeta& meta, int index);
// `logprobs`: the chunk's tokens (meta.logprobs); `text_offset`: the completion's bytes before
// them, advanced past them (completions' text_offset).
std::string TextChunkEvent(const ResponseMeta& meta, int index, const std::string& text,
                           absl::Span<const SampledLogprobs> logprobs, int64_t* text_offset);
std::string FinishChunkEvent(const ResponseMeta& meta, int index, xkv::v1::FinishReason reason);
// The usage chunk: no choices, usage over all of them.
std::string UsageChunkEvent(const ResponseMeta& meta, const std::vector<xkv::v1::Usage>& usages);
// An error after the stream began: `data: {"error": …}`.
std::string ErrorEvent(const std::string& error_body);

}  // namespace xkv

#endif  // XKV_HTTP_OPENAI_RESPONSE_H_
