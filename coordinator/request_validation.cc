#include "coordinator/request_validation.h"

#include <cmath>
#include <limits>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace xkv {
namespace {

absl::Status Invalid(const std::string& message) { return absl::InvalidArgumentError(message); }

// Byte offset of the first invalid UTF-8 sequence, or -1.
int64_t FirstInvalidUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = s[i];
    int len = 0;
    uint32_t cp = 0;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      len = 2, cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3, cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4, cp = c & 0x07;
    } else {
      return static_cast<int64_t>(i);
    }
    if (i + len > s.size()) return static_cast<int64_t>(i);
    for (int k = 1; k < len; ++k) {
      const unsigned char cc = s[i + k];
      if ((cc & 0xC0) != 0x80) return static_cast<int64_t>(i);
      cp = (cp << 6) | (cc & 0x3F);
    }
    const uint32_t min_cp[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min_cp[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
      return static_cast<int64_t>(i);
    }
    i += len;
  }
  return -1;
}

absl::Status CheckUtf8(std::string_view text, const std::string& field) {
  const int64_t bad = FirstInvalidUtf8(text);
  if (bad < 0) return absl::OkStatus();
  return Invalid(
      absl::StrCat(field, " is not valid UTF-8 (bad byte sequence at offset ", bad, ")"));
}

absl::Status ValidateInput(const GenerateParams& p) {
  if (!p.prompt_ids.empty()) {  // the ids' range is the tokenizer's (Coordinator::Tokenize)
    if (p.chat || !p.prompt.empty()) {
      return Invalid("send one of prompt text, chat messages or prompt token ids");
    }
    return absl::OkStatus();
  }
  if (!p.chat) {
    if (p.prompt.empty()) return Invalid("prompt is empty; send prompt text or chat messages");
    return CheckUtf8(p.prompt, "prompt");
  }
  if (p.messages.empty()) return Invalid("chat has no messages; send at least one message");
  bool any_content = false;
  for (size_t i = 0; i < p.messages.size(); ++i) {
    const ChatMessage& m = p.messages[i];
    if (m.role != "system" && m.role != "user" && m.role != "assistant") {
      return Invalid(absl::StrCat("chat message ", i, " has role '", m.role,
                                  "'; expected system, user or assistant"));
    }
    if (absl::Status s = CheckUtf8(m.content, absl::StrCat("chat message ", i, " content"));
        !s.ok()) {
      return s;
    }
    any_content = any_content || !m.content.empty();
  }
  if (!any_content) return Invalid("prompt is empty: every chat message has empty content");
  return absl::OkStatus();
}

// The sampling values go to the stages as 32-bit floats (worker.proto's WorkerSampling): a double
// beyond float's range would arrive as inf (the conversion itself is undefined) and one below its
// smallest normal as 0 (which reads as "off" for top_p and min_p). The wires carry floats already;
// an in-process caller's 1e300 passed here and the last stage refused the step that carried it,
// failing the other requests of that step too.
absl::Status CheckFloatWire(const char* name, double v) {
  const double magnitude = std::abs(v);
  if (v == 0 || (magnitude >= std::numeric_limits<float>::min() &&
                 magnitude <= std::numeric_limits<float>::max())) {
    return absl::OkStatus();
  }
  return Invalid(absl::StrCat(
      name, " is ", v, "; it must be 0 or a 32-bit float of magnitude within [",
      std::numeric_limits<float>::min(), ", ", std::numeric_limits<float>::max(), "]"));
}

absl::Status ValidateSampling(const GenerateParams& p) {
  if (p.max_tokens <= 0) {
    return Invalid(absl::StrCat("max_tokens is ", p.max_tokens, "; it must be >= 1"));
  }
  for (const auto& [name, v] :
       {std::pair{"temperature", p.temperature}, std::pair{"top_p", p.top_p},
        std::pair{"min_p", p.min_p}, std::pair{"presence_penalty", p.presence_penalty},
        std::pair{"frequency_penalty", p.frequency_penalty},
        std::pair{"repetition_penalty", p.repetition_penalty}}) {
    if (std::isfinite(v)) RETURN_IF_ERROR(CheckFloatWire(name, v));
  }
  if (!std::isfinite(p.temperature) || p.temperature < 0) {
    return Invalid(absl::StrCat("temperature is ", p.temperature,
                                "; it must be a finite number >= 0 (0 is greedy)"));
  }
  if (!(p.top_p > 0 && p.top_p <= 1)) {
    return Invalid(absl::StrCat("top_p is ", p.top_p, "; it must be in (0, 1]"));
  }
  if (!(p.min_p >= 0 && p.min_p <= 1)) {
    return Invalid(absl::StrCat("min_p is ", p.min_p, "; it must be in [0, 1] (0 is off)"));
  }
  if (p.logprobs < -1 || p.logprobs > 20) {
    return Invalid(absl::StrCat("logprobs is ", p.logprobs,
                                "; it must be in [0, 20] (alternatives per token)"));
  }
  for (const auto& [name, v] : {std::pair{"presence_penalty", p.presence_penalty},
                                std::pair{"frequency_penalty", p.frequency_penalty}}) {
    if (!(v >= -2 && v <= 2)) {
      return Invalid(absl::StrCat(name, " is ", v, "; it must be in [-2, 2] (0 is off)"));
    }
  }
  if (!(std::isfinite(p.repetition_penalty) && p.repetition_penalty > 0)) {
    return Invalid(absl::StrCat("repetition_penalty is ", p.repetition_penalty,
                                "; it must be a finite number > 0 (1 is off)"));
  }
  for (size_t i = 0; i < p.stop.size(); ++i) {
    if (p.stop[i].empty()) return Invalid(absl::StrCat("stop string ", i, " is empty"));
    if (absl::Status s = CheckUtf8(p.stop[i], absl::StrCat("stop string ", i)); !s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace

bool IsValidUtf8(std::string_view text) { return FirstInvalidUtf8(text) < 0; }

absl::Status ValidateGenerateParams(const GenerateParams& params) {
  if (absl::Status s = ValidateInput(params); !s.ok()) return s;
  if (absl::Status s = ValidateSampling(params); !s.ok()) return s;
  return ValidateKvOverride(params.kv);
}

absl::Status ValidateTokenCounts(int64_t prompt_tokens, int64_t max_tokens,
                                 int64_t context_length) {
  if (prompt_tokens < 1) return Invalid("prompt is empty: it encodes to no tokens");
  if (prompt_tokens >= context_length) {
    return Invalid(absl::StrCat("the prompt has ", prompt_tokens,
                                " tokens; the model's context length is ", context_length,
                                " (prompt + max_tokens must fit)"));
  }
  // Not prompt_tokens + max_tokens: an in-process caller's max_tokens is any int64 (the wires
  // carry int32), and the overflowed sum passed this check (such a request was admitted without
  // a bound and, once the pool was full, blocked every request behind it).
  if (max_tokens > context_length - prompt_tokens) {
    return Invalid(absl::StrCat("max_tokens is ", max_tokens, "; with the prompt's ", prompt_tokens,
                                " tokens it must be <= ", context_length - prompt_tokens,
                                " (context length ", context_length, ")"));
  }
  return absl::OkStatus();
}

}  // namespace xkv
