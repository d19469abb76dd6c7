// OpenAI-shaped errors: {"error": {"message", "type", "param", "code"}} with the HTTP status of an
// absl::Status (400 INVALID_ARGUMENT, 401 UNAUTHENTICATED, 404 NOT_FOUND, 413 OUT_OF_RANGE of the
// body, 429 RESOURCE_EXHAUSTED, 503 UNAVAILABLE, 504 DEADLINE_EXCEEDED, 500 otherwise). The
// offending request field travels with the status (FieldError) or, for the core's validation
// messages, is their leading field name.
#ifndef XKV_HTTP_OPENAI_ERROR_H_
#define XKV_HTTP_OPENAI_ERROR_H_

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace xkv {

// `code` with the request field `param` and an optional OpenAI error code (e.g. model_not_found).
absl::Status FieldError(absl::StatusCode code, absl::string_view param, absl::string_view message,
                        absl::string_view openai_code = "");

struct OpenAiErrorReply {
  int http_status = 500;
  std::string body;  // the JSON error object
};

OpenAiErrorReply ToOpenAiError(const absl::Status& status);

}  // namespace xkv

#endif  // XKV_HTTP_OPENAI_ERROR_H_
