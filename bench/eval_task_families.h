// The words of each built-in task family (bench/eval_tasks.h): instruction, needles, question,
// answer prefix and answers of one seeded instance. The haystack around the needles is placed by
// eval_tasks.cc; the common-word list (cwe), which is its own document, is built here.
#ifndef XKV_BENCH_EVAL_TASK_FAMILIES_H_
#define XKV_BENCH_EVAL_TASK_FAMILIES_H_

#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "bench/eval_tasks.h"

namespace xkv {

struct TaskText {
  std::string instruction;           // the context's start, before the document
  std::vector<std::string> needles;  // needles[0] goes at the requested depth, the rest seeded
  std::string question;              // appended to the context ("\n\n" + the question)
  std::string answer_prefix;
  std::vector<std::string> answers;
};

// A needle task's text (every kind but kCommonWords).
TaskText NeedleTaskText(TaskKind kind, std::mt19937_64& rng);

// kCommonWords: instruction, question and answer prefix (no needles, no answers yet).
TaskText CommonWordsText();
// The numbered word list of kCommonWords, drawn from `vocabulary` (>= 40 distinct words), of at
// most `budget` tokens as counted by `count`: 10 words appear about n/40 times each (n items),
// the others 3 times each. Sets text->answers to the 10 frequent words.
absl::StatusOr<std::string> CommonWordsList(
    const std::vector<std::string>& vocabulary, int64_t budget, std::mt19937_64& rng,
    const std::function<absl::StatusOr<int64_t>(absl::string_view)>& count, TaskText* text);

}  // namespace xkv

#endif  // XKV_BENCH_EVAL_TASK_FAMILIES_H_
