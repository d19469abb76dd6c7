#include "model/pretokenizer.h"

#include <algorithm>
#include <array>
#include <limits>
#include <utility>
#include <vector>

#include "absl/strings/str_format.h"
#include "model/unicode_tables.h"

namespace xkv {

uint8_t UnicodeFlags(uint32_t cp) {
  static const std::array<uint8_t, 0x10000>* const kBmp = [] {
    auto* table = new std::array<uint8_t, 0x10000>();
    for (int i = 0; i < kUnicodeRangeCount; ++i) {
      const uint32_t first = kUnicodeRanges[i].first;
      if (first >= 0x10000) break;
      const uint32_t end = i + 1 < kUnicodeRangeCount
                               ? std::min<uint32_t>(kUnicodeRanges[i + 1].first, 0x10000)
                               : 0x10000;
      std::fill(table->begin() + first, table->begin() + end, kUnicodeRanges[i].flags);
    }
    return table;
  }();
  if (cp < 0x10000) return (*kBmp)[cp];
  if (cp > 0x10FFFF) return 0;
  const UnicodeRange* end = kUnicodeRanges + kUnicodeRangeCount;
  const UnicodeRange* it = std::upper_bound(
      kUnicodeRanges, end, cp, [](uint32_t c, const UnicodeRange& r) { return c < r.first; });
  return (it - 1)->flags;
}

absl::StatusOr<PreTokenizerSpec> PreTokenizerFromName(std::string_view name) {
  using K = PreTokenizerKind;
  struct Entry {
    std::string_view name;
    PreTokenizerSpec spec;
  };
  // As llama_vocab::impl::load; only names whose other settings this port reproduces.
  static constexpr Entry kNames[] = {
      {"default", {K::kDefault}},
      {"", {K::kDefault}},
      {"gpt-2", {K::kGpt2}},
      {"phi-2", {K::kGpt2}},
      {"mpt", {K::kGpt2}},
      {"olmo", {K::kGpt2}},
      {"jais", {K::kGpt2}},
      {"exaone4", {K::kGpt2}},
      {"trillion", {K::kGpt2}},
      {"granite-docling", {K::kGpt2}},
      {"smollm", {K::kSmolLm}},
      {"starcoder", {K::kSmolLm}},
      {"refact", {K::kSmolLm}},
      {"command-r", {K::kSmolLm}},
      {"codeshell", {K::kSmolLm}},
      {"exaone", {K::kSmolLm}},
      {"minerva-7b", {K::kSmolLm}},
      {"mellum2", {K::kSmolLm}},
      {"llama3", {K::kLlama3, true, true}},
      {"llama-v3", {K::kLlama3, true, true}},
      {"llama-bpe", {K::kLlama3, true, true}},
      {"falcon3", {K::kLlama3, true, true}},
      {"falcon-h1", {K::kLlama3, true, true}},
      {"pixtral", {K::kLlama3, true, true}},
      {"midm-2.0", {K::kLlama3, true, true}},
      {"lfm2", {K::kLlama3, true, true}},
      {"dbrx", {K::kLlama3}},
      {"smaug-bpe", {K::kLlama3}},
      {"qwen2", {K::kQwen2}},
      {"deepseek-r1-qwen", {K::kQwen2}},
      {"stablelm2", {K::kQwen2}},
      {"megrez", {K::kQwen2}},
      {"deepseek-llm", {K::kDeepseekLlm}},
      {"deepseek-coder", {K::kDeepseekCoder}},
      {"falcon", {K::kFalcon}},
  };
  for (const Entry& e : kNames) {
    if (e.name == name) return e.spec;
  }
  return absl::UnimplementedError(
      absl::StrFormat("tokenizer: unsupported pre-tokenizer tokenizer.ggml.pre = \"%s\"", name));
}

namespace {

absl::Status BadUtf8(size_t offset) {
  return absl::InvalidArgumentError(
      absl::StrFormat("tokenizer: invalid UTF-8 at byte offset %d", offset));
}

// Decodes the code point at text[i]; returns its length in bytes, or 0 when invalid.
int DecodeOne(std::string_view text, size_t i, uint32_t* cp) {
  const auto* s = reinterpret_cast<const uint8_t*>(text.data());
  const size_t n = text.size();
  const uint8_t b0 = s[i];
  if (b0 < 0x80) {
    *cp = b0;
    return 1;
  }
  int len;
  uint32_t min;
  if ((b0 & 0xE0) == 0xC0) {
    len = 2, min = 0x80, *cp = b0 & 0x1F;
  } else if ((b0 & 0xF0) == 0xE0) {
    len = 3, min = 0x800, *cp = b0 & 0x0F;
  } else if ((b0 & 0xF8) == 0xF0) {
    len = 4, min = 0x10000, *cp = b0 & 0x07;
  } else {
    return 0;
  }
  if (i + len > n) return 0;
  for (int k = 1; k < len; ++k) {
    if ((s[i + k] & 0xC0) != 0x80) return 0;
    *cp = (*cp << 6) | (s[i + k] & 0x3F);
  }
  if (*cp < min || *cp > 0x10FFFF || (*cp >= 0xD800 && *cp <= 0xDFFF)) return 0;
  return len;
}

constexpr uint32_t kOutOfRange = 0xFFFFFFFF;
constexpr uint8_t kValid = 0x80;  // set for every code point of the text

// The GPT-2 split of cps[begin, end), appending word boundaries (code point indices) to `ends`.
// Mirrors llama.cpp's unicode_regex_split_custom_gpt2, including how the look-ahead (?!\S) stops
// at the piece end.
void SplitGpt2(const std::vector<uint32_t>& cps, const std::vector<uint8_t>& flags, size_t begin,
               size_t end, std::vector<uint32_t>* ends) {
  auto cpt_at = [&](size_t p) { return p < end ? cps[p] : kOutOfRange; };
  auto flags_at = [&](size_t p) -> uint8_t { return p < end ? flags[p] : 0; };
  auto is_other = [](uint8_t f) {
    return (f & kValid) && !(f & (kUnicodeLetter | kUnicodeNumber | kUnicodeWhitespace));
  };
  size_t pos = begin;
  auto emit = [&](size_t new_end) {
    pos = new_end;
    ends->push_back(static_cast<uint32_t>(pos));
  };
  while (pos < end) {
    const uint32_t cpt = cps[pos];
    // 's|'t|'re|'ve|'m|'ll|'d
    if (cpt == '\'' && pos + 1 < end) {
      const uint32_t c1 = cps[pos + 1];
      if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') {
        emit(pos + 2);
        continue;
      }
      if (pos + 2 < end) {
        const uint32_t c2 = cps[pos + 2];
        if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) {
          emit(pos + 3);
          continue;
        }
      }
    }
    const size_t body = pos + (cpt == ' ' ? 1 : 0);  // first code point after the optional space
    const uint8_t f = flags_at(body);
    //  ?\p{L}+ |  ?\p{N}+ |  ?[^\s\p{L}\p{N}]+
    const uint8_t cls = f & (kUnicodeLetter | kUnicodeNumber);
    if (cls != 0 || is_other(f)) {
      size_t p = body;
      if (cls != 0) {
        while (flags_at(p) & cls) ++p;
      } else {
        while (is_other(flags_at(p))) ++p;
      }
      emit(p);
      continue;
    }
    size_t spaces = 0;
    while (flags_at(pos + spaces) & kUnicodeWhitespace) ++spaces;
    if (spaces > 1 && cpt_at(pos + spaces) != kOutOfRange) {
      emit(pos + spaces - 1);  // \s+(?!\S): leave the last space for the next word
    } else if (spaces > 0) {
      emit(pos + spaces);  // \s+
    } else {
      emit(pos + 1);  // no match: one code point
    }
  }
}

