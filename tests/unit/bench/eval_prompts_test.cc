#include "bench/eval_prompts.h"

#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace xkv {
namespace {

using ::testing::HasSubstr;

TaskRecord Full() {
  TaskRecord r;
  r.id = "a-1";
  r.task = "niah_number";
  r.split = "dev";
  r.length = 1024;
  r.context = "Some text with \"quotes\", a tab\t, unicode é and\nnewlines.";
  r.question = "\n\nWhat is the number?";
  r.answer_prefix = "The number is";
  r.answers = {"1234567", "7654321"};
  r.continuation = " and the text goes on.";
  return r;
}

TEST(TaskRecordTest, RoundTripsEveryField) {
  TaskRecord chat = Full();
  chat.id = "b";
  chat.context = "";
  chat.messages = {{"system", "Be brief."}, {"user", "Doc.\n\nWhat is the number?"}};
  chat.question = "What is the number?";
  TaskRecord ids = Full();
  ids.id = "c";
  ids.context = "";
  ids.question = "";
  ids.context_ids = {1, 2, 3};
  ids.question_ids = {4, 5};
  const std::string text = absl::StrCat(TaskRecordJson(Full()), "\n\n", TaskRecordJson(chat), "\n",
                                        TaskRecordJson(ids), "\n");
  absl::StatusOr<std::vector<TaskRecord>> back = ParseTaskRecords(text);
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->size(), 3u);
  for (int i = 0; i < 3; ++i) {
    const TaskRecord& want = i == 0 ? Full() : i == 1 ? chat : ids;
    EXPECT_EQ(TaskRecordJson((*back)[i]), TaskRecordJson(want));
  }
  EXPECT_EQ((*back)[0].context, Full().context);
  EXPECT_EQ((*back)[1].messages[1].content, "Doc.\n\nWhat is the number?");
  EXPECT_EQ((*back)[2].question_ids, (std::vector<int32_t>{4, 5}));
  // One object per line.
  EXPECT_EQ(TaskRecordJson(Full()).find('\n'), std::string::npos);
}

TEST(TaskRecordTest, FileRoundTrip) {
  const std::string path =
      (std::filesystem::temp_directory_path() / absl::StrCat("xkv_prompts_", getpid(), ".jsonl"))
          .string();
  std::vector<TaskRecord> records = {Full()};
  records.push_back(Full());
  records[1].id = "a-2";
  ASSERT_TRUE(WriteTaskFile(path, records).ok());
  absl::StatusOr<std::vector<TaskRecord>> back = ReadTaskFile(path);
  std::filesystem::remove(path);
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->size(), 2u);
  EXPECT_EQ((*back)[1].id, "a-2");
  EXPECT_EQ(ReadTaskFile("/nonexistent/p.jsonl").status().code(), absl::StatusCode::kNotFound);
}

// Each bad line: INVALID_ARGUMENT naming the line and the field.
struct BadCase {
  std::string line;
  std::string want;
};

class BadLineTest : public ::testing::TestWithParam<BadCase> {};

TEST_P(BadLineTest, NamesTheLineAndField) {
  const std::string good = TaskRecordJson(Full());
  const std::string text = absl::StrCat(good, "\n\n", GetParam().line, "\n");
  absl::StatusOr<std::vector<TaskRecord>> r = ParseTaskRecords(text);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("line 3"));
  EXPECT_THAT(r.status().message(), HasSubstr(GetParam().want));
}

std::string Base(const std::string& replace_field, const std::string& with) {
  // A valid line with one field replaced (with = "" drops it).
  std::vector<std::pair<std::string, std::string>> fields = {{"id", "\"x\""},
                                                             {"task", "\"t\""},
                                                             {"split", "\"test\""},
                                                             {"length", "100"},
                                                             {"context", "\"ctx\""},
                                                             {"question", "\"q?\""},
                                                             {"answer_prefix", "\"A:\""},
                                                             {"answers", "[\"1\"]"}};
  std::string out = "{";
  bool first = true;
  bool replaced = false;
  for (const auto& [k, v] : fields) {
    std::string value = v;
    if (k == replace_field) {
      replaced = true;
      if (with.empty()) continue;
      value = with;
    }
    absl::StrAppend(&out, first ? "" : ", ", "\"", k, "\": ", value);
    first = false;
  }
  if (!replaced) absl::StrAppend(&out, ", \"", replace_field, "\": ", with);
  return out + "}";
}

