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
#include "tests/unit/bench/real_text.h"

namespace xkv {
namespace {

using ::testing::HasSubstr;

// One token per whitespace-separated word; reversible, so tests can read prompts back.
class WordTokenizer {
 public:
  TextEncoder Encoder() {
    return [this](absl::string_view text, bool) -> absl::StatusOr<std::vector<int32_t>> {
      std::vector<int32_t> ids;
      for (absl::string_view w : absl::StrSplit(text, absl::ByAnyChar(" \n"), absl::SkipEmpty())) {
        auto [it, inserted] = vocab_.try_emplace(std::string(w), words_.size());
        if (inserted) words_.push_back(std::string(w));
        ids.push_back(it->second);
      }
      return ids;
    };
  }

 private:
  std::map<std::string, int32_t> vocab_;
  std::vector<std::string> words_;
};

ChatRenderer Render() {
  return [](absl::Span<const ChatMessage> messages) {
    return ApplyChatTemplate(messages, /*add_generation_prompt=*/true);
  };
}

// A lowercase word for n (letters only, as the cwe vocabulary wants).
std::string Letters(int n) {
  std::string s;
  do {
    s.push_back(static_cast<char>('a' + n % 26));
    n /= 26;
  } while (n > 0);
  return s;
}

// 200 paragraphs of distinct prose-like words, 25-45 words each.
TextCorpus FakeCorpus() {
  TextCorpus c;
  for (int p = 0; p < 200; ++p) {
    std::vector<std::string> words;
    for (int w = 0; w < 25 + (p * 7) % 21; ++w) {
      words.push_back(absl::StrCat("qw", Letters(p), "x", Letters(w)));
    }
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
  EXPECT_NE(SplitSeed(Split::kDev, 1), SplitSeed(Split::kTest, 1));
  EXPECT_EQ(*ParseSplit("dev"), Split::kDev);
  EXPECT_THAT(ParseSplit("train").status().message(), HasSubstr("allowed: dev, test"));
  absl::StatusOr<TextCorpus> d = LoadCorpus(dev), t = LoadCorpus(test);
  if (!d.ok() || !t.ok()) GTEST_SKIP() << "Debian license texts not installed";
  for (const std::string& p : d->paragraphs) {
    EXPECT_EQ(std::find(t->paragraphs.begin(), t->paragraphs.end(), p), t->paragraphs.end());
  }
}

TEST(TaskNameTest, RoundTripsAndRejectsUnknown) {
  EXPECT_EQ(AllTasks().size(), 8u);
  for (TaskKind k : AllTasks()) EXPECT_EQ(*ParseTaskKind(TaskName(k)), k);
  EXPECT_THAT(ParseTaskKind("qa").status().message(), HasSubstr("allowed: niah_number"));
}

TEST(ScoreAnswerTest, ContainsAnyAnswerCaseSensitive) {
  const std::vector<std::string> answers = {"4821937", "marmalade"};
  EXPECT_TRUE(ScoreAnswer(" 4821937.", answers));
  EXPECT_TRUE(ScoreAnswer(" it is marmalade", answers));
  EXPECT_FALSE(ScoreAnswer(" Marmalade", answers));  // case-sensitive
  EXPECT_FALSE(ScoreAnswer(" 482193.", answers));    // truncated
  EXPECT_FALSE(ScoreAnswer("", answers));
  EXPECT_FALSE(ScoreAnswer("anything", {}));
}

TEST(BuildTaskTest, DeterministicForASeed) {
  const TextCorpus corpus = FakeCorpus();
  WordTokenizer tok;
  for (TaskKind kind : AllTasks()) {
    auto a = BuildTask(corpus, kind, 1024, 0.5, 7, tok.Encoder(), Render());
    auto b = BuildTask(corpus, kind, 1024, 0.5, 7, tok.Encoder(), Render());
    auto c = BuildTask(corpus, kind, 1024, 0.5, 8, tok.Encoder(), Render());
    ASSERT_TRUE(a.ok() && b.ok() && c.ok()) << a.status() << b.status() << c.status();
    EXPECT_EQ(TaskRecordJson(*a), TaskRecordJson(*b)) << TaskName(kind);
    EXPECT_NE(a->context, c->context) << TaskName(kind);
    EXPECT_NE(a->answers, c->answers) << TaskName(kind);
  }
}

class BuildTaskGridTest : public ::testing::TestWithParam<std::tuple<TaskKind, int, double>> {};

TEST_P(BuildTaskGridTest, AnswersOnceAtDepthAndLengthWithinTolerance) {
  const auto [kind, target, depth] = GetParam();
  const TextCorpus corpus = FakeCorpus();
  WordTokenizer tok;
  absl::StatusOr<TaskRecord> r =
      BuildTask(corpus, kind, target, depth, 42, tok.Encoder(), Render());
  ASSERT_TRUE(r.ok()) << r.status();
  absl::StatusOr<EvalPrompt> p = TokenizeRecord(*r, tok.Encoder(), Render(), 1 << 30);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_NEAR(static_cast<double>(p->context.size() + p->question.size() + p->suffix.size()),
              target, 0.05 * target);
  EXPECT_EQ(r->task, TaskName(kind));
  EXPECT_EQ(r->length, target);
  ASSERT_FALSE(r->answers.empty());
  // The question is not in the context (the query-agnostic mode stays agnostic).
  EXPECT_EQ(CountOccurrences(r->context, r->question), 0);
  EXPECT_THAT(r->question, ::testing::StartsWith("\n\n"));
  EXPECT_FALSE(r->answer_prefix.empty());
  EXPECT_GE(CountOccurrences(r->continuation, " "), 40) << "the fidelity continuation is too short";
  EXPECT_EQ(CountOccurrences(r->context, r->continuation), 0);
  if (kind == TaskKind::kCommonWords) {
    EXPECT_EQ(r->answers.size(), 10u);
    for (const std::string& w : r->answers) {  // each frequent word appears more than 3 times
      EXPECT_GT(CountOccurrences(r->context, absl::StrCat(". ", w, "\n")), 3) << w;
    }
    return;
  }
  for (const std::string& a : r->answers) EXPECT_EQ(CountOccurrences(r->context, a), 1) << a;
  EXPECT_NEAR(r->depth, depth, 0.08);
  // The asked value sits at that depth of the context.
  const size_t at = r->context.find(r->answers[0]);
  const double char_depth = static_cast<double>(at) / r->context.size();
  EXPECT_NEAR(char_depth, depth, 0.1);
  switch (kind) {
    case TaskKind::kNiahNumber:
    case TaskKind::kMultiKey:
    case TaskKind::kVariableTracking:
      EXPECT_EQ(r->answers[0].size(), 7u);
      break;
    case TaskKind::kNiahCode:
      EXPECT_EQ(r->answers[0].size(), 8u);
      break;
    case TaskKind::kMultiValue:
      EXPECT_EQ(r->answers.size(), 4u);
      break;
    case TaskKind::kMultiQuery:
      EXPECT_EQ(r->answers.size(), 2u);
      break;
    default:
      break;
  }
  if (kind == TaskKind::kMultiKey) {  // 2-4 distractor needles
    const int64_t needles = CountOccurrences(r->context, "One of the special magic numbers for");
    EXPECT_GE(needles, 3);
    EXPECT_LE(needles, 5);
  }
  if (kind == TaskKind::kVariableTracking)
    EXPECT_EQ(CountOccurrences(r->context, "VAR "), 2 * (1 + 4 * 2));  // 2 chains of 4 links
}

INSTANTIATE_TEST_SUITE_P(Grid, BuildTaskGridTest,
                         ::testing::Combine(::testing::ValuesIn(AllTasks()),
                                            ::testing::Values(1024, 4096),
                                            ::testing::Values(0.0, 0.5, 1.0)));

TEST(BuildTaskTest, TooShortTargetIsInvalid) {
  WordTokenizer tok;
  for (TaskKind kind : AllTasks()) {
    auto p = BuildTask(FakeCorpus(), kind, 60, 0.5, 1, tok.Encoder(), Render());
    EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument) << TaskName(kind);
  }
}

TEST(BuildSuiteTest, FullSuiteShapeUniqueIdsAndSplitsDiffer) {
  WordTokenizer tok;
  SuiteOptions suite = FullSuite();
  EXPECT_EQ(suite.tasks.size() * suite.lengths.size() * suite.repeats, 416u);
  suite.lengths = {1024};  // the shape at one length keeps the test fast
  suite.repeats = 3;
  auto dev = BuildSuite(FakeCorpus(), suite, Split::kDev, tok.Encoder(), Render());
  auto test = BuildSuite(FakeCorpus(), suite, Split::kTest, tok.Encoder(), Render());
  ASSERT_TRUE(dev.ok() && test.ok()) << dev.status() << test.status();
  ASSERT_EQ(test->size(), 8u * 3u);
  std::set<std::string> ids;
  for (const TaskRecord& r : *test) {
    ids.insert(r.id);
    EXPECT_EQ(r.split, "test");
  }
  EXPECT_EQ(ids.size(), test->size());
  EXPECT_EQ((*test)[0].id, "niah_number-1024-test-r00");
  EXPECT_NEAR((*test)[0].depth, 0.0, 0.05);  // depths sweep [0, 1] over the repeats
  EXPECT_NEAR((*test)[2].depth, 1.0, 0.05);
  // Same corpus, different split seed: different prompts.
  for (size_t i = 0; i < test->size(); ++i) EXPECT_NE((*dev)[i].context, (*test)[i].context);
}

// With the real tokenizer and Debian text (skipped when either is missing).
TEST(BuildTaskTest, RealTokenizerAndCorpus) {
  absl::StatusOr<RealText> text = LoadRealText();
  if (absl::IsNotFound(text.status())) GTEST_SKIP() << text.status();
  ASSERT_TRUE(text.ok()) << text.status();
  const Tokenizer& t = *text->tokenizer;
  const TextCorpus* corpus = &text->corpus;
  const TextEncoder& encode = text->encode;
  for (TaskKind kind : AllTasks()) {
    absl::StatusOr<TaskRecord> r = BuildTask(*corpus, kind, 2048, 0.5, 3, encode, Render());
    ASSERT_TRUE(r.ok()) << r.status();
    absl::StatusOr<EvalPrompt> p = TokenizeRecord(*r, encode, Render(), t.vocab_size());
    ASSERT_TRUE(p.ok()) << p.status();
    const double tolerance = kind == TaskKind::kCommonWords ? 0.05 : 0.03;  // cwe: whole items
    EXPECT_NEAR(static_cast<double>(p->context.size() + p->question.size() + p->suffix.size()),
                2048, tolerance * 2048)
        << TaskName(kind);
    EXPECT_GE(p->continuation.size(), 40u);
    const std::string context = t.Decode(p->context).value();
    EXPECT_THAT(context, ::testing::StartsWith("<|im_start|>system\n"));
    if (kind != TaskKind::kCommonWords) EXPECT_EQ(CountOccurrences(context, r->answers[0]), 1);
    EXPECT_EQ(t.Decode(p->question).value(), r->question);
    EXPECT_EQ(t.Decode(p->suffix).value(),
              "<|im_end|>\n<|im_start|>assistant\n" + r->answer_prefix);
  }
}

}  // namespace
}  // namespace xkv