// llama.cpp's unicode_regex_split_custom_llama3 (max_digits 3) and _qwen2 (max_digits 1) on
// cps[begin, end).
void SplitLlama3(const std::vector<uint32_t>& cps, const std::vector<uint8_t>& flags, size_t begin,
                 size_t end, size_t max_digits, std::vector<uint32_t>* ends) {
  auto cpt_at = [&](size_t p) { return p < end ? cps[p] : kOutOfRange; };
  auto flags_at = [&](size_t p) -> uint8_t { return p < end ? flags[p] : 0; };
  auto lower = [](uint32_t c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; };
  auto is_crlf = [](uint32_t c) { return c == '\r' || c == '\n'; };
  size_t pos = begin;
  auto emit = [&](size_t new_end) {
    if (new_end > pos) ends->push_back(static_cast<uint32_t>(new_end));
    pos = new_end;
  };
  while (pos < end) {
    const uint32_t cpt = cps[pos];
    const uint8_t f = flags[pos];
    // (?i:'s|'t|'re|'ve|'m|'ll|'d)
    if (cpt == '\'' && pos + 1 < end) {
      const uint32_t c1 = lower(cps[pos + 1]);
      if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') {
        emit(pos + 2);
        continue;
      }
      if (pos + 2 < end) {
        const uint32_t c2 = lower(cps[pos + 2]);
        if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) {
          emit(pos + 3);
          continue;
        }
      }
    }
    // [^\r\n\p{L}\p{N}]?\p{L}+
    if (!is_crlf(cpt) && !(f & kUnicodeNumber) &&
        ((f & kUnicodeLetter) || (flags_at(pos + 1) & kUnicodeLetter))) {
      size_t p = pos + 1;
      while (flags_at(p) & kUnicodeLetter) ++p;
      emit(p);
      continue;
    }
    // \p{N}{1,max_digits}
    if (f & kUnicodeNumber) {
      size_t p = pos;
      while ((flags_at(p) & kUnicodeNumber) && p - pos < max_digits) ++p;
      emit(p);
      continue;
    }
    // <space>?[^\s\p{L}\p{N}]+[\r\n]*
    constexpr uint8_t kLnw = kUnicodeLetter | kUnicodeNumber | kUnicodeWhitespace;
    const uint8_t f2 = cpt == ' ' ? flags_at(pos + 1) : f;
    if ((f2 & kValid) && !(f2 & kLnw)) {
      size_t p = pos + (cpt == ' ' ? 1 : 0);
      while ((flags_at(p) & kValid) && !(flags_at(p) & kLnw)) ++p;
      while (is_crlf(cpt_at(p))) ++p;
      emit(p);
      continue;
    }
    size_t spaces = 0, last_crlf_end = 0;
    while (flags_at(pos + spaces) & kUnicodeWhitespace) {
      if (is_crlf(cps[pos + spaces])) last_crlf_end = pos + spaces + 1;
      ++spaces;
    }
    if (last_crlf_end > 0) {
      emit(last_crlf_end);  // \s*[\r\n]+
    } else if (spaces > 1 && cpt_at(pos + spaces) != kOutOfRange) {
      emit(pos + spaces - 1);  // \s+(?!\S)
    } else if (spaces > 0) {
      emit(pos + spaces);  // \s+
    } else {
      emit(pos + 1);  // no match: one code point
    }
  }
}

