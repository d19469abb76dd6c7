#include "bench/eval_tasks.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <fstream>
#include <random>
#include <sstream>
#include <utility>

#include "absl/container/btree_set.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "base/status_macros.h"
#include "bench/eval_task_families.h"

namespace xkv {
namespace {

constexpr int kMinTruncatedTokens = 16;
constexpr int kContinuationWords = 80;  // about 100 tokens: the fidelity continuation
constexpr int kMaxRedraws = 8;          // new values when an answer is already in the haystack

constexpr TaskKind kAllTasks[] = {TaskKind::kNiahNumber,       TaskKind::kNiahWord,
                                  TaskKind::kNiahCode,         TaskKind::kMultiKey,
                                  TaskKind::kMultiValue,       TaskKind::kMultiQuery,
                                  TaskKind::kVariableTracking, TaskKind::kCommonWords};

absl::StatusOr<int64_t> CountTokens(const TextEncoder& encode, absl::string_view text) {
  ASSIGN_OR_RETURN(std::vector<int32_t> ids, encode(text, false));
  return static_cast<int64_t>(ids.size());
}

std::vector<absl::string_view> Words(const std::string& text) {
  return absl::StrSplit(text, ' ', absl::SkipEmpty());
}

// The longest word prefix of `paragraph` with at most `budget` tokens ("" when none fits).
absl::StatusOr<size_t> WordsWithin(const std::vector<absl::string_view>& words, int64_t budget,
                                   const TextEncoder& encode) {
  size_t lo = 0, hi = words.size();  // invariant: prefix of lo words fits
  while (lo < hi) {
    const size_t mid = (lo + hi + 1) / 2;
    ASSIGN_OR_RETURN(int64_t n,
                     CountTokens(encode, absl::StrJoin(words.begin(), words.begin() + mid, " ")));
    if (n <= budget) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

struct Haystack {
  std::vector<std::string> paragraphs;
  std::vector<int64_t> tokens;  // per paragraph (+1 for its "\n\n" separator)
  int64_t total = 0;
  std::string continuation;  // the real text right after the haystack
};

// Consecutive corpus paragraphs from a seeded start until `budget` tokens are filled; the last
// one is cut at a word boundary and what follows it is the continuation.
absl::StatusOr<Haystack> FillHaystack(const TextCorpus& corpus, int64_t budget,
                                      std::mt19937_64& rng, const TextEncoder& encode) {
  Haystack h;
  const size_t n = corpus.paragraphs.size();
  const size_t start = std::uniform_int_distribution<size_t>(0, n - 1)(rng);
  size_t i = 0;
  std::vector<absl::string_view> rest;  // words of the cut paragraph after the cut
  for (; i < n && h.total < budget; ++i) {
    const std::string& p = corpus.paragraphs[(start + i) % n];
    ASSIGN_OR_RETURN(int64_t t, CountTokens(encode, p));
    if (h.total + t + 1 > budget) {
      const int64_t left = budget - h.total - 1;
      if (left < kMinTruncatedTokens) break;
      const std::vector<absl::string_view> words = Words(p);
      ASSIGN_OR_RETURN(const size_t keep, WordsWithin(words, left, encode));
      const std::string cut = absl::StrJoin(words.begin(), words.begin() + keep, " ");
      ASSIGN_OR_RETURN(t, CountTokens(encode, cut));
      h.paragraphs.push_back(cut);
      h.tokens.push_back(t + 1);
      h.total += t + 1;
      rest.assign(words.begin() + keep, words.end());
      ++i;
      break;
    }
    h.paragraphs.push_back(p);
    h.tokens.push_back(t + 1);
    h.total += t + 1;
  }
  if (h.total < budget - 2 * kMinTruncatedTokens - 8) {
    return absl::InvalidArgumentError(absl::StrCat("eval tasks: the corpus (", n,
                                                   " paragraphs) cannot fill ", budget, " tokens"));
  }
  // Continuation: the cut paragraph's remainder, then the next paragraphs, kContinuationWords.
  std::string cont;
  rest.resize(std::min<size_t>(rest.size(), kContinuationWords));
  size_t words = rest.size();
  if (!rest.empty()) cont = absl::StrCat(" ", absl::StrJoin(rest, " "));
  for (size_t k = 0; words < kContinuationWords && k < n; ++k) {
    const std::vector<absl::string_view> next = Words(corpus.paragraphs[(start + i + k) % n]);
    absl::StrAppend(&cont, "\n\n", absl::StrJoin(next, " "));
    words += next.size();
  }
  h.continuation = std::move(cont);
  return h;
}

// Paragraph boundary (0..n) whose token offset is closest to depth * total.
int BoundaryAtDepth(const Haystack& h, double depth) {
  const double want = depth * static_cast<double>(h.total);
  int best = 0;
  double best_err = want;
  int64_t cum = 0;
  for (size_t i = 0; i < h.paragraphs.size(); ++i) {
    cum += h.tokens[i];
    const double err = std::abs(static_cast<double>(cum) - want);
    if (err < best_err) {
      best = static_cast<int>(i) + 1;
      best_err = err;
    }
  }
  return best;
}

// Boundaries: needle 0 at `depth`, the others at seeded boundaries (several may share one).
std::vector<int> PlaceNeedles(const Haystack& h, int count, double depth, std::mt19937_64& rng) {
  std::vector<int> boundary(count);
  boundary[0] = BoundaryAtDepth(h, depth);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  for (int i = 1; i < count; ++i) boundary[i] = BoundaryAtDepth(h, u(rng));
  return boundary;
}

// The document with needle i at boundary[i] (in needle order within a boundary); the depth of
// needle 0 (document tokens before it / document tokens).
std::string AssembleDocument(const Haystack& h, const std::vector<std::string>& needles,
                             const std::vector<int>& boundary,
                             const std::vector<int64_t>& needle_tokens, double* depth) {
  std::vector<std::string> out;
  int64_t all = h.total;
  for (int64_t t : needle_tokens) all += t;
  int64_t cum = 0;
  for (size_t b = 0; b <= h.paragraphs.size(); ++b) {
    for (size_t i = 0; i < needles.size(); ++i) {
      if (boundary[i] != static_cast<int>(b)) continue;
      if (i == 0) *depth = static_cast<double>(cum) / static_cast<double>(all);
      out.push_back(needles[i]);
      cum += needle_tokens[i];
    }
    if (b < h.paragraphs.size()) {
      out.push_back(h.paragraphs[b]);
      cum += h.tokens[b];
    }
  }
  return absl::StrJoin(out, "\n\n");
}

bool MostlyLetters(absl::string_view p) {
  int64_t letters = 0;
  for (unsigned char c : p) letters += std::isalpha(c) || c == ' ' ? 1 : 0;
  return letters >= 0.85 * static_cast<double>(p.size());
}

// Distinct lowercase words of 4-10 letters in the corpus, sorted.
std::vector<std::string> Vocabulary(const TextCorpus& corpus) {
  absl::btree_set<std::string> words;
  for (const std::string& p : corpus.paragraphs) {
    for (absl::string_view w : absl::StrSplit(p, absl::ByAnyChar(" .,;:()\"'"))) {
      if (w.size() < 4 || w.size() > 10) continue;
      bool lower = true;
      for (char c : w) lower = lower && c >= 'a' && c <= 'z';
      if (lower) words.insert(std::string(w));
    }
  }
  return {words.begin(), words.end()};
}

// Tokens of the rendered prompt: chat template around context + question, then the prefix.
absl::StatusOr<int64_t> PromptTokens(const TaskRecord& r, const TextEncoder& encode,
                                     const ChatRenderer& render) {
  const ChatMessage msg{"user", r.context + r.question};
  ASSIGN_OR_RETURN(std::string text, render(absl::MakeConstSpan(&msg, 1)));
  ASSIGN_OR_RETURN(std::vector<int32_t> ids, encode(text + r.answer_prefix, true));
  return static_cast<int64_t>(ids.size());
}

absl::StatusOr<TaskRecord> BuildOnce(const TextCorpus& corpus, TaskKind kind, int64_t target_tokens,
                                     double depth, uint64_t seed, const TextEncoder& encode,
                                     const ChatRenderer& render) {
  std::mt19937_64 rng(seed);
  TaskRecord r;
  r.task = std::string(TaskName(kind));
  r.length = target_tokens;
  TaskText text;
  std::string document;
  if (kind == TaskKind::kCommonWords) {
    text = CommonWordsText();
    TaskRecord empty;
    empty.context = text.instruction;
    empty.question = text.question;
    empty.answer_prefix = text.answer_prefix;
    ASSIGN_OR_RETURN(const int64_t overhead, PromptTokens(empty, encode, render));
    const int64_t budget = target_tokens - overhead;
    if (budget < 4 * kMinTruncatedTokens) {
      return absl::InvalidArgumentError(
          absl::StrCat("eval tasks: ", target_tokens, " tokens is too short for cwe"));
    }
    auto count = [&encode](absl::string_view t) { return CountTokens(encode, t); };
    ASSIGN_OR_RETURN(document, CommonWordsList(Vocabulary(corpus), budget, rng, count, &text));
    // The fidelity continuation: real prose after the list.
    ASSIGN_OR_RETURN(Haystack h, FillHaystack(corpus, 4 * kMinTruncatedTokens, rng, encode));
    r.continuation = h.continuation;
  } else {
    text = NeedleTaskText(kind, rng);
    TaskRecord empty;
    empty.context = text.instruction;
    empty.question = text.question;
    empty.answer_prefix = text.answer_prefix;
    ASSIGN_OR_RETURN(const int64_t overhead, PromptTokens(empty, encode, render));
    std::vector<int64_t> needle_tokens;  // each with its "\n\n" separator
    int64_t budget = target_tokens - overhead;
    for (const std::string& n : text.needles) {
      ASSIGN_OR_RETURN(int64_t t, CountTokens(encode, n));
      needle_tokens.push_back(t + 1);
      budget -= t + 1;
    }
    if (budget < 4 * kMinTruncatedTokens) {
      return absl::InvalidArgumentError(absl::StrCat("eval tasks: ", target_tokens,
                                                     " tokens is too short (prompt overhead ",
                                                     target_tokens - budget, ")"));
    }
    ASSIGN_OR_RETURN(Haystack h, FillHaystack(corpus, budget, rng, encode));
    const std::vector<int> boundary =
        PlaceNeedles(h, static_cast<int>(text.needles.size()), depth, rng);
    document = AssembleDocument(h, text.needles, boundary, needle_tokens, &r.depth);
    r.continuation = h.continuation;
  }
  r.context = text.instruction + document;
  r.question = text.question;
  r.answer_prefix = text.answer_prefix;
  r.answers = text.answers;
  return r;
}

}  // namespace

absl::string_view TaskName(TaskKind kind) {
  switch (kind) {
    case TaskKind::kNiahNumber:
      return "niah_number";
    case TaskKind::kNiahWord:
      return "niah_word";
    case TaskKind::kNiahCode:
      return "niah_code";
    case TaskKind::kMultiKey:
      return "multikey";
    case TaskKind::kMultiValue:
      return "multivalue";
    case TaskKind::kMultiQuery:
      return "multiquery";
    case TaskKind::kVariableTracking:
      return "vt";
    case TaskKind::kCommonWords:
      return "cwe";
  }
  return "?";
}

absl::StatusOr<TaskKind> ParseTaskKind(absl::string_view name) {
  std::vector<std::string> names;
  for (TaskKind k : kAllTasks) {
    if (TaskName(k) == name) return k;
    names.emplace_back(TaskName(k));
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown task '", name, "'; allowed: ", absl::StrJoin(names, ", ")));
}

int64_t CountOccurrences(absl::string_view text, absl::string_view what) {
  int64_t n = 0;
  for (size_t pos = text.find(what); pos != absl::string_view::npos;
       pos = text.find(what, pos + 1)) {
    ++n;
  }
  return n;
}

std::vector<TaskKind> AllTasks() { return {std::begin(kAllTasks), std::end(kAllTasks)}; }

std::vector<std::string> DefaultCorpusPaths() {
  std::vector<std::string> paths;
  for (const char* name : {"GPL-3", "GPL-2", "GPL-1", "LGPL-2.1", "LGPL-3", "Apache-2.0", "MPL-2.0",
                           "MPL-1.1", "GFDL-1.3", "GFDL-1.2", "Artistic", "CC0-1.0", "BSD"}) {
    paths.push_back(absl::StrCat("/usr/share/common-licenses/", name));
  }
  paths.push_back("/usr/share/doc/dpkg/spec/triggers.txt");
  paths.push_back("/usr/share/doc/dpkg/spec/rootless-builds.txt");
  return paths;
}

absl::StatusOr<Split> ParseSplit(absl::string_view name) {
  if (name == "dev") return Split::kDev;
  if (name == "test") return Split::kTest;
  return absl::InvalidArgumentError(absl::StrCat("unknown split '", name, "'; allowed: dev, test"));
}

absl::string_view SplitName(Split split) { return split == Split::kDev ? "dev" : "test"; }

std::vector<std::string> CorpusPaths(Split split) {
  std::vector<std::string> paths;
  const bool dev = split == Split::kDev;
  for (const char* name :
       dev ? std::vector<const char*>{"GPL-2", "GPL-1", "LGPL-2.1", "Artistic"}
           : std::vector<const char*>{"LGPL-3", "Apache-2.0", "MPL-2.0", "MPL-1.1", "GFDL-1.3",
                                      "GFDL-1.2", "CC0-1.0", "BSD"}) {
    paths.push_back(absl::StrCat("/usr/share/common-licenses/", name));
  }
  paths.push_back(dev ? "/usr/share/doc/dpkg/spec/triggers.txt"
                      : "/usr/share/doc/dpkg/spec/rootless-builds.txt");
  return paths;
}

uint64_t SplitSeed(Split split, uint64_t seed) {
  return seed ^ (split == Split::kDev ? 0xd1b54a32d192ed03ULL : 0x8cb92ba72f3d8dd7ULL);
}

std::vector<std::string> SplitParagraphs(absl::string_view text) {
  std::vector<std::string> out;
  std::string cur;
  bool pending_space = false;
  auto flush = [&] {
    if (cur.size() >= kMinParagraphChars && MostlyLetters(cur)) out.push_back(cur);
    cur.clear();
    pending_space = false;
  };
  for (absl::string_view line : absl::StrSplit(absl::string_view(text.data(), text.size()), '\n')) {
    bool blank = true;
    for (unsigned char c : line) blank = blank && std::isspace(c);
    if (blank) {
      flush();
      continue;
    }
    for (unsigned char c : line) {
      if (std::isspace(c) || std::iscntrl(c)) {
        pending_space = !cur.empty();
        continue;
      }
      if (pending_space) cur.push_back(' ');
      pending_space = false;
      cur.push_back(static_cast<char>(c));
    }
    pending_space = !cur.empty();
  }
  flush();
  return out;
}

absl::StatusOr<TextCorpus> LoadCorpus(absl::Span<const std::string> paths) {
  TextCorpus corpus;
  absl::flat_hash_set<std::string> seen;  // GPL and GPL-3 are the same text
  for (const std::string& path : paths) {
    std::ifstream in(path, std::ios::binary);
    if (!in) continue;
    std::stringstream ss;
    ss << in.rdbuf();
    if (!seen.insert(ss.str()).second) continue;
    std::vector<std::string> paragraphs = SplitParagraphs(ss.str());
    if (paragraphs.empty()) continue;
    corpus.sources.push_back(path);
    for (std::string& p : paragraphs) corpus.paragraphs.push_back(std::move(p));
  }
  if (corpus.paragraphs.size() < 20) {
    return absl::NotFoundError(
        absl::StrCat("eval tasks: no usable English text found (", corpus.paragraphs.size(),
                     " paragraphs) in: ", absl::StrJoin(paths, ", "),
                     ". Install Debian's base-files (licenses under /usr/share/common-licenses)."));
  }
  return corpus;
}

SuiteOptions QuickSuite() { return {"quick", {1024, 2048, 4096}, AllTasks(), 1, 1}; }

SuiteOptions FullSuite() { return {"full", {1024, 2048, 4096, 8000}, AllTasks(), 13, 1}; }

absl::StatusOr<SuiteOptions> SuiteByName(absl::string_view name) {
  if (name == "quick") return QuickSuite();
  if (name == "full") return FullSuite();
  return absl::InvalidArgumentError(
      absl::StrCat("eval: unknown suite '", std::string(name), "' (expected quick or full)"));
}

absl::StatusOr<TaskRecord> BuildTask(const TextCorpus& corpus, TaskKind kind, int64_t target_tokens,
                                     double depth, uint64_t seed, const TextEncoder& encode,
                                     const ChatRenderer& render) {
  if (depth < 0.0 || depth > 1.0 || corpus.paragraphs.empty()) {
    return absl::InvalidArgumentError("eval tasks: depth outside [0, 1] or no corpus");
  }
  // Needle tasks: every answer exactly once in the context; else draw new values.
  for (int attempt = 0;; ++attempt) {
    ASSIGN_OR_RETURN(TaskRecord r,
                     BuildOnce(corpus, kind, target_tokens, depth,
                               seed + 0x9e3779b97f4a7c15ULL * attempt, encode, render));
    bool unique = true;
    for (const std::string& a : r.answers) unique = unique && CountOccurrences(r.context, a) == 1;
    if (kind == TaskKind::kCommonWords || unique) return r;
    if (attempt + 1 >= kMaxRedraws) {
      return absl::InternalError(
          absl::StrCat("eval tasks: ", TaskName(kind), ": an answer occurs in the haystack text"));
    }
  }
}

absl::StatusOr<std::vector<TaskRecord>> BuildSuite(const TextCorpus& corpus,
                                                   const SuiteOptions& suite, Split split,
                                                   const TextEncoder& encode,
                                                   const ChatRenderer& render) {
  std::vector<TaskRecord> out;
  const uint64_t base = SplitSeed(split, suite.seed);
  uint64_t index = 0;
  for (TaskKind kind : suite.tasks) {
    for (int64_t length : suite.lengths) {
      for (int r = 0; r < suite.repeats; ++r, ++index) {
        // One seed per prompt: the split's seed mixed with the prompt's index (SplitMix64).
        uint64_t z = base + 0x9e3779b97f4a7c15ULL * (index + 1);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        const double depth =
            suite.repeats == 1 ? 0.5 : static_cast<double>(r) / (suite.repeats - 1);
        ASSIGN_OR_RETURN(TaskRecord p,
                         BuildTask(corpus, kind, length, depth, z ^ (z >> 31), encode, render));
        p.split = std::string(SplitName(split));
        p.id = absl::StrFormat("%s-%d-%s-r%02d", TaskName(kind), length, SplitName(split), r);
        out.push_back(std::move(p));
      }
    }
  }
  return out;
}

}  // namespace xkv
