// Task construction for `xkv eval`: deterministic (seeded) long-context retrieval prompts built
// offline from real English text that ships with Debian (license texts under
// /usr/share/common-licenses, a few plain-text documents under /usr/share/doc). Nothing is
// downloaded.
//
// One EvalPrompt is a haystack document with one or more needles, split into three token spans:
//   context           system prompt + "<|im_start|>user\n" + instruction + document
//   key_question      "\n\nWhat is the pass key [for NAME]? ...<|im_end|>\n<|im_start|>assistant\n"
//                     followed by the answer priming "The pass key [for NAME] is"
//   fidelity_question "\n\nSummarize the document above ...<|im_end|>\n<|im_start|>assistant\n"
// Each question span is the tail of the same chat-template rendering as the context (ChatML), so
// context + question is exactly the token sequence a user would send.
//
// Two variants share every prompt (see eval_runner.h for how they are run):
//   query-aware     the cache is compressed after context + question: the question's last tokens
//                   are in the observation window, so importance scoring sees what is asked;
//   query-agnostic  the cache is compressed after the context alone; the question is prefilled on
//                   top of the compacted cache afterwards (kvpress's recommended protocol).
//
// Tasks:
//   passkey   one needle "The pass key is 48213. Remember it. 48213 is the pass key." at a depth;
//   multikey  `num_keys` needles "The pass key for Alice is 12345. ..." with different names and
//             keys; the one asked for is at the requested depth, the others at seeded depths.
// The answer is scored by exact match of the first digit run in the greedy answer (ScoreAnswer).
#ifndef XKV_BENCH_EVAL_TASKS_H_
#define XKV_BENCH_EVAL_TASKS_H_

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace xkv {

enum class TaskKind { kPasskey, kMultiKey };
std::string_view TaskName(TaskKind kind);  // "passkey" | "multikey"

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
// and in seed (SplitSeed). kAll: every file and the seed as given (the historical suite).
enum class Split { kAll, kDev, kTest };
absl::StatusOr<Split> ParseSplit(absl::string_view name);  // "all" | "dev" | "test"
std::vector<std::string> CorpusPaths(Split split);
uint64_t SplitSeed(Split split, uint64_t seed);

// Splits text into paragraphs at blank lines, collapses runs of whitespace to one space, and drops
// paragraphs shorter than kMinParagraphChars or made mostly of non-letters (tables, rulers).
std::vector<std::string> SplitParagraphs(std::string_view text);

// Reads every existing file of `paths`. NOT_FOUND (naming the paths) when none could be read or
// they hold fewer than 20 paragraphs in total.
absl::StatusOr<TextCorpus> LoadCorpus(absl::Span<const std::string> paths);

struct SuiteOptions {
  std::string name;              // "quick" | "full" | "custom"
  std::vector<int64_t> lengths;  // target tokens of context + key question
  std::vector<double> depths;    // needle depth as a fraction of the document, in [0, 1]
  std::vector<TaskKind> tasks;
  int repeats = 1;   // prompts per (task, length, depth), each with its own seed
  int num_keys = 4;  // multikey: needles per document
  uint64_t seed = 1;
};
// quick: lengths 1K/2K/4K, depths 0.1/0.5/0.9, passkey + multikey, 1 repeat (18 prompts).
SuiteOptions QuickSuite();
// full: lengths 1K/2K/4K/6K/8K (8K leaves room for the answer in the 8192 context), depths
// 0/0.25/0.5/0.75/1, passkey + multikey, 2 repeats (100 prompts).
SuiteOptions FullSuite();
// "quick" | "full"; INVALID_ARGUMENT otherwise.
absl::StatusOr<SuiteOptions> SuiteByName(std::string_view name);

// Text → token ids (chat control tokens such as "<|im_end|>" must map to their ids).
using TextEncoder = std::function<absl::StatusOr<std::vector<int32_t>>(std::string_view)>;
// Renders one user message with the chat template and generation prompt (ApplyChatTemplate).
using ChatRenderer = std::function<absl::StatusOr<std::string>(std::string_view user_message)>;

struct Needle {
  std::string name;    // multikey: the person; passkey: empty
  std::string key;     // 5 decimal digits
  int paragraph = 0;   // index of the needle paragraph in the document
  double depth = 0.0;  // tokens of the document before the needle / document tokens
};

struct EvalPrompt {
  std::string id;  // e.g. "passkey-2048-d0.50-r0"
  TaskKind kind = TaskKind::kPasskey;
  int64_t target_tokens = 0;
  double requested_depth = 0.0;
  int repeat = 0;
  std::vector<Needle> needles;
  int asked = 0;                           // index into needles of the key asked for
  std::string expected;                    // needles[asked].key
  std::vector<int32_t> context;            // token ids
  std::vector<int32_t> key_question;       // token ids, ends with the answer priming
  std::vector<int32_t> fidelity_question;  // token ids, ends with the generation prompt
  std::string document;                    // the haystack text with its needles (for tests)
};

// Builds every prompt of the suite, in a fixed order (task, length, depth, repeat). Deterministic
// for a given corpus, suite (seed included) and encoder. INVALID_ARGUMENT when a length is too
// short for the needles and questions or when the corpus cannot fill it.
absl::StatusOr<std::vector<EvalPrompt>> BuildSuite(const TextCorpus& corpus,
                                                   const SuiteOptions& suite,
                                                   const TextEncoder& encode,
                                                   const ChatRenderer& render);

// One prompt (exposed for tests): seed picks the text start, names, keys and other depths.
absl::StatusOr<EvalPrompt> BuildPrompt(const TextCorpus& corpus, TaskKind kind,
                                       int64_t target_tokens, double depth, int num_keys,
                                       uint64_t seed, const TextEncoder& encode,
                                       const ChatRenderer& render);

// The first maximal run of ASCII digits in `answer` ("" when none).
std::string FirstDigitRun(std::string_view answer);
// Exact match: the first digit run of the answer equals `expected`.
bool ScoreAnswer(std::string_view answer, std::string_view expected);

}  // namespace xkv

#endif  // XKV_BENCH_EVAL_TASKS_H_