// A code point set of one regex step: class flags (llama.cpp's \p{..} classes) and/or explicit
// code point ranges. Non-ASCII White_Space never matches (llama.cpp's std::regex sees U+000B).
struct CharClass {
  uint8_t flags = 0;
  std::vector<std::pair<uint32_t, uint32_t>> ranges;

  bool Contains(uint32_t cp, uint8_t f) const {
    if (cp > 0x7F && (f & kUnicodeWhitespace)) return false;
    if (f & flags) return true;
    for (const auto& [first, last] : ranges) {
      if (cp >= first && cp <= last) return true;
    }
    return false;
  }
};

// The shapes of the regexes above beyond the custom GPT-2/Llama 3 scanners.
enum class Pattern {
  kOne,               // C      (one code point of the class)
  kRun,               // C+
  kSpaceThenRun,      // \s?C+
  kTrailingSpace,     // \s+$
  kThreeAsciiDigits,  // [0-9][0-9][0-9]
};

struct RegexStep {
  Pattern pattern;
  CharClass cls;
};

// Splits cps[begin, end) into the leftmost-first matches of `step` and the text between them, as
// llama.cpp's unicode_regex_split_stl (std::regex_iterator over the piece).
void SplitRegex(const std::vector<uint32_t>& cps, const std::vector<uint8_t>& flags, size_t begin,
                size_t end, const RegexStep& step, std::vector<uint32_t>* ends) {
  auto in = [&](size_t p) { return p < end && step.cls.Contains(cps[p], flags[p]); };
  auto space = [&](size_t p) { return p < end && (flags[p] & kUnicodeWhitespace); };
  auto digit = [&](size_t p) { return p < end && cps[p] >= '0' && cps[p] <= '9'; };
  size_t trailing = end;  // start of the trailing White_Space run
  while (trailing > begin && space(trailing - 1)) --trailing;
  // Length of the match starting at p, 0 if none.
  auto match_at = [&](size_t p) -> size_t {
    size_t q = p;
    switch (step.pattern) {
      case Pattern::kOne:
        return in(p) ? 1 : 0;
      case Pattern::kSpaceThenRun:
        if (space(q) && in(q + 1)) ++q;
        [[fallthrough]];
      case Pattern::kRun:
        while (in(q)) ++q;
        return q - p;
      case Pattern::kTrailingSpace:
        return p == trailing && p < end ? end - p : 0;
      case Pattern::kThreeAsciiDigits:
        return digit(p) && digit(p + 1) && digit(p + 2) ? 3 : 0;
    }
    return 0;
  };
  size_t prev = begin;
  for (size_t p = begin; p < end;) {
    const size_t n = match_at(p);
    if (n == 0) {
      ++p;
      continue;
    }
    if (p > prev) ends->push_back(static_cast<uint32_t>(p));
    p += n;
    ends->push_back(static_cast<uint32_t>(p));
    prev = p;
  }
  if (end > prev) ends->push_back(static_cast<uint32_t>(end));
}

