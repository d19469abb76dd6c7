// The coordinator's internal form of a Generate request (proto-free): what the gRPC adapter fills
// from GenerateRequest and the core validates (coordinator/request_validation.h) and runs.
#ifndef XKV_COORDINATOR_GENERATE_PARAMS_H_
#define XKV_COORDINATOR_GENERATE_PARAMS_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "allocator/kv_spec.h"
#include "model/chat_template.h"

namespace xkv {

struct GenerateParams {
  std::string request_id;
  // Exactly one of: raw prompt text, chat messages (rendered with the chat template), or token ids.
  std::string prompt;
  std::vector<ChatMessage> messages;
  bool chat = false;  // true: `messages` is the input
  // Token ids instead of text (in-process callers: the parity tests); each in [0, vocab).
  std::vector<int32_t> prompt_ids;
  int64_t max_tokens = 0;  // 0 = the service default
  double temperature = 0;  // 0: greedy; must be >= 0 and finite
  double top_p = 1;        // (0, 1]
  int64_t top_k = 0;       // <= 0: disabled
  // min_p in [0, 1] (0: off); presence / frequency penalties in [-2, 2]; logprobs in [0, 20]: each
  // token's logprob and this many alternatives (-1: none).
  double min_p = 0;
  double presence_penalty = 0;
  double frequency_penalty = 0;
  double repetition_penalty = 1;  // > 0 and finite; 1: off (prompt and output tokens, vLLM's)
  int64_t logprobs = -1;
  uint64_t seed = 0;
  std::vector<std::string> stop;
  bool ignore_eos = false;
  KvPolicyOverride kv;  // allocator/kv_spec.h
  absl::Time deadline = absl::InfiniteFuture();
};

}  // namespace xkv

#endif  // XKV_COORDINATOR_GENERATE_PARAMS_H_
