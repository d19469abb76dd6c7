#include "model/chat_template.h"

#include <cstdlib>
#include <filesystem>
#include <vector>

#include "gtest/gtest.h"
#include "model/gguf.h"

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

TEST(ChatTemplateTest, SourceRecognition) {
  EXPECT_TRUE(IsSupportedChatTemplate(SmolLm2ChatTemplateSource()));
  EXPECT_FALSE(IsSupportedChatTemplate("{{ messages }}"));
}

TEST(ChatTemplateTest, MatchesTheModelsTemplate) {
  const char* path = std::getenv("XKV_MODEL");
  if (path == nullptr || !std::filesystem::exists(path)) GTEST_SKIP() << "XKV_MODEL not set";
  auto file = GgufFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  const GgufValue* tmpl = (*file)->Find("tokenizer.chat_template");
  ASSERT_NE(tmpl, nullptr);
  auto text = tmpl->AsString();
  ASSERT_TRUE(text.ok());
  EXPECT_TRUE(IsSupportedChatTemplate(*text)) << *text;
}

}  // namespace
}  // namespace xkv