// deepseek-llm's \s?[...]+ letter class: Latin, Greek, Cyrillic, Armenian, Georgian, ...
constexpr std::pair<uint32_t, uint32_t> kDeepseekLetters[] = {
    {0x41, 0x5A},       {0x61, 0x7A},       {0xB5, 0xB5},       {0xC0, 0xD6},
    {0xD8, 0xF6},       {0xF8, 0x1BA},      {0x1BC, 0x1BF},     {0x1C4, 0x293},
    {0x295, 0x2AF},     {0x370, 0x373},     {0x376, 0x377},     {0x37B, 0x37D},
    {0x37F, 0x37F},     {0x386, 0x386},     {0x388, 0x38A},     {0x38C, 0x38C},
    {0x38E, 0x3A1},     {0x3A3, 0x3F5},     {0x3F7, 0x481},     {0x48A, 0x52F},
    {0x531, 0x556},     {0x10A0, 0x10C5},   {0x13A0, 0x13F5},   {0x13F8, 0x13FD},
    {0x1C90, 0x1CBA},   {0x1CBD, 0x1CBF},   {0x1D00, 0x1D2B},   {0x1D6B, 0x1D77},
    {0x1D79, 0x1D9A},   {0x1E00, 0x1F15},   {0x1F18, 0x1F1D},   {0x1F20, 0x1F45},
    {0x1F48, 0x1F4D},   {0x1F50, 0x1F57},   {0x1F59, 0x1F59},   {0x1F5B, 0x1F5B},
    {0x1F5D, 0x1F5D},   {0x1F5F, 0x1F7D},   {0x1F80, 0x1FB4},   {0x1FB6, 0x1FBC},
    {0x1FBE, 0x1FBE},   {0x1FC2, 0x1FC4},   {0x1FC6, 0x1FCC},   {0x1FD0, 0x1FD3},
    {0x1FD6, 0x1FDB},   {0x1FE0, 0x1FEC},   {0x1FF2, 0x1FF4},   {0x1FF6, 0x1FFC},
    {0x2102, 0x2102},   {0x2107, 0x2107},   {0x210A, 0x2113},   {0x2115, 0x2115},
    {0x2119, 0x211D},   {0x2124, 0x2124},   {0x2126, 0x2126},   {0x2128, 0x2128},
    {0x212A, 0x212D},   {0x212F, 0x2134},   {0x2139, 0x2139},   {0x213C, 0x213F},
    {0x2145, 0x2149},   {0x214E, 0x214E},   {0x2183, 0x2184},   {0x2C00, 0x2C7B},
    {0x2C7E, 0x2CE4},   {0x2CEB, 0x2CEE},   {0x2CF2, 0x2CF3},   {0xA640, 0xA66D},
    {0xA680, 0xA69B},   {0xA722, 0xA76F},   {0xA771, 0xA787},   {0xA78B, 0xA78E},
    {0xAB70, 0xABBF},   {0xFB00, 0xFB06},   {0xFB13, 0xFB17},   {0xFF21, 0xFF3A},
    {0xFF41, 0xFF5A},   {0x10400, 0x1044F}, {0x104B0, 0x104D3}, {0x104D8, 0x104FB},
    {0x10C80, 0x10CB2}, {0x10CC0, 0x10CF2}, {0x118A0, 0x118DF}, {0x1E900, 0x1E943},
};

