// The tokens that end generation for a model, in one place for the CLI and the service: the
// tokenizer's end-of-sequence, end-of-turn and end-of-message ids (tokenizer.ggml.eos_token_id,
// eot_token_id, eom_token_id, or the texts llama.cpp infers them from) and the chat template's
// end-of-turn token ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "</s>").
#ifndef XKV_MODEL_STOP_TOKENS_H_
#define XKV_MODEL_STOP_TOKENS_H_

#include <cstdint>
#include <vector>

#include "model/chat_template.h"
#include "model/tokenizer.h"

namespace xkv {

// Distinct ids in the order eos, eot, eom, template end-of-turn; `chat` may be null (no template).
std::vector<int32_t> StopTokens(const Tokenizer& tokenizer, const ChatTemplate* chat);

}  // namespace xkv

#endif  // XKV_MODEL_STOP_TOKENS_H_
