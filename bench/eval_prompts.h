// The prompts of `xkv eval`: a task record as text (the built-in suite's unit and one line of a
// prompts file, `xkv eval --prompts FILE.jsonl` / `--export-prompts FILE.jsonl`), and the same
// prompt as token spans for the runner.
//
// Prompts file: JSON Lines, one object per line (blank lines are skipped):
//   id             string, unique in the file
//   task           string (e.g. "niah_number"); results are grouped by it
//   split          "dev" | "test"
//   length         int >= 1: target tokens of context + question
//   context        string: raw text, the start of the user message (e.g. instructions + document)
//   question       string: raw text appended to context in the same user message
//   answer_prefix  string, optional (default ""): the start of the assistant turn, e.g. "Answer:"
//   answers        list of non-empty strings: an answer is correct when the greedy text after the
//                  prefix contains any of them (case-sensitive, RULER's string match)
//   messages       optional list of {"role": "system"|"user"|"assistant", "content": string}
//                  replacing context + question: the last message is the user's and its content
//                  ends with `question` (context may then be "")
//   context_ids, question_ids  optional token-id lists, both or neither: used as they are (no chat
//                  template, no answer_prefix added)
//   continuation   optional string: real text that follows the context, teacher-forced for the
//                  fidelity metrics (agreement, KL, NLL); without it they are not measured
// Any other field, a wrong type or value is an error naming the line number and the field.
//
// Text prompts are rendered with the model's chat template as one user message `context +
// question` plus the generation prompt (kvpress's protocol): the context span is the rendering
// up to the question, the question span the question itself, the suffix span the rest of the
// rendering (end of turn, generation prompt) plus answer_prefix.
#ifndef XKV_BENCH_EVAL_PROMPTS_H_
#define XKV_BENCH_EVAL_PROMPTS_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "model/chat_template.h"

namespace xkv {

struct TaskRecord {
  std::string id;
  std::string task;
  std::string split = "test";
  int64_t length = 0;
  std::string context;
  std::string question;
  std::string answer_prefix;
  std::vector<std::string> answers;
  std::vector<ChatMessage> messages;
  std::vector<int32_t> context_ids;
  std::vector<int32_t> question_ids;
  std::string continuation;
  double depth = -1.0;  // built-in suite only (not in the file): depth of the asked needle
};

// One line → record; INVALID_ARGUMENT "line N: field 'F': ..." on any bad input.
absl::StatusOr<TaskRecord> ParseTaskRecord(absl::string_view line, int line_number);
// A whole file's text; ids must be unique; at least one record.
absl::StatusOr<std::vector<TaskRecord>> ParseTaskRecords(absl::string_view text);
// One JSON object on one line (no newline); optional fields only when set.
std::string TaskRecordJson(const TaskRecord& record);

absl::StatusOr<std::vector<TaskRecord>> ReadTaskFile(const std::string& path);
absl::Status WriteTaskFile(const std::string& path, absl::Span<const TaskRecord> records);

// A prompt as token spans.
struct EvalPrompt {
  std::string id;
  std::string task;
  std::string split;
  int64_t target_tokens = 0;
  double depth = -1.0;
  std::vector<std::string> answers;
  std::vector<int32_t> context;       // compressed in both query modes
  std::vector<int32_t> question;      // the question (token-id prompts: question_ids)
  std::vector<int32_t> suffix;        // template tail + answer prefix (token-id prompts: empty)
  std::vector<int32_t> continuation;  // real text after the context (may be empty)
};

// Text → token ids. `at_start`: the text starts the sequence (BOS where the model adds one).
using TextEncoder =
    std::function<absl::StatusOr<std::vector<int32_t>>(absl::string_view text, bool at_start)>;
// Chat messages → the template's text with the generation prompt (ApplyChatTemplate).
using ChatRenderer =
    std::function<absl::StatusOr<std::string>(absl::Span<const ChatMessage> messages)>;

// INVALID_ARGUMENT naming the record id and field: an empty span, a question that is not found
// in the rendered messages, token ids outside [0, vocab).
absl::StatusOr<EvalPrompt> TokenizeRecord(const TaskRecord& record, const TextEncoder& encode,
                                          const ChatRenderer& render, int64_t vocab);

// RULER's string match: `answer` contains any of `answers` (case-sensitive).
bool ScoreAnswer(absl::string_view answer, absl::Span<const std::string> answers);

}  // namespace xkv

#endif  // XKV_BENCH_EVAL_PROMPTS_H_