// The regex steps of each kind; kGpt2Step/kLlama3Step/kQwen2Step stand for the custom scanners.
struct Step {
  enum Kind { kGpt2Step, kLlama3Step, kQwen2Step, kRegexStep } kind;
  RegexStep regex{};
};

const std::vector<Step>& StepsOf(PreTokenizerKind kind) {
  using P = Pattern;
  static const CharClass kCrLf{0, {{'\r', '\r'}, {'\n', '\n'}}};
  static const CharClass kNumbers{kUnicodeNumber, {}};
  static const CharClass kLetters{kUnicodeLetter, {}};
  static const CharClass kPunct{kUnicodePunctuation, {}};
  static const CharClass kDsLetters{0, {std::begin(kDeepseekLetters), std::end(kDeepseekLetters)}};
  // ASCII and fullwidth punctuation, general punctuation quotes, U+3000..U+3002.
  static const CharClass kDsPunct{0,
                                  {{0x21, 0x2F},
                                   {0x3A, 0x7E},
                                   {0xFF01, 0xFF0F},
                                   {0xFF1A, 0xFF5E},
                                   {0x2018, 0x201F},
                                   {0x3000, 0x3002}}};
  // [一-龥ࠀ-一가-퟿]: U+4E00..U+9FA5, U+0800..U+4E00 and U+AC00..U+D7FF (Hangul).
  static const CharClass kDsCjk{0, {{0x4E00, 0x9FA5}, {0x800, 0x4E00}, {0xAC00, 0xD7FF}}};
  // [\p{P}\$\+<=>\^~\|`] (falcon; default without the backquote).
  static const CharClass kFalconPunct{
      kUnicodePunctuation,
      {{'$', '$'}, {'+', '+'}, {'<', '>'}, {'^', '^'}, {'~', '~'}, {'|', '|'}, {'`', '`'}}};
  static const CharClass kDefaultPunct{
      kUnicodePunctuation,
      {{'$', '$'}, {'+', '+'}, {'<', '>'}, {'^', '^'}, {'~', '~'}, {'|', '|'}}};
  auto re = [](P p, const CharClass& c) { return Step{Step::kRegexStep, {p, c}}; };
  static const std::vector<Step> kGpt2 = {{Step::kGpt2Step}};
  static const std::vector<Step> kSmolLm = {re(P::kOne, kNumbers), {Step::kGpt2Step}};
  static const std::vector<Step> kLlama3 = {{Step::kLlama3Step}};
  static const std::vector<Step> kQwen2 = {{Step::kQwen2Step}};
  static const std::vector<Step> kDeepseekLlm = {re(P::kOne, kCrLf),
                                                 re(P::kSpaceThenRun, kDsLetters),
                                                 re(P::kSpaceThenRun, kDsPunct),
                                                 re(P::kTrailingSpace, {}),
                                                 re(P::kRun, kDsCjk),
                                                 re(P::kRun, kNumbers)};
  static const std::vector<Step> kDeepseekCoder = {
      re(P::kOne, kCrLf), re(P::kSpaceThenRun, kLetters), re(P::kSpaceThenRun, kPunct),
      re(P::kRun, kDsCjk), re(P::kOne, kNumbers)};
  static const std::vector<Step> kFalcon = {
      re(P::kRun, kFalconPunct), {Step::kGpt2Step}, re(P::kThreeAsciiDigits, {})};
  static const std::vector<Step> kDefault = {re(P::kRun, kDefaultPunct),
                                             {Step::kGpt2Step},
                                             re(P::kRun, kNumbers),
                                             re(P::kThreeAsciiDigits, {})};
  switch (kind) {
    case PreTokenizerKind::kGpt2:
      return kGpt2;
    case PreTokenizerKind::kSmolLm:
      return kSmolLm;
    case PreTokenizerKind::kLlama3:
      return kLlama3;
    case PreTokenizerKind::kQwen2:
      return kQwen2;
    case PreTokenizerKind::kDeepseekLlm:
      return kDeepseekLlm;
    case PreTokenizerKind::kDeepseekCoder:
      return kDeepseekCoder;
    case PreTokenizerKind::kFalcon:
      return kFalcon;
    case PreTokenizerKind::kDefault:
      break;
  }
  return kDefault;
}

}  // namespace

