// The multi-question mode of `xkv eval` (`--multi-question`, issue 12 part 4): several questions
// over ONE compressed context. The context is compressed once, without any question (the
// query-agnostic protocol), and every question is answered from its own copy of that compressed
// cache (StageEngine::CopySequence), so a method is judged on a cache that must serve questions
// it could not see coming.
//
// The questions come from the built-in needle tasks: every context that holds at least two
// "special magic number" needles with different keys (multikey: the asked needle and 2-4
// distractors; multiquery: 4 needles) gives one question per needle, asked alone in the niah
// wording ("What is the special magic number for KEY mentioned in the provided text?", answer
// prefix "The special magic number for KEY mentioned in the provided text is"), whose answer is
// that needle's number. A needle whose number does not occur exactly once in the context is left
// out. EvalRunner::RunMultiQuestion (bench/eval_runner.h) runs one such set.
#ifndef XKV_BENCH_EVAL_MULTI_QUESTION_H_
#define XKV_BENCH_EVAL_MULTI_QUESTION_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "bench/eval_prompts.h"

namespace xkv {

// One context and its questions: each record holds the same context (and id, the bootstrap's
// unit) with one question, answer prefix and answer; task "mq-" + the source task.
struct MultiQuestionSet {
  std::string id;
  std::vector<TaskRecord> questions;
};

// The number needles "One of the special magic numbers for KEY is: VALUE." of a context, in
// order of appearance, as (key, value) pairs.
std::vector<std::pair<std::string, std::string>> NumberNeedles(absl::string_view context);

// The sets of every record with at least `min_questions` usable needles (records with fewer, or
// with token ids instead of text, are skipped). INVALID_ARGUMENT when min_questions < 2 or no
// record gives a set (naming how many records were read).
absl::StatusOr<std::vector<MultiQuestionSet>> MultiQuestionSets(
    absl::Span<const TaskRecord> records, int min_questions = 2);

}  // namespace xkv

#endif  // XKV_BENCH_EVAL_MULTI_QUESTION_H_
