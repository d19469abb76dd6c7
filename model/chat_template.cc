#include "model/chat_template.h"

#include <cctype>
#include <optional>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"

namespace xkv {
namespace {

using F = ChatTemplateFamily;

struct Named {
  std::string_view name;
  F family;
};

// llama.cpp's names (LLM_CHAT_TEMPLATES) of the families this port renders.
constexpr Named kFamilies[] = {
    {"chatml", F::kChatMl},
    {"llama3", F::kLlama3},
    {"llama2", F::kLlama2},
    {"llama2-sys", F::kLlama2Sys},
    {"llama2-sys-bos", F::kLlama2SysBos},
    {"llama2-sys-strip", F::kLlama2SysStrip},
    {"mistral-v1", F::kMistralV1},
    {"mistral-v3", F::kMistralV3},
    {"mistral-v3-tekken", F::kMistralV3Tekken},
    {"mistral-v7", F::kMistralV7},
    {"mistral-v7-tekken", F::kMistralV7Tekken},
    {"phi3", F::kPhi3},
    {"gemma", F::kGemma},
};

std::string FamilyNames() {
  return absl::StrJoin(kFamilies, ", ",
                       [](std::string* out, const Named& n) { out->append(n.name); });
}

std::optional<F> FamilyOfName(std::string_view name) {
  for (const Named& n : kFamilies) {
    if (n.name == name) return n.family;
  }
  return std::nullopt;
}

// llama.cpp's trim: ASCII white space off both ends.
std::string Trim(std::string_view s) {
  size_t begin = 0, end = s.size();
  while (begin < end && std::isspace(static_cast<unsigned char>(s[begin]))) ++begin;
  while (end > begin && std::isspace(static_cast<unsigned char>(s[end - 1]))) --end;
  return std::string(s.substr(begin, end - begin));
}

// The family llm_chat_detect_template finds (in its order), or the llama.cpp name of a family this
// port does not render ("" when nothing matches).
struct Detection {
  std::optional<F> family;
  std::string_view other;
};

Detection DetectFamily(std::string_view t) {
  auto has = [t](std::string_view s) { return t.find(s) != std::string_view::npos; };
  if (has("<|im_start|>")) {
    if (has("<|im_sep|>")) return {std::nullopt, "phi4"};
    if (has("<end_of_utterance>")) return {std::nullopt, "smolvlm"};
    return {F::kChatMl, ""};
  }
  if (t.rfind("mistral", 0) == 0 || has("[INST]")) {
    if (has("[SYSTEM_PROMPT]")) return {F::kMistralV7, ""};
    if (has("' [INST] ' + system_message") || has("[AVAILABLE_TOOLS]")) {
      if (has(" [INST]")) return {F::kMistralV1, ""};
      if (has("\"[INST]\"")) return {F::kMistralV3Tekken, ""};
      return {F::kMistralV3, ""};
    }
    if (has("content.strip()")) return {F::kLlama2SysStrip, ""};
    if (has("bos_token + '[INST]")) return {F::kLlama2SysBos, ""};
    if (has("<<SYS>>")) return {F::kLlama2Sys, ""};
    return {F::kLlama2, ""};
  }
  if (has("<|assistant|>") && has("<|end|>")) return {F::kPhi3, ""};
  if (has("[gMASK]<sop>")) return {std::nullopt, "chatglm4"};
  if (has("<|assistant|>") && has("<|user|>")) {
    if (has("<|tool_declare|>")) return {std::nullopt, "exaone-moe"};
    return {std::nullopt, has("</s>") ? "falcon3" : "glmedge"};
  }
  if (has("<|{{ item['role'] }}|>") && has("<|begin_of_image|>")) return {std::nullopt, "glmedge"};
  if (has("<|user|>") && has("<|endoftext|>")) return {std::nullopt, "zephyr"};
  if (has("bos_token + message['role']")) return {std::nullopt, "monarch"};
  if (has("<start_of_turn>")) return {F::kGemma, ""};
  if (has("'\\n\\nAssistant: ' + eos_token")) return {std::nullopt, "orion"};
  if (has("GPT4 Correct ")) return {std::nullopt, "openchat"};
  if (has("USER: ") && has("ASSISTANT: ")) {
    return {std::nullopt, has("SYSTEM: ") ? "vicuna-orca" : "vicuna"};
  }
  if (has("### Instruction:") && has("<|EOT|>")) return {std::nullopt, "deepseek"};
  if (has("<|START_OF_TURN_TOKEN|>") && has("<|USER_TOKEN|>")) return {std::nullopt, "command-r"};
  if (has("<|start_header_id|>") && has("<|end_header_id|>")) return {F::kLlama3, ""};
  // The rest of llama.cpp's list, all families this port does not render: only their names.
  struct Other {
    std::string_view a, b, c, name;  // all of a, b, c (those not empty) in the template
  };
  static constexpr Other kOthers[] = {
      {"[gMASK]sop", "", "", "chatglm3"},
      {"<用户>", "", "", "minicpm"},
      {"'Assistant: ' + message['content'] + eos_token", "", "", "deepseek2"},
      {"<｜Assistant｜>", "<｜User｜>", "<｜end▁of▁sentence｜>", "deepseek3"},
      {"[|system|]", "[|assistant|]", "[|endofturn|]", "exaone3"},
      {"rwkv-world", "", "", "rwkv-world"},
      {"{{- 'User: ' + message['content']|trim + '\\n\\n' -}}", "", "", "rwkv-world"},
      {"<|start_of_role|>", "", "", "granite"},
      {"message['role'] + additional_special_tokens[0] + message['content'] + "
       "additional_special_tokens[1]",
       "", "", "gigachat"},
      {"<|role_start|>", "", "", "megrez"},
      {" Ассистент:", "", "", "yandex"},
      {"<role>ASSISTANT</role>", "", "", "bailing"},
      {"<|header_start|>", "<|header_end|>", "", "llama4"},
      {"<|endofuserprompt|>", "", "", "dots1"},
      {"<|extra_0|>", "<|extra_4|>", "", "hunyuan-moe"},
      {"<|start|>", "<|channel|>", "", "gpt-oss"},
      {"<｜hy_Assistant｜>", "", "", "hunyuan"},
      {"<|im_assistant|>assistant<|im_middle|>", "", "", "kimi-k2"},
      {"<seed:bos>", "", "", "seed_oss"},
      {"'Assistant: '  + message['content'] + '<|separator|>", "", "", "grok-2"},
      {"[unused9]系统：[unused10]", "", "", "pangu-embed"},
      {"<|begin|>", "<|end|>", "<|content|>", "solar-open"},
  };
  for (const Other& o : kOthers) {
    if (has(o.a) && (o.b.empty() || has(o.b)) && (o.c.empty() || has(o.c))) {
      return {std::nullopt, o.name};
    }
  }
  return {std::nullopt, ""};
}

// The system prompt a ChatML template writes as a literal when the conversation has none, e.g.
// SmolLM2's {{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, ...<|im_end|>\n'
// }}: the text between "<|im_start|>system" plus a newline and "<|im_end|>" when it is plain text.
std::string DefaultSystemPrompt(std::string_view t) {
  constexpr std::string_view kStart = "<|im_start|>system";
  for (size_t pos = t.find(kStart); pos != std::string_view::npos; pos = t.find(kStart, pos + 1)) {
    size_t begin = pos + kStart.size();
    if (t.substr(begin, 1) == "\n") {
      begin += 1;
    } else if (t.substr(begin, 2) == "\\n") {
      begin += 2;
    } else {
      continue;
    }
    const size_t end = t.find("<|im_end|>", begin);
    if (end == std::string_view::npos) continue;
    const std::string_view text = t.substr(begin, end - begin);
    if (text.empty() || text.find_first_of("'\"{}+") != std::string_view::npos) continue;
    std::string out;
    for (size_t i = 0; i < text.size(); ++i) {  // Jinja's escaped newlines
      if (text[i] == '\\' && i + 1 < text.size() && text[i + 1] == 'n') {
        out += '\n';
        ++i;
      } else {
        out += text[i];
      }
    }
    return out;
  }
  return "";
}

void ApplyMistral(F f, absl::Span<const ChatMessage> messages, std::string* out) {
  if (f == F::kMistralV7 || f == F::kMistralV7Tekken) {
    const char* space = f == F::kMistralV7 ? " " : "";
    for (const ChatMessage& m : messages) {
      if (m.role == "system") {
        absl::StrAppend(out, "[SYSTEM_PROMPT]", space, m.content, "[/SYSTEM_PROMPT]");
      } else if (m.role == "user") {
        absl::StrAppend(out, "[INST]", space, m.content, "[/INST]");
      } else {
        absl::StrAppend(out, space, m.content, "</s>");
      }
    }
    return;
  }
  const char* leading = f == F::kMistralV1 ? " " : "";
  const char* trailing = f == F::kMistralV3Tekken ? "" : " ";
  bool inside_turn = false;
  for (const ChatMessage& m : messages) {
    if (!inside_turn) {
      absl::StrAppend(out, leading, "[INST]", trailing);
      inside_turn = true;
    }
    if (m.role == "system") {
      absl::StrAppend(out, m.content, "\n\n");
    } else if (m.role == "user") {
      absl::StrAppend(out, m.content, leading, "[/INST]");
    } else {
      absl::StrAppend(out, trailing, f == F::kMistralV3 ? Trim(m.content) : m.content, "</s>");
      inside_turn = false;
    }
  }
}

void ApplyLlama2(F f, absl::Span<const ChatMessage> messages, std::string* out) {
  const bool system_supported = f != F::kLlama2;
  const bool bos_inside_history = f == F::kLlama2SysBos;
  const bool strip = f == F::kLlama2SysStrip;
  bool inside_turn = true;  // the first [INST] has no BOS
  *out += "[INST] ";
  for (const ChatMessage& m : messages) {
    const std::string content = strip ? Trim(m.content) : m.content;
    if (!inside_turn) {
      inside_turn = true;
      *out += bos_inside_history ? "<s>[INST] " : "[INST] ";
    }
    if (m.role == "system") {
      if (system_supported) {
        absl::StrAppend(out, "<<SYS>>\n", content, "\n<</SYS>>\n\n");
      } else {
        absl::StrAppend(out, content, "\n");
      }
    } else if (m.role == "user") {
      absl::StrAppend(out, content, " [/INST]");
    } else {
      absl::StrAppend(out, content, "</s>");
      inside_turn = false;
    }
  }
}

void ApplyGemma(absl::Span<const ChatMessage> messages, bool add_generation_prompt,
                std::string* out) {
  std::string system;  // Gemma has no system turn: it leads the next user turn
  for (const ChatMessage& m : messages) {
    if (m.role == "system") {
      system += Trim(m.content);
      continue;
    }
    const std::string role = m.role == "assistant" ? "model" : m.role;
    absl::StrAppend(out, "<start_of_turn>", role, "\n");
    if (!system.empty() && role != "model") {
      absl::StrAppend(out, system, "\n\n");
      system.clear();
    }
    absl::StrAppend(out, Trim(m.content), "<end_of_turn>\n");
  }
  if (add_generation_prompt) *out += "<start_of_turn>model\n";
}

}  // namespace

absl::StatusOr<ChatTemplate> ChatTemplate::Detect(std::string_view source) {
  if (std::optional<F> named = FamilyOfName(source)) return ChatTemplate(*named, "");
  const Detection d = DetectFamily(source);
  if (!d.family) {
    if (!d.other.empty()) {
      return absl::UnimplementedError(absl::StrFormat(
          "tokenizer.chat_template: the \"%s\" chat template family is not supported (supported: "
          "%s); pass --chat-template NAME to use one of those",
          d.other, FamilyNames()));
    }
    return absl::InvalidArgumentError(absl::StrFormat(
        "tokenizer.chat_template: unrecognised chat template (supported families: %s); pass "
        "--chat-template NAME",
        FamilyNames()));
  }
  return ChatTemplate(*d.family, *d.family == F::kChatMl ? DefaultSystemPrompt(source) : "");
}

absl::StatusOr<ChatTemplate> ChatTemplate::FromName(std::string_view name) {
  if (std::optional<F> family = FamilyOfName(name)) return ChatTemplate(*family, "");
  return absl::InvalidArgumentError(
      absl::StrFormat("--chat-template \"%s\" is not one of %s", name, FamilyNames()));
}

absl::StatusOr<ChatTemplate> ChatTemplate::ForModel(const GgufFile& file, std::string_view name) {
  if (!name.empty()) return FromName(name);
  const GgufValue* v = file.Find("tokenizer.chat_template");
  if (v == nullptr) {
    return absl::InvalidArgumentError(
        "the model has no chat template (GGUF key tokenizer.chat_template); pass --chat-template "
        "NAME (" +
        FamilyNames() + ")");
  }
  ASSIGN_OR_RETURN(std::string_view source, v->AsString());
  return Detect(source);
}

ChatTemplate ChatTemplate::SmolLm2() {
  return ChatTemplate(F::kChatMl, std::string(kSmolLm2DefaultSystemPrompt));
}

std::string_view ChatTemplate::name() const {
  for (const Named& n : kFamilies) {
    if (n.family == family_) return n.name;
  }
  return "";
}

std::string_view ChatTemplate::end_of_turn() const {
  switch (family_) {
    case F::kChatMl:
      return "<|im_end|>";
    case F::kLlama3:
      return "<|eot_id|>";
    case F::kPhi3:
      return "<|end|>";
    case F::kGemma:
      return "<end_of_turn>";
    default:
      return "</s>";
  }
}

absl::StatusOr<std::string> ChatTemplate::Apply(absl::Span<const ChatMessage> messages,
                                                bool add_generation_prompt) const {
  size_t size = 64 + default_system_.size();
  for (size_t i = 0; i < messages.size(); ++i) {
    const std::string& role = messages[i].role;
    if (role != "system" && role != "user" && role != "assistant") {
      return absl::InvalidArgumentError(absl::StrFormat(
          "chat template: message %d has role \"%s\" (want system, user or assistant)", i, role));
    }
    size += role.size() + messages[i].content.size() + 32;
  }
  std::string out;
  out.reserve(size);
  switch (family_) {
    case F::kChatMl:
      if (!default_system_.empty() && !messages.empty() && messages[0].role != "system") {
        absl::StrAppend(&out, "<|im_start|>system\n", default_system_, "<|im_end|>\n");
      }
      for (const ChatMessage& m : messages) {
        absl::StrAppend(&out, "<|im_start|>", m.role, "\n", m.content, "<|im_end|>\n");
      }
      if (add_generation_prompt) out += "<|im_start|>assistant\n";
      break;
    case F::kLlama3:
      for (const ChatMessage& m : messages) {
        absl::StrAppend(&out, "<|start_header_id|>", m.role, "<|end_header_id|>\n\n",
                        Trim(m.content), "<|eot_id|>");
      }
      if (add_generation_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
      break;
    case F::kPhi3:
      for (const ChatMessage& m : messages) {
        absl::StrAppend(&out, "<|", m.role, "|>\n", m.content, "<|end|>\n");
      }
      if (add_generation_prompt) out += "<|assistant|>\n";
      break;
    case F::kGemma:
      ApplyGemma(messages, add_generation_prompt, &out);
      break;
    case F::kLlama2:
    case F::kLlama2Sys:
    case F::kLlama2SysBos:
    case F::kLlama2SysStrip:
      ApplyLlama2(family_, messages, &out);
      break;
    case F::kMistralV1:
    case F::kMistralV3:
    case F::kMistralV3Tekken:
    case F::kMistralV7:
    case F::kMistralV7Tekken:
      ApplyMistral(family_, messages, &out);
      break;
  }
  return out;
}

absl::StatusOr<std::string> ApplyChatTemplate(absl::Span<const ChatMessage> messages,
                                              bool add_generation_prompt) {
  return ChatTemplate::SmolLm2().Apply(messages, add_generation_prompt);
}

std::string_view SmolLm2ChatTemplateSource() {
  return "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
         "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
         "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
         "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
         "{{ '<|im_start|>assistant\n' }}{% endif %}";
}

}  // namespace xkv
