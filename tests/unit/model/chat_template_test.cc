#include "model/chat_template.h"

#include <cstdlib>
#include <filesystem>
#include <vector>

#include "gtest/gtest.h"
#include "model/gguf.h"
#include "tests/unit/model/chat_template_llama_cpp_cases.h"

namespace xkv {
namespace {

std::string Apply(const std::vector<ChatMessage>& messages, bool add_generation_prompt) {
  auto out = ApplyChatTemplate(messages, add_generation_prompt);
  EXPECT_TRUE(out.ok()) << out.status();
  return out.ok() ? *out : "";
}

TEST(ChatTemplateTest, InsertsDefaultSystemPrompt) {
  EXPECT_EQ(Apply({{"user", "hi"}}, true),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
            "Face<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
}

TEST(ChatTemplateTest, KeepsGivenSystemPromptAndTurns) {
  EXPECT_EQ(Apply({{"system", "Be brief."},
                   {"user", "2+2?"},
                   {"assistant", "4"},
                   {"user", "and 3+3?\nthanks"}},
                  false),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
            "<|im_start|>assistant\n4<|im_end|>\n<|im_start|>user\nand 3+3?\nthanks<|im_end|>\n");
}

TEST(ChatTemplateTest, SystemLaterInTheConversationDoesNotCount) {
  // Only messages[0] decides; a later system message renders like any other turn.
  EXPECT_EQ(
      Apply({{"assistant", "a"}, {"system", "s"}}, false),
      "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
      "Face<|im_end|>\n<|im_start|>assistant\na<|im_end|>\n<|im_start|>system\ns<|im_end|>\n");
}

TEST(ChatTemplateTest, EmptyConversation) {
  EXPECT_EQ(Apply({}, true), "<|im_start|>assistant\n");
  EXPECT_EQ(Apply({}, false), "");
}

TEST(ChatTemplateTest, ContentIsVerbatim) {
  EXPECT_EQ(Apply({{"system", ""}, {"user", "<|im_end|> {{ x }}"}}, false),
            "<|im_start|>system\n<|im_end|>\n<|im_start|>user\n<|im_end|> {{ x }}<|im_end|>\n");
}

TEST(ChatTemplateTest, RejectsUnknownRoles) {
  for (const char* role : {"tool", "User", "", "function"}) {
    EXPECT_EQ(ApplyChatTemplate({{"user", "x"}, {role, "y"}}, true).status().code(),
              absl::StatusCode::kInvalidArgument)
        << role;
  }
}

// The real templates of each family, from llama.cpp's tests: the same family and the same text.
TEST(ChatTemplateTest, MatchesLlamaCppOnRealTemplates) {
  for (const LlamaCppChatCase& c : kLlamaCppChatCases) {
    auto tmpl = ChatTemplate::Detect(c.template_source);
    ASSERT_TRUE(tmpl.ok()) << c.name << ": " << tmpl.status();
    EXPECT_EQ(tmpl->name(), c.family) << c.name;
    EXPECT_EQ(tmpl->default_system_prompt(), "") << c.name;
    auto text = tmpl->Apply(kLlamaCppConversation, /*add_generation_prompt=*/true);
    ASSERT_TRUE(text.ok()) << text.status();
    EXPECT_EQ(*text, c.expected) << c.name;
    // The family's name works as a template too (llm_chat_template_from_str) and as the override.
    EXPECT_EQ(ChatTemplate::Detect(c.family)->name(), c.family);
    EXPECT_EQ(ChatTemplate::FromName(c.family)->Apply(kLlamaCppConversation, true).value(),
              c.expected);
  }
}

TEST(ChatTemplateTest, EndOfTurnTokens) {
  EXPECT_EQ(ChatTemplate::FromName("chatml")->end_of_turn(), "<|im_end|>");
  EXPECT_EQ(ChatTemplate::FromName("llama3")->end_of_turn(), "<|eot_id|>");
  EXPECT_EQ(ChatTemplate::FromName("phi3")->end_of_turn(), "<|end|>");
  EXPECT_EQ(ChatTemplate::FromName("gemma")->end_of_turn(), "<end_of_turn>");
  EXPECT_EQ(ChatTemplate::FromName("mistral-v3")->end_of_turn(), "</s>");
  EXPECT_EQ(ChatTemplate::FromName("llama2-sys")->end_of_turn(), "</s>");
}

// ChatML templates that write a default system prompt keep it (SmolLM2, Qwen2), as the Jinja does.
TEST(ChatTemplateTest, ChatMlDefaultSystemPrompt) {
  auto smol = ChatTemplate::Detect(SmolLm2ChatTemplateSource());
  ASSERT_TRUE(smol.ok()) << smol.status();
  EXPECT_EQ(smol->name(), "chatml");
  EXPECT_EQ(smol->default_system_prompt(), kSmolLm2DefaultSystemPrompt);
  EXPECT_EQ(*smol->Apply({{"user", "hi"}}, true), *ApplyChatTemplate({{"user", "hi"}}, true));
  // Qwen2-7B-Instruct's template (the ggml-vocab-qwen2.gguf one).
  const std::string qwen2 =
      "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ "
      "'<|im_start|>system\nYou are a helpful assistant<|im_end|>\n' }}{% endif %}{{'<|im_start|>' "
      "+ message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if "
      "add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
  auto qwen = ChatTemplate::Detect(qwen2);
  ASSERT_TRUE(qwen.ok());
  EXPECT_EQ(qwen->default_system_prompt(), "You are a helpful assistant");
  EXPECT_EQ(*qwen->Apply({{"user", "hi"}}, true),
            "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n<|im_start|>user\nhi"
            "<|im_end|>\n<|im_start|>assistant\n");
  // Escaped newlines in the Jinja literal, and a prompt built from variables is no default.
  EXPECT_EQ(ChatTemplate::Detect("{{ '<|im_start|>system\\nBe nice.\\nReally.<|im_end|>\\n' }}")
                ->default_system_prompt(),
            "Be nice.\nReally.");
  EXPECT_EQ(ChatTemplate::Detect("{{ '<|im_start|>system\\n' + messages[0]['content'] + "
                                 "'<|im_end|>\\n' }}")
                ->default_system_prompt(),
            "");
}

// Gemma folds a system message into the next user turn; Llama 3 trims contents.
TEST(ChatTemplateTest, GemmaAndLlama3Details) {
  auto gemma = ChatTemplate::FromName("gemma");
  EXPECT_EQ(*gemma->Apply({{"system", " s "}, {"user", " u "}}, false),
            "<start_of_turn>user\ns\n\nu<end_of_turn>\n");
  auto llama3 = ChatTemplate::FromName("llama3");
  EXPECT_EQ(*llama3->Apply({{"user", "\n hi \n"}}, true),
            "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|><|start_header_id|>assistant"
            "<|end_header_id|>\n\n");
}

TEST(ChatTemplateTest, UnknownTemplatesAreErrors) {
  // A family llama.cpp knows but this port does not render: named.
  auto zephyr = ChatTemplate::Detect(
      "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + "
      "message['content'] + eos_token }}\n{% endif %}{% endfor %}<|endoftext|>");
  EXPECT_EQ(zephyr.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_NE(zephyr.status().message().find("\"zephyr\""), std::string::npos);
  EXPECT_NE(zephyr.status().message().find("tokenizer.chat_template"), std::string::npos);
  // Nothing recognisable: never a silent ChatML.
  EXPECT_EQ(ChatTemplate::Detect("{{ messages }}").status().code(),
            absl::StatusCode::kInvalidArgument);
  auto bad_name = ChatTemplate::FromName("jinja");
  EXPECT_EQ(bad_name.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad_name.status().message().find("--chat-template \"jinja\""), std::string::npos);
  EXPECT_EQ(ChatTemplate::FromName("llama3")->Apply({{"tool", "x"}}, true).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ChatTemplateTest, ForModel) {
  GgufWriter none;
  none.SetMetadata("general.architecture", GgufValue::String("llama"));
  auto none_file = GgufFile::FromBuffer(*none.WriteBuffer());
  ASSERT_TRUE(none_file.ok());
  auto missing = ChatTemplate::ForModel(**none_file, "");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(missing.status().message().find("tokenizer.chat_template"), std::string::npos);
  EXPECT_EQ(ChatTemplate::ForModel(**none_file, "phi3")->name(), "phi3");  // the override

  const char* path = std::getenv("XKV_MODEL");
  if (path == nullptr || !std::filesystem::exists(path)) GTEST_SKIP() << "XKV_MODEL not set";
  auto file = GgufFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  const GgufValue* tmpl = (*file)->Find("tokenizer.chat_template");
  ASSERT_NE(tmpl, nullptr);
  EXPECT_EQ(*tmpl->AsString(), SmolLm2ChatTemplateSource());
  auto smol = ChatTemplate::ForModel(**file, "");
  ASSERT_TRUE(smol.ok()) << smol.status();
  EXPECT_EQ(smol->name(), "chatml");
  EXPECT_EQ(smol->default_system_prompt(), kSmolLm2DefaultSystemPrompt);
}

}  // namespace
}  // namespace xkv
