#include "bench/eval_multi_question.h"

#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "bench/eval_tasks.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/chat_template.h"
#include "model/tokenizer.h"
#include "tests/unit/bench/real_text.h"

namespace xkv {
namespace {

using ::testing::HasSubstr;
using ::testing::Pair;

TaskRecord Record(std::string id, std::string task, std::string context) {
  TaskRecord r;
  r.id = std::move(id);
  r.task = std::move(task);
  r.context = std::move(context);
  r.question = "\n\nWhat is the special magic number for a-b mentioned in the provided text?";
  r.answers = {"1234567"};
  return r;
}

TEST(NumberNeedlesTest, ParsesKeysAndNumbersInOrder) {
  EXPECT_THAT(NumberNeedles("Text. One of the special magic numbers for red-fox is: 1234567. More "
                            "text. One of the special magic numbers for blue-owl is: 7654321. "
                            "One of the special magic words for x is: tea. One of the special "
                            "magic numbers for bad is: 12ab."),
              ::testing::ElementsAre(Pair("red-fox", "1234567"), Pair("blue-owl", "7654321")));
  EXPECT_TRUE(NumberNeedles("no needle here").empty());
}

TEST(MultiQuestionSetsTest, OneQuestionPerKeyWithASingleNumber) {
  const std::string ctx =
      "One of the special magic numbers for a-b is: 1234567. Filler. One of the special magic "
      "numbers for c-d is: 2345678. One of the special magic numbers for e-f is: 3456789. Filler "
      "3456789 again.";
  auto sets = MultiQuestionSets({Record("p1", "multikey", ctx)});
  ASSERT_TRUE(sets.ok()) << sets.status();
  ASSERT_EQ(sets->size(), 1u);
  const MultiQuestionSet& s = (*sets)[0];
  EXPECT_EQ(s.id, "p1");
  ASSERT_EQ(s.questions.size(), 2u);  // e-f's number occurs twice: no question for it
  EXPECT_EQ(s.questions[0].answers, std::vector<std::string>{"1234567"});
  EXPECT_THAT(s.questions[1].question, HasSubstr("number for c-d mentioned"));
  EXPECT_EQ(s.questions[1].answer_prefix,
            "The special magic number for c-d mentioned in the provided text is");
  for (const TaskRecord& q : s.questions) {
    EXPECT_EQ(q.id, "p1");
    EXPECT_EQ(q.task, "mq-multikey");
    EXPECT_EQ(q.context, ctx);
  }
}

TEST(MultiQuestionSetsTest, NoSetIsAClearError) {
  // multivalue: one key, several numbers; niah: one needle.
  const std::string multivalue =
      "One of the special magic numbers for a-b is: 1234567. One of the special magic numbers "
      "for a-b is: 2345678.";
  auto none = MultiQuestionSets(
      {Record("mv", "multivalue", multivalue),
       Record("n", "niah_number", "One of the special magic numbers for a-b is: 1234567.")});
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(none.status().message(), HasSubstr("none of the 2 prompts"));
  auto bad = MultiQuestionSets({Record("p", "multikey", multivalue)}, 1);
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr("min_questions is 1; allowed: >= 2"));
}

// The built-in multikey and multiquery prompts (real tokenizer, Debian text): every needle is
// asked once, its number occurs exactly once in the context, and every question of a set shares
// the context's tokens (RunMultiQuestion compresses them once).
TEST(MultiQuestionSetsTest, BuiltInTasksGiveOneQuestionPerNeedle) {
  absl::StatusOr<RealText> text = LoadRealText();
  if (absl::IsNotFound(text.status())) GTEST_SKIP() << text.status();
  ASSERT_TRUE(text.ok()) << text.status();
  const Tokenizer& t = *text->tokenizer;
  const TextCorpus* corpus = &text->corpus;
  const TextEncoder& encode = text->encode;
  const ChatRenderer& render = text->render;
  for (TaskKind kind : {TaskKind::kMultiKey, TaskKind::kMultiQuery}) {
    for (uint64_t seed : {1, 2, 3}) {
      absl::StatusOr<TaskRecord> r = BuildTask(*corpus, kind, 1024, 0.3, seed, encode, render);
      ASSERT_TRUE(r.ok()) << r.status();
      auto sets = MultiQuestionSets({*r});
      ASSERT_TRUE(sets.ok()) << sets.status();
      ASSERT_EQ(sets->size(), 1u);
      const std::vector<TaskRecord>& qs = (*sets)[0].questions;
      ASSERT_EQ(qs.size(), NumberNeedles(r->context).size()) << TaskName(kind);
      EXPECT_GE(qs.size(), kind == TaskKind::kMultiKey ? 3u : 4u);
      std::set<std::string> questions;
      int asked = 0;
      std::vector<int32_t> context;
      for (const TaskRecord& q : qs) {
        ASSERT_EQ(q.answers.size(), 1u);
        EXPECT_EQ(CountOccurrences(q.context, q.answers[0]), 1) << q.answers[0];
        EXPECT_EQ(CountOccurrences(q.context, q.question), 0);
        questions.insert(q.question);
        if (q.answers == r->answers) {  // the source prompt's own needle keeps its depth
          ++asked;
          EXPECT_EQ(q.depth, r->depth);
        }
        absl::StatusOr<EvalPrompt> p = TokenizeRecord(q, encode, render, t.vocab_size());
        ASSERT_TRUE(p.ok()) << p.status();
        if (context.empty()) context = p->context;
        EXPECT_EQ(p->context, context);
      }
      EXPECT_EQ(questions.size(), qs.size());
      EXPECT_EQ(asked, kind == TaskKind::kMultiKey ? 1 : 0) << TaskName(kind);
    }
  }
}

}  // namespace
}  // namespace xkv