INSTANTIATE_TEST_SUITE_P(
    Cases, BadLineTest,
    ::testing::Values(
        BadCase{"not json", "not a JSON object"}, BadCase{"[1, 2]", "not a JSON object"},
        BadCase{Base("id", ""), "field 'id': missing"},
        BadCase{Base("id", "\"a-1\""), "field 'id': 'a-1' repeats line 1"},
        BadCase{Base("id", "7"), "field 'id': not a string"},
        BadCase{Base("task", "\"\""), "field 'task': empty"},
        BadCase{Base("split", "\"train\""), "field 'split': 'train' (allowed: dev, test)"},
        BadCase{Base("length", "0"), "field 'length'"},
        BadCase{Base("length", "\"100\""), "field 'length'"},
        BadCase{Base("length", "1.5"), "field 'length'"},
        BadCase{Base("context", ""), "field 'context': missing"},
        BadCase{Base("context", "\"\""), "field 'context': empty"},
        BadCase{Base("question", "\"\""), "field 'question': empty"},
        BadCase{Base("answer_prefix", "3"), "field 'answer_prefix': not a string"},
        BadCase{Base("answers", "[]"), "field 'answers'"},
        BadCase{Base("answers", "\"1\""), "field 'answers'"},
        BadCase{Base("answers", "[\"1\", \"\"]"), "field 'answers': item 1"},
        BadCase{Base("answers", "[1]"), "field 'answers': item 0"},
        BadCase{Base("messages", "[{\"role\": \"user\"}]"), "field 'messages': item 0"},
        BadCase{Base("messages", "[{\"role\": \"bot\", \"content\": \"q?\"}]"),
                "role 'bot' (allowed: system, user, assistant)"},
        BadCase{Base("messages", "[{\"role\": \"assistant\", \"content\": \"q?\"}]"),
                "the last message is not the user's"},
        BadCase{Base("messages", "[{\"role\": \"user\", \"content\": \"other\"}]"),
                "does not end with question"},
        BadCase{Base("context_ids", "[1, 2]"), "field 'question_ids': missing"},
        BadCase{Base("question_ids", "[1, -2]"), "field 'question_ids': item 1"},
        BadCase{Base("continuation", "[]"), "field 'continuation': not a string"},
        BadCase{Base("depth", "0.5"), "field 'depth': unknown (allowed: id, task"}));

TEST(TaskRecordTest, EmptyFileIsAnError) {
  EXPECT_THAT(ParseTaskRecords("\n  \n").status().message(), HasSubstr("no prompts"));
}

// Tokenizing: one character per token.
TextEncoder Chars() {
  return [](absl::string_view text, bool at_start) -> absl::StatusOr<std::vector<int32_t>> {
    std::vector<int32_t> ids;
    if (at_start) ids.push_back(0);  // a BOS
    for (unsigned char c : text) ids.push_back(c);
    return ids;
  };
}

ChatRenderer Brackets() {  // "[role:content]" per message, then "[assistant:"
  return [](absl::Span<const ChatMessage> messages) -> absl::StatusOr<std::string> {
    std::string out;
    for (const ChatMessage& m : messages) absl::StrAppend(&out, "[", m.role, ":", m.content, "]");
    return out + "[assistant:";
  };
}

std::string Text(const std::vector<int32_t>& ids) {
  std::string s;
  for (int32_t id : ids) s.push_back(id == 0 ? '^' : static_cast<char>(id));
  return s;
}

TEST(TokenizeRecordTest, TextChatAndIds) {
  TaskRecord r = Full();
  r.context = "Doc.";
  r.question = " Q?";
  absl::StatusOr<EvalPrompt> p = TokenizeRecord(r, Chars(), Brackets(), 256);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(Text(p->context), "^[user:Doc.");
  EXPECT_EQ(Text(p->question), " Q?");
  EXPECT_EQ(Text(p->suffix), "][assistant:The number is");
  EXPECT_EQ(Text(p->continuation), " and the text goes on.");
  EXPECT_EQ(p->answers, r.answers);
  EXPECT_EQ(p->split, "dev");

  r.messages = {{"system", "S"}, {"user", "Doc. Q?"}};
  r.context = "";
  p = TokenizeRecord(r, Chars(), Brackets(), 256);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(Text(p->context), "^[system:S][user:Doc.");

  r.messages.clear();
  r.context_ids = {5, 6};
  r.question_ids = {7};
  p = TokenizeRecord(r, Chars(), Brackets(), 256);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->context, (std::vector<int32_t>{5, 6}));
  EXPECT_EQ(p->question, (std::vector<int32_t>{7}));
  EXPECT_TRUE(p->suffix.empty());
  r.question_ids = {300};
  EXPECT_THAT(TokenizeRecord(r, Chars(), Brackets(), 256).status().message(),
              HasSubstr("prompt 'a-1': field 'question_ids': token id 300 outside [0, 256)"));
}

}  // namespace
}  // namespace xkv
