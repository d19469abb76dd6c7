// The built-in task suite of `xkv eval`: RULER-style long-context prompts generated offline and
// seeded, from real English text that ships with Debian (license texts under
// /usr/share/common-licenses, a few plain-text documents under /usr/share/doc). Nothing is
// downloaded. Each prompt is a TaskRecord (bench/eval_prompts.h): context, question, answer
// prefix, answers, and the real text that follows the document (the fidelity continuation).
//
// Task families (bench/eval_task_families.h writes their needles and questions):
//   niah_number   one needle "One of the special magic numbers for KEY is: 7-digit number."
//   niah_word     the same with a word as the value
//   niah_code     the same with an 8-character code [a-z0-9]
//   multikey      the asked needle plus 2-4 distractor needles with other keys
//   multivalue    one key, 4 needles with different numbers; any of them is an answer
//   multiquery    4 keys, the question asks for 2 of them; either value is an answer
//   vt            variable tracking: a chain of 4 assignments "VAR B = VAR A." from a number,
//                 plus a distractor chain; asks for the value of the chain's last variable
//   cwe           common-word extraction: a numbered word list (no prose) where 10 words are
//                 frequent; any of them is an answer
// The asked needle sits at a depth that sweeps the document over a cell's repeats; the others at
// seeded depths. In every needle task each answer occurs exactly once in the context.
#ifndef XKV_BENCH_EVAL_TASKS_H_
#define XKV_BENCH_EVAL_TASKS_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "bench/eval_prompts.h"

namespace xkv {

enum class TaskKind {
  kNiahNumber,
  kNiahWord,
  kNiahCode,
  kMultiKey,
  kMultiValue,
  kMultiQuery,
  kVariableTracking,
  kCommonWords,
};
absl::string_view TaskName(TaskKind kind);  // "niah_number", ... (above)
absl::StatusOr<TaskKind> ParseTaskKind(absl::string_view name);
std::vector<TaskKind> AllTasks();

// Occurrences of `what` in `text`, overlapping ones included.
int64_t CountOccurrences(absl::string_view text, absl::string_view what);

// Paragraphs of English prose, in file order, with the file each came from.
struct TextCorpus {
  std::vector<std::string> paragraphs;  // whitespace collapsed, >= kMinParagraphChars each
  std::vector<std::string> sources;     // the files actually read
};
inline constexpr size_t kMinParagraphChars = 60;

// The Debian files the suite reads (licenses first, then documentation); missing ones are skipped.
std::vector<std::string> DefaultCorpusPaths();

// Dev split: for choosing any parameter. Test split: for reporting. They differ in haystack text
// (disjoint files that share no paragraph: dev GPL-2, GPL-1, LGPL-2.1, Artistic, dpkg
// triggers.txt; test LGPL-3, Apache-2.0, MPL-2.0, MPL-1.1, GFDL-1.3, GFDL-1.2, CC0-1.0, BSD, dpkg
// rootless-builds.txt; GPL-3 shares paragraphs with GPL-1/2 and is in neither)
// and in seed (SplitSeed).
enum class Split { kDev, kTest };
absl::StatusOr<Split> ParseSplit(absl::string_view name);  // "dev" | "test"
absl::string_view SplitName(Split split);
std::vector<std::string> CorpusPaths(Split split);
uint64_t SplitSeed(Split split, uint64_t seed);

// Splits text into paragraphs at blank lines, collapses runs of whitespace to one space, and drops
// paragraphs shorter than kMinParagraphChars or made mostly of non-letters (tables, rulers).
std::vector<std::string> SplitParagraphs(absl::string_view text);

// Reads every existing file of `paths`. NOT_FOUND (naming the paths) when none could be read or
// they hold fewer than 20 paragraphs in total.
absl::StatusOr<TextCorpus> LoadCorpus(absl::Span<const std::string> paths);

struct SuiteOptions {
  std::string name;              // "quick" | "full"
  std::vector<int64_t> lengths;  // target tokens of context + question
  std::vector<TaskKind> tasks;
  int repeats = 1;  // prompts per (task, length); the asked needle's depth sweeps [0, 1]
  uint64_t seed = 1;
};
// quick: 1K/2K/4K, every task, 1 repeat (24 prompts; a CPU smoke of the whole task set).
SuiteOptions QuickSuite();
// full: 1K/2K/4K/8K (8000 tokens, which leaves room for the answer in an 8192 context), every
// task, 13 repeats: 416 prompts.
SuiteOptions FullSuite();
// "quick" | "full"; INVALID_ARGUMENT otherwise.
absl::StatusOr<SuiteOptions> SuiteByName(absl::string_view name);

// Every prompt of the suite for one split, in a fixed order (task, length, repeat), with lengths
// counted in tokens of the rendered prompt (`render`, then `encode`). Deterministic for a given
// corpus, suite (seed included), split and tokenizer. INVALID_ARGUMENT when a length is too
// short for the task or the corpus cannot fill it.
absl::StatusOr<std::vector<TaskRecord>> BuildSuite(const TextCorpus& corpus,
                                                   const SuiteOptions& suite, Split split,
                                                   const TextEncoder& encode,
                                                   const ChatRenderer& render);

// One prompt (exposed for tests): seed picks the text start, keys, values and other depths.
absl::StatusOr<TaskRecord> BuildTask(const TextCorpus& corpus, TaskKind kind, int64_t target_tokens,
                                     double depth, uint64_t seed, const TextEncoder& encode,
                                     const ChatRenderer& render);

}  // namespace xkv

#endif  // XKV_BENCH_EVAL_TASKS_H_
