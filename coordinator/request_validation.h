// Every bad-request check of the public Generate and Admin APIs (DESIGN.md §5): each failure is
// INVALID_ARGUMENT with a message that names the field, the value and the allowed range. The
// checks that need the prompt's token count run after tokenization (ValidateTokenCounts).
//
// Wire defaults: max_tokens and top_p have explicit presence (generation.proto); when unset the
// adapter fills the service defaults (max_tokens 0 here = the default, replaced in Submit), and an
// explicit max_tokens of 0 is rejected by the adapter (ValidatePresence).
#ifndef XKV_COORDINATOR_REQUEST_VALIDATION_H_
#define XKV_COORDINATOR_REQUEST_VALIDATION_H_

#include <cstdint>
#include <string_view>

#include "absl/status/status.h"
#include "allocator/kv_spec.h"
#include "coordinator/generate_params.h"

namespace xkv {

// True when `text` is well-formed UTF-8 (no overlongs, surrogates or code points > U+10FFFF).
bool IsValidUtf8(std::string_view text);

// Input present and non-empty, valid UTF-8 everywhere (prompt, messages, stop strings), chat
// roles, max_tokens >= 1, temperature finite and >= 0, top_p in (0, 1], min_p in [0, 1], the
// presence / frequency penalties in [-2, 2], repetition_penalty finite and > 0, logprobs in [-1,
// 20], the KV override (with allocator/kv_spec.h's ValidateKvOverride, the same rules as
// Admin.SetPolicy).
absl::Status ValidateGenerateParams(const GenerateParams& params);

// After tokenization: the prompt has >= 1 token and prompt + max_tokens fits the context.
absl::Status ValidateTokenCounts(int64_t prompt_tokens, int64_t max_tokens, int64_t context_length);

}  // namespace xkv

#endif  // XKV_COORDINATOR_REQUEST_VALIDATION_H_