absl::Status DecodeUtf8(std::string_view text, std::vector<uint32_t>* code_points,
                        std::vector<uint32_t>* byte_offsets) {
  if (text.size() >= std::numeric_limits<uint32_t>::max()) {
    return absl::InvalidArgumentError("tokenizer: text larger than 4 GiB");
  }
  code_points->clear();
  code_points->reserve(text.size());
  if (byte_offsets != nullptr) {
    byte_offsets->clear();
    byte_offsets->reserve(text.size() + 1);
  }
  for (size_t i = 0; i < text.size();) {
    uint32_t cp;
    const int len = DecodeOne(text, i, &cp);
    if (len == 0) return BadUtf8(i);
    code_points->push_back(cp);
    if (byte_offsets != nullptr) byte_offsets->push_back(static_cast<uint32_t>(i));
    i += len;
  }
  if (byte_offsets != nullptr) byte_offsets->push_back(static_cast<uint32_t>(text.size()));
  return absl::OkStatus();
}

absl::Status ValidateUtf8(std::string_view text) {
  for (size_t i = 0; i < text.size();) {
    uint32_t cp;
    const int len = DecodeOne(text, i, &cp);
    if (len == 0) return BadUtf8(i);
    i += len;
  }
  return absl::OkStatus();
}

absl::Status PreTokenize(PreTokenizerKind kind, std::string_view text,
                         std::vector<std::pair<uint32_t, uint32_t>>* words) {
  std::vector<uint32_t> cps, offsets;
  if (absl::Status s = DecodeUtf8(text, &cps, &offsets); !s.ok()) return s;
  std::vector<uint8_t> flags(cps.size());
  for (size_t i = 0; i < cps.size(); ++i) flags[i] = UnicodeFlags(cps[i]) | kValid;

  // Word ends (code point indices), refined by each step of the kind in turn.
  std::vector<uint32_t> ends;
  if (!cps.empty()) ends.push_back(static_cast<uint32_t>(cps.size()));
  std::vector<uint32_t> next;
  for (const Step& step : StepsOf(kind)) {
    next.clear();
    next.reserve(cps.size());
    uint32_t begin = 0;
    for (uint32_t end : ends) {
      switch (step.kind) {
        case Step::kGpt2Step:
          SplitGpt2(cps, flags, begin, end, &next);
          break;
        case Step::kLlama3Step:
          SplitLlama3(cps, flags, begin, end, 3, &next);
          break;
        case Step::kQwen2Step:
          SplitLlama3(cps, flags, begin, end, 1, &next);
          break;
        case Step::kRegexStep:
          SplitRegex(cps, flags, begin, end, step.regex, &next);
          break;
      }
      begin = end;
    }
    ends.swap(next);
  }
  uint32_t prev = 0;
  for (uint32_t e : ends) {
    words->emplace_back(offsets[prev], offsets[e]);
    prev = e;
  }
  return absl::OkStatus();
}

}  // namespace xkv
