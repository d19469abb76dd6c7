// OpenAI request bodies (POST /v1/chat/completions, /v1/completions) → the gRPC API's
// xkv::v1::GenerateRequest, so that both APIs share one conversion (ParamsFromProto) and one
// validation (coordinator/request_validation.h). This file checks only what JSON adds: syntax,
// field types and integer ranges of the wire, unknown fields, and the fields this server does not
// implement (a 400 naming them, never silently ignored).
#ifndef XKV_HTTP_OPENAI_REQUEST_H_
#define XKV_HTTP_OPENAI_REQUEST_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "xkv/v1/generation.pb.h"

namespace xkv {

enum class OpenAiEndpoint { kChatCompletions, kCompletions };

struct OpenAiRequest {
  OpenAiEndpoint endpoint = OpenAiEndpoint::kChatCompletions;
  std::string model;
  xkv::v1::GenerateRequest generate;  // n (sampling.n) choices: ChoicesFromProto
  bool has_seed = false;              // false: the caller picks a random seed
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  bool kv_layers = false;      // xkv.layers: per-layer KV sizes in usage
};

// INVALID_ARGUMENT (with the field as FieldError's param) for malformed JSON, wrong types, unknown
// or unsupported fields.
absl::StatusOr<OpenAiRequest> ParseOpenAiRequest(absl::string_view body, OpenAiEndpoint endpoint);

}  // namespace xkv

#endif  // XKV_HTTP_OPENAI_REQUEST_H_
