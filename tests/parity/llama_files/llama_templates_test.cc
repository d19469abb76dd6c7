// Chat template detection on real models' templates: llama.cpp's models/templates/*.jinja (the
// tokenizer.chat_template of each model, from the pinned llama-cpp-python's source distribution:
// scripts/fetch-llama-test-files, folder $XKV_LLAMA_FILES).
#include <fstream>
#include <sstream>
#include <string>

#include "gtest/gtest.h"
#include "model/chat_template.h"
#include "tests/parity/parity_util.h"

namespace xkv {
namespace {

std::string Template(const std::string& name) {
  std::ifstream in(Env("XKV_LLAMA_FILES") + "/templates/" + name + ".jinja", std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class LlamaTemplatesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (Env("XKV_LLAMA_FILES").empty()) GTEST_SKIP() << "XKV_LLAMA_FILES not set";
  }
};

TEST_F(LlamaTemplatesTest, RealTemplatesGetTheirFamily) {
  const struct {
    const char* file;
    const char* family;
    const char* default_system;
  } cases[] = {
      {"meta-llama-Llama-3.1-8B-Instruct", "llama3", ""},
      {"meta-llama-Llama-3.2-3B-Instruct", "llama3", ""},
      {"meta-llama-Llama-3.3-70B-Instruct", "llama3", ""},
      {"Qwen-Qwen2.5-7B-Instruct", "chatml",
       "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."},
      {"Qwen-Qwen3-0.6B", "chatml", ""},
      {"Qwen-QwQ-32B", "chatml", ""},
      {"deepseek-ai-DeepSeek-R1-Distill-Qwen-32B", "", ""},  // DeepSeek's own format, not ChatML
      {"NousResearch-Hermes-3-Llama-3.1-8B-tool_use", "chatml", ""},
      {"microsoft-Phi-3.5-mini-instruct", "phi3", ""},
      {"google-gemma-2-2b-it", "gemma", ""},
      {"mistralai-Mistral-Nemo-Instruct-2407", "mistral-v3-tekken", ""},
      {"Mistral-Small-3.2-24B-Instruct-2506", "mistral-v7", ""},
  };
  for (const auto& c : cases) {
    const std::string source = Template(c.file);
    ASSERT_FALSE(source.empty()) << c.file;
    auto tmpl = ChatTemplate::Detect(source);
    if (std::string(c.family).empty()) {
      EXPECT_FALSE(tmpl.ok()) << c.file << " detected as " << tmpl->name();
      continue;
    }
    ASSERT_TRUE(tmpl.ok()) << c.file << ": " << tmpl.status();
    EXPECT_EQ(tmpl->name(), c.family) << c.file;
    EXPECT_EQ(tmpl->default_system_prompt(), c.default_system) << c.file;
  }
}

// Templates of families llama.cpp knows and this port does not render: named in the error.
TEST_F(LlamaTemplatesTest, UnsupportedFamiliesAreNamed) {
  const std::pair<const char*, const char*> cases[] = {
      {"deepseek-ai-DeepSeek-R1-Distill-Llama-8B", "\"deepseek3\""},
      {"openai-gpt-oss-120b", "\"gpt-oss\""},
      {"ibm-granite-granite-3.3-2B-Instruct", "\"granite\""},
      {"CohereForAI-c4ai-command-r-plus-tool_use", "\"command-r\""},
  };
  for (const auto& [file, name] : cases) {
    auto tmpl = ChatTemplate::Detect(Template(file));
    EXPECT_EQ(tmpl.status().code(), absl::StatusCode::kUnimplemented) << file;
    EXPECT_NE(tmpl.status().message().find(name), std::string::npos)
        << file << ": " << tmpl.status();
  }
}

}  // namespace
}  // namespace xkv
