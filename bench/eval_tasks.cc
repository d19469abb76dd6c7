#include "bench/eval_tasks.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <fstream>
#include <random>
#include <sstream>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "base/status_macros.h"

namespace xkv {
namespace {

constexpr char kInstruction[] = "Read the following document carefully.";
constexpr char kSplit[] = "\x1f";  // never in the corpus (SplitParagraphs drops control bytes)
constexpr char kFidelityQuestion[] = "Summarize the document above in a few sentences.";
constexpr int kMinTruncatedTokens = 16;

constexpr const char* kNames[] = {"Alice", "Bob",    "Carol",  "David", "Emma",  "Frank",
                                  "Grace", "Henry",  "Irene",  "Jack",  "Karen", "Louis",
                                  "Maria", "Nathan", "Olivia", "Peter"};

std::string NeedleText(const Needle& n) {
  if (n.name.empty()) {
    return absl::StrCat("The pass key is ", n.key, ". Remember it. ", n.key, " is the pass key.");
  }
  return absl::StrCat("The pass key for ", n.name, " is ", n.key, ". Remember it. ", n.key,
                      " is the pass key for ", n.name, ".");
}

std::string KeyQuestion(const Needle& n) {
  if (n.name.empty()) return "What is the pass key? Answer with the number only.";
  return absl::StrCat("What is the pass key for ", n.name, "? Answer with the number only.");
}

std::string AnswerPriming(const Needle& n) {
  if (n.name.empty()) return "The pass key is";
  return absl::StrCat("The pass key for ", n.name, " is");
}

// Distinct 5-digit keys and (multikey) distinct names.
std::vector<Needle> MakeNeedles(TaskKind kind, int num_keys, std::mt19937_64& rng) {
  const int count = kind == TaskKind::kPasskey ? 1 : num_keys;
  std::vector<int> names(std::size(kNames));
  for (size_t i = 0; i < names.size(); ++i) names[i] = static_cast<int>(i);
  std::shuffle(names.begin(), names.end(), rng);
  std::uniform_int_distribution<int> key_dist(10000, 99999);
  absl::flat_hash_set<int> used;
  std::vector<Needle> needles(count);
  for (int i = 0; i < count; ++i) {
    int key = key_dist(rng);
    while (!used.insert(key).second) key = key_dist(rng);
    needles[i].key = std::to_string(key);
    if (kind == TaskKind::kMultiKey) needles[i].name = kNames[names[i % names.size()]];
  }
  return needles;
}

absl::StatusOr<int64_t> CountTokens(const TextEncoder& encode, std::string_view text) {
  ASSIGN_OR_RETURN(std::vector<int32_t> ids, encode(text));
  return static_cast<int64_t>(ids.size());
}

// The longest word prefix of `paragraph` with at most `budget` tokens ("" when none fits).
absl::StatusOr<std::string> TruncateToTokens(const std::string& paragraph, int64_t budget,
                                             const TextEncoder& encode) {
  std::vector<absl::string_view> words = absl::StrSplit(paragraph, ' ');
  size_t lo = 0, hi = words.size();  // invariant: prefix of lo words fits
  while (lo < hi) {
    const size_t mid = (lo + hi + 1) / 2;
    std::string text = absl::StrJoin(words.begin(), words.begin() + mid, " ");
    ASSIGN_OR_RETURN(int64_t n, CountTokens(encode, text));
    if (n <= budget) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return absl::StrJoin(words.begin(), words.begin() + lo, " ");
}

struct Haystack {
  std::vector<std::string> paragraphs;
  std::vector<int64_t> tokens;  // per paragraph (+1 for its "\n\n" separator)
  int64_t total = 0;
};

// Consecutive corpus paragraphs from a seeded start until `budget` tokens are filled; the last
// one is cut at a word boundary.
absl::StatusOr<Haystack> FillHaystack(const TextCorpus& corpus, int64_t budget,
                                      std::mt19937_64& rng, const TextEncoder& encode) {
  Haystack h;
  const size_t n = corpus.paragraphs.size();
  const size_t start = std::uniform_int_distribution<size_t>(0, n - 1)(rng);
  for (size_t i = 0; i < n && h.total < budget; ++i) {
    const std::string& p = corpus.paragraphs[(start + i) % n];
    ASSIGN_OR_RETURN(int64_t t, CountTokens(encode, p));
    if (h.total + t + 1 > budget) {
      const int64_t left = budget - h.total - 1;
      if (left < kMinTruncatedTokens) break;
      ASSIGN_OR_RETURN(std::string cut, TruncateToTokens(p, left, encode));
      ASSIGN_OR_RETURN(t, CountTokens(encode, cut));
      h.paragraphs.push_back(std::move(cut));
      h.tokens.push_back(t + 1);
      h.total += t + 1;
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

// Inserts the needles (needle i at boundary[i]) and fills their paragraph indices and depths.
std::string AssembleDocument(const Haystack& h, std::vector<Needle>& needles,
                             const std::vector<int>& boundary,
                             const std::vector<int64_t>& needle_tokens) {
  std::vector<std::string> out;
  int64_t all = h.total;
  for (int64_t t : needle_tokens) all += t;
  const double total = static_cast<double>(all);
  int64_t cum = 0;
  for (size_t b = 0; b <= h.paragraphs.size(); ++b) {
    for (size_t i = 0; i < needles.size(); ++i) {
      if (boundary[i] != static_cast<int>(b)) continue;
      needles[i].paragraph = static_cast<int>(out.size());
      needles[i].depth = static_cast<double>(cum) / total;
      out.push_back(NeedleText(needles[i]));
      cum += needle_tokens[i];
    }
    if (b < h.paragraphs.size()) {
      out.push_back(h.paragraphs[b]);
      cum += h.tokens[b];
    }
  }
  return absl::StrJoin(out, "\n\n");
}

// Boundaries: the asked needle at `depth`, the others at distinct seeded boundaries.
std::vector<int> PlaceNeedles(const Haystack& h, int count, int asked, double depth,
                              std::mt19937_64& rng) {
  const int n = static_cast<int>(h.paragraphs.size());
  std::vector<int> boundary(count, -1);
  boundary[asked] = BoundaryAtDepth(h, depth);
  absl::flat_hash_set<int> used = {boundary[asked]};
  std::uniform_real_distribution<double> u(0.0, 1.0);
  for (int i = 0; i < count; ++i) {
    if (i == asked) continue;
    int b = BoundaryAtDepth(h, u(rng));
    for (int tries = 0; used.contains(b) && tries <= n; ++tries) b = (b + 1) % (n + 1);
    used.insert(b);
    boundary[i] = b;
  }
  return boundary;
}

// context / question split of one rendered chat prompt.
absl::StatusOr<std::pair<std::string, std::string>> RenderSplit(const ChatRenderer& render,
                                                                const std::string& document,
                                                                const std::string& question) {
  ASSIGN_OR_RETURN(std::string text,
                   render(absl::StrCat(kInstruction, "\n\n", document, kSplit, "\n\n", question)));
  const size_t pos = text.find(kSplit);
  if (pos == std::string::npos || text.find(kSplit, pos + 1) != std::string::npos) {
    return absl::InternalError("eval tasks: the chat template lost the split marker");
  }
  return std::make_pair(text.substr(0, pos), text.substr(pos + 1));
}

bool MostlyLetters(std::string_view p) {
  int64_t letters = 0;
  for (unsigned char c : p) letters += std::isalpha(c) || c == ' ' ? 1 : 0;
  return letters >= 0.85 * static_cast<double>(p.size());
}

}  // namespace

std::string_view TaskName(TaskKind kind) {
  return kind == TaskKind::kPasskey ? "passkey" : "multikey";
}

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
  if (name == "all") return Split::kAll;
  if (name == "dev") return Split::kDev;
  if (name == "test") return Split::kTest;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown split '", name, "'; allowed: all, dev, test"));
}

std::vector<std::string> CorpusPaths(Split split) {
  if (split == Split::kAll) return DefaultCorpusPaths();
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
  switch (split) {
    case Split::kAll:
      return seed;
    case Split::kDev:
      return seed ^ 0xd1b54a32d192ed03ULL;
    case Split::kTest:
      return seed ^ 0x8cb92ba72f3d8dd7ULL;
  }
  return seed;
}

std::vector<std::string> SplitParagraphs(std::string_view text) {
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

SuiteOptions QuickSuite() {
  return {
      "quick", {1024, 2048, 4096}, {0.1, 0.5, 0.9}, {TaskKind::kPasskey, TaskKind::kMultiKey}, 1, 4,
      1};
}

SuiteOptions FullSuite() {
  return {"full",
          {1024, 2048, 4096, 6144, 8000},
          {0.0, 0.25, 0.5, 0.75, 1.0},
          {TaskKind::kPasskey, TaskKind::kMultiKey},
          2,
          4,
          1};
}

absl::StatusOr<SuiteOptions> SuiteByName(std::string_view name) {
  if (name == "quick") return QuickSuite();
  if (name == "full") return FullSuite();
  return absl::InvalidArgumentError(
      absl::StrCat("eval: unknown suite '", std::string(name), "' (expected quick or full)"));
}

absl::StatusOr<EvalPrompt> BuildPrompt(const TextCorpus& corpus, TaskKind kind,
                                       int64_t target_tokens, double depth, int num_keys,
                                       uint64_t seed, const TextEncoder& encode,
                                       const ChatRenderer& render) {
  if (depth < 0.0 || depth > 1.0 || num_keys < 1 || corpus.paragraphs.empty()) {
    return absl::InvalidArgumentError("eval tasks: depth outside [0, 1], no keys or no corpus");
  }
  std::mt19937_64 rng(seed);
  EvalPrompt p;
  p.kind = kind;
  p.target_tokens = target_tokens;
  p.requested_depth = depth;
  p.needles = MakeNeedles(kind, num_keys, rng);
  p.asked = std::uniform_int_distribution<int>(0, p.needles.size() - 1)(rng);
  p.expected = p.needles[p.asked].key;
  const Needle& asked = p.needles[p.asked];
  const std::string question = KeyQuestion(asked);
  // Everything but the haystack: template, instruction, question, priming, needles.
  ASSIGN_OR_RETURN(auto empty, RenderSplit(render, "", question));
  ASSIGN_OR_RETURN(int64_t overhead,
                   CountTokens(encode, empty.first + empty.second + " " + AnswerPriming(asked)));
  std::vector<int64_t> needle_tokens;  // each with its "\n\n" separator
  for (const Needle& n : p.needles) {
    ASSIGN_OR_RETURN(int64_t t, CountTokens(encode, NeedleText(n)));
    needle_tokens.push_back(t + 1);
  }
  int64_t budget = target_tokens - overhead;
  for (int64_t t : needle_tokens) budget -= t;
  if (budget < 4 * kMinTruncatedTokens) {
    return absl::InvalidArgumentError(absl::StrCat("eval tasks: ", target_tokens,
                                                   " tokens is too short (prompt overhead ",
                                                   target_tokens - budget, ")"));
  }
  ASSIGN_OR_RETURN(Haystack h, FillHaystack(corpus, budget, rng, encode));
  const std::vector<int> boundary =
      PlaceNeedles(h, static_cast<int>(p.needles.size()), p.asked, depth, rng);
  p.document = AssembleDocument(h, p.needles, boundary, needle_tokens);

  ASSIGN_OR_RETURN(auto key, RenderSplit(render, p.document, question));
  ASSIGN_OR_RETURN(auto fid, RenderSplit(render, p.document, kFidelityQuestion));
  ASSIGN_OR_RETURN(p.context, encode(key.first));
  ASSIGN_OR_RETURN(p.key_question, encode(key.second + AnswerPriming(asked)));
  ASSIGN_OR_RETURN(p.fidelity_question, encode(fid.second));
  p.id = absl::StrFormat("%s-%d-d%.2f-s%d", TaskName(kind), target_tokens, depth,
                         static_cast<int>(seed % 100000));
  return p;
}

absl::StatusOr<std::vector<EvalPrompt>> BuildSuite(const TextCorpus& corpus,
                                                   const SuiteOptions& suite,
                                                   const TextEncoder& encode,
                                                   const ChatRenderer& render) {
  std::vector<EvalPrompt> prompts;
  uint64_t index = 0;
  for (TaskKind kind : suite.tasks) {
    for (int64_t length : suite.lengths) {
      for (double depth : suite.depths) {
        for (int r = 0; r < suite.repeats; ++r, ++index) {
          // One seed per prompt: the suite seed mixed with the prompt's index (SplitMix64).
          uint64_t z = suite.seed + 0x9e3779b97f4a7c15ULL * (index + 1);
          z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
          z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
          ASSIGN_OR_RETURN(EvalPrompt p, BuildPrompt(corpus, kind, length, depth, suite.num_keys,
                                                     z ^ (z >> 31), encode, render));
          p.repeat = r;
          p.id = absl::StrFormat("%s-%d-d%.2f-r%d", TaskName(kind), length, depth, r);
          prompts.push_back(std::move(p));
        }
      }
    }
  }
  return prompts;
}

std::string FirstDigitRun(std::string_view answer) {
  size_t i = 0;
  while (i < answer.size() && !std::isdigit(static_cast<unsigned char>(answer[i]))) ++i;
  size_t j = i;
  while (j < answer.size() && std::isdigit(static_cast<unsigned char>(answer[j]))) ++j;
  return std::string(answer.substr(i, j - i));
}

bool ScoreAnswer(std::string_view answer, std::string_view expected) {
  return !expected.empty() && FirstDigitRun(answer) == expected;
}

}  // namespace xkv
