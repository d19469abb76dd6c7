// Chat templates: renders a conversation into the prompt text the model was trained on.
// No Jinja engine: a GGUF's tokenizer.chat_template is classified into a known family the way
// llama.cpp's llm_chat_detect_template does (substring heuristics on the Jinja text, or a template
// that is just a family name), and each family is rendered by hand as llama.cpp's
// llm_chat_apply_template renders it (src/llama-chat.cpp), plus the model's own default system
// prompt where a ChatML template writes one (SmolLM2, Qwen 2/2.5). Families:
//
//   chatml             <|im_start|>ROLE\nCONTENT<|im_end|>\n ... <|im_start|>assistant\n
//   llama3             <|start_header_id|>ROLE<|end_header_id|>\n\nCONTENT<|eot_id|> ...
//   llama2, llama2-sys, llama2-sys-bos, llama2-sys-strip     [INST] ... [/INST]ANSWER</s>
//   mistral-v1, mistral-v3, mistral-v3-tekken, mistral-v7, mistral-v7-tekken
//   phi3               <|ROLE|>\nCONTENT<|end|>\n ... <|assistant|>\n
//   gemma              <start_of_turn>user\n...<end_of_turn>\n<start_of_turn>model\n
//
// A template of another family llama.cpp knows is UNIMPLEMENTED naming it; an unrecognised
// template is INVALID_ARGUMENT. Either way the caller fails --chat (never a silent ChatML); the
// `--chat-template NAME` flags pick a family by name instead.
#ifndef XKV_MODEL_CHAT_TEMPLATE_H_
#define XKV_MODEL_CHAT_TEMPLATE_H_

#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "model/gguf.h"

namespace xkv {

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

enum class ChatTemplateFamily {
  kChatMl,
  kLlama3,
  kLlama2,
  kLlama2Sys,
  kLlama2SysBos,
  kLlama2SysStrip,
  kMistralV1,
  kMistralV3,
  kMistralV3Tekken,
  kMistralV7,
  kMistralV7Tekken,
  kPhi3,
  kGemma,
};

class ChatTemplate {
 public:
  // The family of a tokenizer.chat_template text, as llm_chat_detect_template. ChatML keeps the
  // default system prompt the template writes, if any.
  static absl::StatusOr<ChatTemplate> Detect(std::string_view source);
  // A family by its llama.cpp name (the list above); INVALID_ARGUMENT naming the allowed names.
  static absl::StatusOr<ChatTemplate> FromName(std::string_view name);
  // The template a model's chat requests use: `name` when not empty, else Detect on the GGUF's
  // tokenizer.chat_template (INVALID_ARGUMENT when the GGUF has none).
  static absl::StatusOr<ChatTemplate> ForModel(const GgufFile& file, std::string_view name);
  // SmolLM2-Instruct's template (ChatML with its default system prompt).
  static ChatTemplate SmolLm2();

  // Renders `messages`; with `add_generation_prompt` the text ends where the assistant's answer
  // starts (families without one, the [INST] ones, end after the last user turn anyway).
  // INVALID_ARGUMENT for a role other than system/user/assistant. The text has no BOS: the
  // tokenizer adds it (Tokenizer::Encode with add_special).
  absl::StatusOr<std::string> Apply(absl::Span<const ChatMessage> messages,
                                    bool add_generation_prompt) const;

  ChatTemplateFamily family() const { return family_; }
  std::string_view name() const;
  // The token text that ends an assistant turn: "<|im_end|>", "<|eot_id|>", "</s>", "<|end|>" or
  // "<end_of_turn>" (model/stop_tokens.h makes it a stop token).
  std::string_view end_of_turn() const;
  // ChatML only: the system prompt inserted when the conversation does not start with one.
  const std::string& default_system_prompt() const { return default_system_; }

 private:
  ChatTemplate(ChatTemplateFamily family, std::string default_system)
      : family_(family), default_system_(std::move(default_system)) {}

  ChatTemplateFamily family_;
  std::string default_system_;
};

// The system prompt SmolLM2's template inserts when the first message is not a system message.
inline constexpr std::string_view kSmolLm2DefaultSystemPrompt =
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

// ChatTemplate::SmolLm2().Apply: the template of the evaluation tools, which run SmolLM2 only.
absl::StatusOr<std::string> ApplyChatTemplate(absl::Span<const ChatMessage> messages,
                                              bool add_generation_prompt);

// The exact tokenizer.chat_template text of SmolLM2-*-Instruct.
std::string_view SmolLm2ChatTemplateSource();

}  // namespace xkv

#endif  // XKV_MODEL_CHAT_TEMPLATE_H_
