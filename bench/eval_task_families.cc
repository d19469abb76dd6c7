#include "bench/eval_task_families.h"

#include <algorithm>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"

namespace xkv {
namespace {

// Keys and word values: concrete, unusual in license texts; disjoint lists.
constexpr const char* kKeys[] = {
    "amber-falcon",   "silent-harbor",  "crimson-maple", "velvet-river",  "hollow-summit",
    "brisk-lantern",  "golden-thistle", "quiet-meadow",  "rusty-compass", "frozen-orchid",
    "lunar-pebble",   "misty-canyon",   "scarlet-heron", "wooden-kettle", "copper-willow",
    "bright-glacier", "dusty-saddle",   "gentle-tundra", "proud-juniper", "swift-marble",
    "tidy-cobalt",    "vivid-sparrow",  "wild-cinnamon", "young-pelican"};
constexpr const char* kWords[] = {
    "pineapple", "trombone",  "kangaroo",  "avalanche", "marmalade", "lighthouse", "porcupine",
    "saxophone", "dandelion", "volcano",   "pancake",   "flamingo",  "hurricane",  "blueberry",
    "accordion", "cathedral", "waterfall", "igloo",     "tangerine", "chameleon",  "harmonica",
    "meteorite", "octopus",   "cinnamon",  "snowflake", "walrus",    "lemonade",   "telescope"};

constexpr char kUpper[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
constexpr char kCodeChars[] = "abcdefghijklmnopqrstuvwxyz0123456789";

template <size_t N>
std::vector<std::string> Pick(const char* const (&list)[N], int count, std::mt19937_64& rng) {
  std::vector<std::string> all(std::begin(list), std::end(list));
  std::shuffle(all.begin(), all.end(), rng);
  all.resize(count);
  return all;
}

std::vector<std::string> Numbers(int count, std::mt19937_64& rng) {
  std::uniform_int_distribution<int> d(1000000, 9999999);
  absl::flat_hash_set<int> used;
  std::vector<std::string> out;
  while (static_cast<int>(out.size()) < count) {
    const int x = d(rng);
    if (used.insert(x).second) out.push_back(std::to_string(x));
  }
  return out;
}

// 8 characters of [a-z0-9] with at least two letters and two digits.
std::string Code(std::mt19937_64& rng) {
  std::uniform_int_distribution<int> d(0, 35);
  while (true) {
    std::string s;
    int digits = 0;
    for (int i = 0; i < 8; ++i) {
      s.push_back(kCodeChars[d(rng)]);
      digits += s.back() >= '0' && s.back() <= '9';
    }
    if (digits >= 2 && digits <= 6) return s;
  }
}

std::vector<std::string> VariableNames(int count, std::mt19937_64& rng) {
  std::uniform_int_distribution<int> d(0, 25);
  absl::flat_hash_set<std::string> used;
  std::vector<std::string> out;
  while (static_cast<int>(out.size()) < count) {
    std::string s;
    for (int i = 0; i < 5; ++i) s.push_back(kUpper[d(rng)]);
    if (used.insert(s).second) out.push_back(s);
  }
  return out;
}

std::string MagicInstruction(absl::string_view plural) {
  return absl::StrCat("Some special magic ", plural,
                      " are hidden within the following text. Make sure to memorize it. I will "
                      "quiz you about the ",
                      plural, " afterwards.\n\n");
}

std::string MagicNeedle(absl::string_view noun, absl::string_view key, absl::string_view value) {
  return absl::StrCat("One of the special magic ", noun, "s for ", key, " is: ", value, ".");
}

TaskText SingleNeedle(absl::string_view noun, int distractors, const std::string& value,
                      std::vector<std::string> values, std::mt19937_64& rng) {
  const std::vector<std::string> keys = Pick(kKeys, 1 + distractors, rng);
  TaskText t;
  t.instruction = MagicInstruction(absl::StrCat(noun, "s"));
  t.needles.push_back(MagicNeedle(noun, keys[0], value));
  for (int i = 0; i < distractors; ++i)
    t.needles.push_back(MagicNeedle(noun, keys[1 + i], values[i]));
  t.question = absl::StrCat("\n\nWhat is the special magic ", noun, " for ", keys[0],
                            " mentioned in the provided text?");
  t.answer_prefix = absl::StrCat("The special magic ", noun, " for ", keys[0],
                                 " mentioned in the provided text is");
  t.answers = {value};
  return t;
}

TaskText VariableTracking(std::mt19937_64& rng) {
  constexpr int kHops = 4;
  const std::vector<std::string> vars = VariableNames(2 * (kHops + 1), rng);
  const std::vector<std::string> values = Numbers(2, rng);
  TaskText t;
  t.instruction =
      "Memorize and track the chains of variable assignments hidden in the following text.\n\n";
  for (int chain = 0; chain < 2; ++chain) {  // chain 0 is asked; its root goes at the depth
    const int v0 = chain * (kHops + 1);
    t.needles.push_back(absl::StrCat("VAR ", vars[v0], " = ", values[chain], "."));
    for (int h = 1; h <= kHops; ++h) {
      t.needles.push_back(absl::StrCat("VAR ", vars[v0 + h], " = VAR ", vars[v0 + h - 1], "."));
    }
  }
  t.question = absl::StrCat("\n\nQuestion: What is the numeric value of the variable ", vars[kHops],
                            "? Follow its chain of assignments.");
  t.answer_prefix = absl::StrCat("Answer: The value of ", vars[kHops], " is");
  t.answers = {values[0]};
  return t;
}

}  // namespace

TaskText NeedleTaskText(TaskKind kind, std::mt19937_64& rng) {
  switch (kind) {
    case TaskKind::kNiahNumber:
      return SingleNeedle("number", 0, Numbers(1, rng)[0], {}, rng);
    case TaskKind::kNiahWord:
      return SingleNeedle("word", 0, Pick(kWords, 1, rng)[0], {}, rng);
    case TaskKind::kNiahCode:
      return SingleNeedle("code", 0, Code(rng), {}, rng);
    case TaskKind::kMultiKey: {
      const int distractors = std::uniform_int_distribution<int>(2, 4)(rng);
      std::vector<std::string> values = Numbers(1 + distractors, rng);
      const std::string asked = values[0];
      values.erase(values.begin());
      return SingleNeedle("number", distractors, asked, values, rng);
    }
    case TaskKind::kMultiValue: {
      const std::string key = Pick(kKeys, 1, rng)[0];
      TaskText t;
      t.instruction = MagicInstruction("numbers");
      t.answers = Numbers(4, rng);
      for (const std::string& v : t.answers) t.needles.push_back(MagicNeedle("number", key, v));
      t.question = absl::StrCat("\n\nWhat are all the special magic numbers for ", key,
                                " mentioned in the provided text?");
      t.answer_prefix = absl::StrCat("The special magic numbers for ", key,
                                     " mentioned in the provided text are");
      return t;
    }
    case TaskKind::kMultiQuery: {
      const std::vector<std::string> keys = Pick(kKeys, 4, rng);
      const std::vector<std::string> values = Numbers(4, rng);
      TaskText t;
      t.instruction = MagicInstruction("numbers");
      for (int i = 0; i < 4; ++i) t.needles.push_back(MagicNeedle("number", keys[i], values[i]));
      t.question = absl::StrCat("\n\nWhat are all the special magic numbers for ", keys[0], " and ",
                                keys[1], " mentioned in the provided text?");
      t.answer_prefix = absl::StrCat("The special magic numbers for ", keys[0], " and ", keys[1],
                                     " mentioned in the provided text are");
      t.answers = {values[0], values[1]};
      return t;
    }
    case TaskKind::kVariableTracking:
      return VariableTracking(rng);
    case TaskKind::kCommonWords:
      break;
  }
  return {};
}

TaskText CommonWordsText() {
  TaskText t;
  t.instruction =
      "Below is a numbered list of words. In these words, some appear more often than others. "
      "Memorize the ones that appear most often.\n\n";
  t.question = "\n\nQuestion: What are the 10 most common words in the list above?";
  t.answer_prefix = "Answer: The top 10 words that appear most often in the list are:";
  return t;
}

absl::StatusOr<std::string> CommonWordsList(
    const std::vector<std::string>& vocabulary, int64_t budget, std::mt19937_64& rng,
    const std::function<absl::StatusOr<int64_t>(absl::string_view)>& count, TaskText* text) {
  if (vocabulary.size() < 40) {
    return absl::InvalidArgumentError("eval tasks: cwe needs at least 40 distinct words");
  }
  std::vector<std::string> words = vocabulary;
  std::shuffle(words.begin(), words.end(), rng);
  const uint64_t order_seed = rng();
  // A list of n items: 10 frequent words, `frequent` times each, the rest 3 times each.
  auto build = [&](int64_t n) {
    const int64_t frequent = std::max<int64_t>(3, n / 40);
    std::vector<std::string> items;
    for (int w = 0; w < 10; ++w) items.insert(items.end(), frequent, words[w]);
    for (size_t w = 10; static_cast<int64_t>(items.size()) + 3 <= n && w < words.size(); ++w) {
      items.insert(items.end(), 3, words[w]);
    }
    std::mt19937_64 order(order_seed);
    std::shuffle(items.begin(), items.end(), order);
    std::string list;
    for (size_t i = 0; i < items.size(); ++i) absl::StrAppend(&list, i + 1, ". ", items[i], "\n");
    return list;
  };
  int64_t n = std::max<int64_t>(budget / 4, 40);
  std::string list;
  for (int iter = 0; iter < 8; ++iter) {
    list = build(n);
    ASSIGN_OR_RETURN(const int64_t c, count(list));
    if (c <= budget && c >= budget * 0.95) break;
    const int64_t next = std::max<int64_t>(40, static_cast<int64_t>(n * (0.98 * budget / c)));
    if (next == n) break;
    n = next;
  }
  ASSIGN_OR_RETURN(const int64_t c, count(list));
  if (c > budget) {
    return absl::InvalidArgumentError(
        absl::StrCat("eval tasks: ", budget, " tokens is too short for a word list"));
  }
  text->answers.assign(words.begin(), words.begin() + 10);
  return list;
}

}  // namespace xkv
