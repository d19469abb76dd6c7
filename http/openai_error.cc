#include "http/openai_error.h"

#include <nlohmann/json.hpp>
#include <optional>

#include "absl/strings/cord.h"
#include "absl/strings/match.h"

namespace xkv {
namespace {

constexpr char kParamUrl[] = "xkv.dev/openai/param";
constexpr char kCodeUrl[] = "xkv.dev/openai/code";

// The request field a core validation message (coordinator/request_validation.cc) starts with.
std::optional<std::string> LeadingField(absl::string_view message) {
  static constexpr std::pair<const char*, const char*> kPrefixes[] = {
      {"max_tokens ", "max_tokens"},
      {"temperature ", "temperature"},
      {"top_p ", "top_p"},
      {"top_k ", "top_k"},
      {"n ", "n"},
      {"min_p ", "min_p"},
      {"logprobs ", "logprobs"},
      {"presence_penalty ", "presence_penalty"},
      {"frequency_penalty ", "frequency_penalty"},
      {"repetition_penalty ", "repetition_penalty"},
      {"stop string", "stop"},
      {"chat message", "messages"},
      {"chat has no messages", "messages"},
      {"prompt", "prompt"},
      {"the prompt", "prompt"},
      {"retention", "xkv.retention"},
      {"budget_", "xkv"},
      {"a retention target", "xkv.retention"},
      {"unknown KV policy", "xkv.policy"},
      {"unknown profile mode", "xkv.profile_mode"},
      {"set at most one KV", "xkv"},
  };
  for (const auto& [prefix, field] : kPrefixes) {
    if (absl::StartsWith(message, prefix)) return field;
  }
  return std::nullopt;
}

struct Shape {
  int http_status;
  const char* type;
};

Shape ShapeOf(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kInvalidArgument:
      return {400, "invalid_request_error"};
    case absl::StatusCode::kUnauthenticated:
      return {401, "authentication_error"};
    case absl::StatusCode::kNotFound:
      return {404, "invalid_request_error"};
    case absl::StatusCode::kOutOfRange:
      return {413, "invalid_request_error"};
    case absl::StatusCode::kResourceExhausted:
      return {429, "rate_limit_error"};
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kCancelled:
      return {503, "service_unavailable"};
    case absl::StatusCode::kDeadlineExceeded:
      return {504, "timeout"};
    default:
      return {500, "server_error"};
  }
}

}  // namespace

absl::Status FieldError(absl::StatusCode code, absl::string_view param, absl::string_view message,
                        absl::string_view openai_code) {
  absl::Status s(code, message);
  if (!param.empty()) s.SetPayload(kParamUrl, absl::Cord(param));
  if (!openai_code.empty()) s.SetPayload(kCodeUrl, absl::Cord(openai_code));
  return s;
}

OpenAiErrorReply ToOpenAiError(const absl::Status& status) {
  const Shape shape = ShapeOf(status.code());
  nlohmann::json error = {{"message", std::string(status.message())},
                          {"type", shape.type},
                          {"param", nullptr},
                          {"code", nullptr}};
  if (auto p = status.GetPayload(kParamUrl)) {
    error["param"] = std::string(*p);
  } else if (shape.http_status == 400) {
    if (std::optional<std::string> f = LeadingField(status.message())) error["param"] = *f;
  }
  if (auto c = status.GetPayload(kCodeUrl)) error["code"] = std::string(*c);
  // The JSON library replaces invalid UTF-8 (an echoed value) instead of throwing.
  return {shape.http_status, nlohmann::json{{"error", error}}.dump(
                                 -1, ' ', false, nlohmann::json::error_handler_t::replace)};
}

}  // namespace xkv
