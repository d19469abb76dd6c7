#include "model/stop_tokens.h"

#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/gguf.h"

namespace xkv {
namespace {

using ::testing::ElementsAre;

// Byte tokens 0..255 (as raw bytes; the stop set does not encode), then `specials` (control).
std::unique_ptr<Tokenizer> Vocab(const std::vector<std::string>& specials, int32_t eos,
                                 int32_t eot = -1) {
  TokenizerData d;
  for (int b = 0; b < 256; ++b) d.tokens.push_back(std::string(1, static_cast<char>(b)));
  d.token_types.assign(256, 1);
  for (const std::string& s : specials) {
    d.tokens.push_back(s);
    d.token_types.push_back(3);
  }
  d.pre = "gpt-2";
  d.eos = eos;
  d.eot = eot;
  auto t = Tokenizer::FromData(std::move(d));
  EXPECT_TRUE(t.ok()) << t.status();
  return *std::move(t);
}

TEST(StopTokensTest, Llama3InstructStopsAtEotAndEom) {
  // Llama 3.1 Instruct: eos <|end_of_text|>, <|eot_id|> ends a turn, <|eom_id|> a tool call.
  auto tok = Vocab({"<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|eom_id|>"}, 257);
  auto llama3 = ChatTemplate::FromName("llama3");
  EXPECT_THAT(StopTokens(*tok, &*llama3), ElementsAre(257, 258, 259));
  EXPECT_THAT(StopTokens(*tok, nullptr), ElementsAre(257, 258, 259));
}

TEST(StopTokensTest, TemplateEndOfTurnJoinsEos) {
  // A ChatML model whose eos is <|endoftext|>: <|im_end|> is found as the end of turn, and it is
  // the template's end-of-turn token too.
  auto tok = Vocab({"<|endoftext|>", "<|im_start|>", "<|im_end|>"}, 256);
  const ChatTemplate chatml = *ChatTemplate::FromName("chatml");
  EXPECT_THAT(StopTokens(*tok, &chatml), ElementsAre(256, 258));
  // Gemma's <end_of_turn> (llama.cpp infers it as the end of turn too).
  auto gemma = Vocab({"<eos>", "<start_of_turn>", "<end_of_turn>"}, 256);
  const ChatTemplate gemma_chat = *ChatTemplate::FromName("gemma");
  EXPECT_THAT(StopTokens(*gemma, &gemma_chat), ElementsAre(256, 258));
  // The template's end-of-turn token when the GGUF names another eot: Phi-3's <|end|> with
  // eot_token_id = <|endoftext|>.
  auto phi3 = Vocab({"<|endoftext|>", "<|assistant|>", "<|end|>"}, 256, /*eot=*/256);
  const ChatTemplate phi3_chat = *ChatTemplate::FromName("phi3");
  EXPECT_THAT(StopTokens(*phi3, &phi3_chat), ElementsAre(256, 258));
  EXPECT_THAT(StopTokens(*phi3, nullptr), ElementsAre(256));
  // Without the key, <|end|> is inferred as the end of turn (llama.cpp's text list).
  auto phi3_inferred = Vocab({"<|endoftext|>", "<|assistant|>", "<|end|>"}, 256);
  EXPECT_THAT(StopTokens(*phi3_inferred, nullptr), ElementsAre(256, 258));
  // Mistral [INST]: </s> is the eos already.
  auto mistral = Vocab({"<s>", "</s>"}, 257);
  const ChatTemplate mistral_chat = *ChatTemplate::FromName("mistral-v3");
  EXPECT_THAT(StopTokens(*mistral, &mistral_chat), ElementsAre(257));
}

TEST(StopTokensTest, SmolLm2) {
  const char* path = std::getenv("XKV_MODEL");
  if (path == nullptr || !std::filesystem::exists(path)) GTEST_SKIP() << "XKV_MODEL not set";
  auto file = GgufFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  auto tok = Tokenizer::FromGguf(**file);
  ASSERT_TRUE(tok.ok()) << tok.status();
  auto chat = ChatTemplate::ForModel(**file, "");
  ASSERT_TRUE(chat.ok()) << chat.status();
  EXPECT_THAT(StopTokens(**tok, &*chat), ElementsAre(2));  // <|im_end|> is SmolLM2's eos
}

}  // namespace
}  // namespace xkv
