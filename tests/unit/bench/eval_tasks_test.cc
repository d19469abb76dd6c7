#include "bench/eval_tasks.h"

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/chat_template.h"
#include "model/gguf.h"
#include "model/tokenizer.h"

namespace xkv {
namespace {

using ::testing::HasSubstr;

// One token per whitespace-separated word; reversible, so tests can read prompts back.
class WordTokenizer {
 public:
  TextEncoder Encoder() {
    return [this](std::string_view text) -> absl::StatusOr<std::vector<int32_t>> {
      std::vector<int32_t> ids;
      for (absl::string_view w : absl::StrSplit(absl::string_view(text.data(), text.size()),
                                                absl::ByAnyChar(" \n"), absl::SkipEmpty())) {
        auto [it, inserted] = vocab_.try_emplace(std::string(w), words_.size());
        if (inserted) words_.push_back(std::string(w));
        ids.push_back(it->second);
      }
      return ids;
    };
  }
  std::string Decode(const std::vector<int32_t>& ids) const {
    std::vector<std::string> out;
    for (int32_t id : ids) out.push_back(words_[id]);
    return absl::StrJoin(out, " ");
  }

 private:
  std::map<std::string, int32_t> vocab_;
  std::vector<std::string> words_;
};

ChatRenderer Render() {
  return [](std::string_view user) {
    const ChatMessage msg{"user", std::string(user)};
    return ApplyChatTemplate(absl::MakeConstSpan(&msg, 1), /*add_generation_prompt=*/true);
  };
}

// 200 paragraphs of distinct prose-like words, 25-45 words each.
TextCorpus FakeCorpus() {
  TextCorpus c;
  for (int p = 0; p < 200; ++p) {
    std::vector<std::string> words;
    for (int w = 0; w < 25 + (p * 7) % 21; ++w) words.push_back(absl::StrCat("word", p, "x", w));
    c.paragraphs.push_back(absl::StrJoin(words, " ") + ".");
  }
  c.sources = {"fake"};
  return c;
}

TEST(SplitParagraphsTest, SplitsAtBlankLinesAndCollapsesWhitespace) {
  const std::string text =
      "  This is   the first paragraph of the text,\n  wrapped over   two lines for sure.\n"
      "\n   \n"
      "Short one.\n\n"
      "------------------------------------------------------------------------\n\n"
      "The second long paragraph\tcontains a tab and enough words to be kept here.\n";
  const std::vector<std::string> p = SplitParagraphs(text);
  ASSERT_EQ(p.size(), 2u);
  EXPECT_EQ(p[0], "This is the first paragraph of the text, wrapped over two lines for sure.");
  EXPECT_EQ(p[1], "The second long paragraph contains a tab and enough words to be kept here.");
}

TEST(LoadCorpusTest, MissingFilesAreAClearError) {
  const std::vector<std::string> paths = {"/nonexistent/a", "/nonexistent/b"};
  absl::StatusOr<TextCorpus> c = LoadCorpus(paths);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("/nonexistent/a"));
}

TEST(LoadCorpusTest, DebianTextsWhenPresent) {
  absl::StatusOr<TextCorpus> c = LoadCorpus(DefaultCorpusPaths());
  if (!c.ok()) GTEST_SKIP() << c.status();
  EXPECT_GE(c->paragraphs.size(), 100u);
  // GPL and GPL-3 are the same text: read once.
  EXPECT_EQ(std::count(c->sources.begin(), c->sources.end(), "/usr/share/common-licenses/GPL"), 0);
  for (const std::string& p : c->paragraphs) EXPECT_GE(p.size(), kMinParagraphChars);
}

TEST(SplitTest, DevAndTestDifferInTextAndSeed) {
  const std::vector<std::string> dev = CorpusPaths(Split::kDev), test = CorpusPaths(Split::kTest);
  for (const std::string& p : dev) {
    EXPECT_EQ(std::find(test.begin(), test.end(), p), test.end()) << p << " is in both splits";
  }
  EXPECT_EQ(CorpusPaths(Split::kAll), DefaultCorpusPaths());
  EXPECT_NE(SplitSeed(Split::kDev, 1), SplitSeed(Split::kTest, 1));
  EXPECT_EQ(SplitSeed(Split::kAll, 7), 7u);
  EXPECT_EQ(*ParseSplit("dev"), Split::kDev);
  EXPECT_THAT(ParseSplit("train").status().message(), HasSubstr("allowed: all, dev, test"));
  absl::StatusOr<TextCorpus> d = LoadCorpus(dev), t = LoadCorpus(test);
  if (!d.ok() || !t.ok()) GTEST_SKIP() << "Debian license texts not installed";
  for (const std::string& p : d->paragraphs) {
    EXPECT_EQ(std::find(t->paragraphs.begin(), t->paragraphs.end(), p), t->paragraphs.end());
  }
}

TEST(ScoreAnswerTest, ExactMatchOfTheFirstDigitRun) {
  EXPECT_EQ(FirstDigitRun(" 29317."), "29317");
  EXPECT_EQ(FirstDigitRun("no digits"), "");
  EXPECT_TRUE(ScoreAnswer(" 29317.", "29317"));
  EXPECT_TRUE(ScoreAnswer(" 29317. Remember it. 12345", "29317"));
  EXPECT_FALSE(ScoreAnswer(" 2931.", "29317"));     // truncated
  EXPECT_FALSE(ScoreAnswer(" 293170", "29317"));    // longer
  EXPECT_FALSE(ScoreAnswer(" 1. 29317", "29317"));  // another number first
  EXPECT_FALSE(ScoreAnswer("", "29317"));
  EXPECT_FALSE(ScoreAnswer("123", ""));
}

TEST(BuildPromptTest, DeterministicForASeed) {
  const TextCorpus corpus = FakeCorpus();
  WordTokenizer tok;
  auto a = BuildPrompt(corpus, TaskKind::kMultiKey, 1024, 0.5, 4, 7, tok.Encoder(), Render());
  auto b = BuildPrompt(corpus, TaskKind::kMultiKey, 1024, 0.5, 4, 7, tok.Encoder(), Render());
  auto c = BuildPrompt(corpus, TaskKind::kMultiKey, 1024, 0.5, 4, 8, tok.Encoder(), Render());
  ASSERT_TRUE(a.ok() && b.ok() && c.ok()) << a.status() << b.status() << c.status();
  EXPECT_EQ(a->context, b->context);
  EXPECT_EQ(a->key_question, b->key_question);
  EXPECT_EQ(a->expected, b->expected);
  EXPECT_NE(a->document, c->document);
}

class BuildPromptDepthTest : public ::testing::TestWithParam<std::tuple<TaskKind, int, double>> {};

TEST_P(BuildPromptDepthTest, NeedleAtDepthAndLengthWithinTolerance) {
  const auto [kind, target, depth] = GetParam();
  const TextCorpus corpus = FakeCorpus();
  WordTokenizer tok;
  absl::StatusOr<EvalPrompt> p =
      BuildPrompt(corpus, kind, target, depth, 4, 42, tok.Encoder(), Render());
  ASSERT_TRUE(p.ok()) << p.status();
  const int64_t total = p->context.size() + p->key_question.size();
  EXPECT_NEAR(static_cast<double>(total), target, 0.05 * target);
  ASSERT_EQ(p->needles.size(), kind == TaskKind::kPasskey ? 1u : 4u);
  EXPECT_EQ(p->expected, p->needles[p->asked].key);
  EXPECT_NEAR(p->needles[p->asked].depth, depth, 0.08);

  const std::string context = tok.Decode(p->context);
  const std::string question = tok.Decode(p->key_question);
  for (const Needle& n : p->needles) {
    EXPECT_EQ(n.key.size(), 5u);
    // Each key sits in the document (twice: "... is K. Remember it. K is ...") and the context.
    EXPECT_THAT(context, HasSubstr(absl::StrCat(n.key, ". Remember it. ", n.key, " is the pass")));
    // Its depth matches where its text really is among the document's words.
    const std::string doc = tok.Decode(tok.Encoder()(p->document).value());
    const size_t at = doc.find(absl::StrCat(" ", n.key, ". Remember"));
    ASSERT_NE(at, std::string::npos);
    const double word_depth = static_cast<double>(std::count(doc.begin(), doc.begin() + at, ' ')) /
                              std::count(doc.begin(), doc.end(), ' ');
    EXPECT_NEAR(word_depth, n.depth, 0.05);
  }
  // The question is not in the context (query-agnostic variant) and ends with the priming.
  EXPECT_THAT(context, ::testing::Not(HasSubstr("What is the pass key")));
  EXPECT_THAT(question, HasSubstr("What is the pass key"));
  EXPECT_THAT(question, ::testing::EndsWith(" is"));
  EXPECT_THAT(tok.Decode(p->fidelity_question), HasSubstr("Summarize the document"));
  if (kind == TaskKind::kMultiKey) {
    EXPECT_THAT(question, HasSubstr(p->needles[p->asked].name));
    std::set<std::string> names, keys;
    for (const Needle& n : p->needles) names.insert(n.name), keys.insert(n.key);
    EXPECT_EQ(names.size(), 4u);
    EXPECT_EQ(keys.size(), 4u);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Grid, BuildPromptDepthTest,
    ::testing::Combine(::testing::Values(TaskKind::kPasskey, TaskKind::kMultiKey),
                       ::testing::Values(1024, 4096), ::testing::Values(0.0, 0.1, 0.5, 0.9, 1.0)));

TEST(BuildPromptTest, TooShortTargetIsInvalid) {
  WordTokenizer tok;
  auto p = BuildPrompt(FakeCorpus(), TaskKind::kMultiKey, 60, 0.5, 4, 1, tok.Encoder(), Render());
  EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(BuildSuiteTest, QuickSuiteShapeAndUniqueIds) {
  WordTokenizer tok;
  SuiteOptions suite = QuickSuite();
  auto prompts = BuildSuite(FakeCorpus(), suite, tok.Encoder(), Render());
  ASSERT_TRUE(prompts.ok()) << prompts.status();
  EXPECT_EQ(prompts->size(), suite.tasks.size() * suite.lengths.size() * suite.depths.size());
  std::set<std::string> ids;
  for (const EvalPrompt& p : *prompts) ids.insert(p.id);
  EXPECT_EQ(ids.size(), prompts->size());
  EXPECT_EQ((*prompts)[0].id, "passkey-1024-d0.10-r0");
}

// With the real tokenizer and Debian text (skipped when either is missing).
TEST(BuildPromptTest, RealTokenizerAndCorpus) {
  const char* path = std::getenv("XKV_MODEL");
  if (path == nullptr || !std::filesystem::exists(path)) GTEST_SKIP() << "XKV_MODEL missing";
  absl::StatusOr<TextCorpus> corpus = LoadCorpus(DefaultCorpusPaths());
  if (!corpus.ok()) GTEST_SKIP() << corpus.status();
  auto file = GgufFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  auto tok = Tokenizer::FromGguf(**file);
  ASSERT_TRUE(tok.ok()) << tok.status();
  const Tokenizer& t = **tok;
  TextEncoder encode = [&t](std::string_view s) { return t.Encode(s, true); };
  absl::StatusOr<EvalPrompt> p =
      BuildPrompt(*corpus, TaskKind::kPasskey, 2048, 0.5, 4, 3, encode, Render());
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_NEAR(static_cast<double>(p->context.size() + p->key_question.size()), 2048, 0.05 * 2048);
  const std::string context = t.Decode(p->context).value();
  EXPECT_THAT(context, HasSubstr(absl::StrCat("The pass key is ", p->expected, ".")));
  EXPECT_THAT(context, ::testing::StartsWith("<|im_start|>system\n"));
  EXPECT_THAT(t.Decode(p->key_question).value(),
              ::testing::EndsWith("<|im_start|>assistant\nThe pass key is"));
}

}  // namespace
}  // namespace xkv
