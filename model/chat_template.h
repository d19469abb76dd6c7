// Chat templates: renders a conversation into the prompt text the model was trained on.
// Implemented by hand (no Jinja engine) for the templates this service supports; today SmolLM2's
// ChatML template (GGUF key tokenizer.chat_template of SmolLM2-*-Instruct), reproduced exactly:
//
//   {% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}
//   {{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging
//   Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] +
//   '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n'
//   }}{% endif %}
#ifndef XKV_MODEL_CHAT_TEMPLATE_H_
#define XKV_MODEL_CHAT_TEMPLATE_H_

#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace xkv {

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

// The system prompt SmolLM2's template inserts when the first message is not a system message.
inline constexpr std::string_view kSmolLm2DefaultSystemPrompt =
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

// Renders `messages` with SmolLM2's ChatML template; with `add_generation_prompt` the text ends
// with "<|im_start|>assistant\n". An empty conversation renders as the generation prompt alone (as
// the template does). INVALID_ARGUMENT for a role other than system/user/assistant.
absl::StatusOr<std::string> ApplyChatTemplate(absl::Span<const ChatMessage> messages,
                                              bool add_generation_prompt);

// The exact tokenizer.chat_template text that ApplyChatTemplate implements.
std::string_view SmolLm2ChatTemplateSource();

// True when a GGUF's tokenizer.chat_template is the one ApplyChatTemplate implements (callers
// should refuse, or warn about, other templates).
bool IsSupportedChatTemplate(std::string_view template_source);

}  // namespace xkv

#endif  // XKV_MODEL_CHAT_TEMPLATE_H_
