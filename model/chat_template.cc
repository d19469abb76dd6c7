#include "model/chat_template.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace xkv {

absl::StatusOr<std::string> ApplyChatTemplate(absl::Span<const ChatMessage> messages,
                                              bool add_generation_prompt) {
  size_t size = 64;
  for (size_t i = 0; i < messages.size(); ++i) {
    const std::string& role = messages[i].role;
    if (role != "system" && role != "user" && role != "assistant") {
      return absl::InvalidArgumentError(absl::StrFormat(
          "chat template: message %d has role \"%s\" (want system, user or assistant)", i, role));
    }
    size += role.size() + messages[i].content.size() + 32;
  }
  std::string out;
  out.reserve(size + kSmolLm2DefaultSystemPrompt.size());
  if (!messages.empty() && messages[0].role != "system") {
    out += "<|im_start|>system\n";
    out += kSmolLm2DefaultSystemPrompt;
    out += "<|im_end|>\n";
  }
  for (const ChatMessage& m : messages) {
    absl::StrAppend(&out, "<|im_start|>", m.role, "\n", m.content, "<|im_end|>\n");
  }
  if (add_generation_prompt) out += "<|im_start|>assistant\n";
  return out;
}

std::string_view SmolLm2ChatTemplateSource() {
  return "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
         "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
         "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
         "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
         "{{ '<|im_start|>assistant\n' }}{% endif %}";
}

bool IsSupportedChatTemplate(std::string_view template_source) {
  return template_source == SmolLm2ChatTemplateSource();
}

}  // namespace xkv
