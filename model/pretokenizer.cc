#include "model/pretokenizer.h"

#include <algorithm>
#include <array>
#include <limits>

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

absl::StatusOr<PreTokenizerKind> PreTokenizerFromName(std::string_view name) {
  if (name == "smollm" || name == "starcoder" || name == "refact" || name == "command-r" ||
      name == "codeshell") {
    return PreTokenizerKind::kSmolLm;
  }
  if (name == "gpt-2" || name == "mpt" || name == "olmo" || name == "jais") {
    return PreTokenizerKind::kGpt2;
  }
  return absl::UnimplementedError(
      absl::StrFormat("tokenizer: unsupported pre-tokenizer \"%s\"", name));
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
constexpr uint8_t kValid = 8;  // set for every code point inside the current piece

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

  std::vector<uint32_t> ends;  // word ends, in code points
  ends.reserve(cps.size());
  if (kind == PreTokenizerKind::kGpt2) {
    SplitGpt2(cps, flags, 0, cps.size(), &ends);
  } else {
    // \p{N} first: every number code point is a piece of its own, and so is each run between them.
    size_t piece = 0;
    for (size_t i = 0; i <= cps.size(); ++i) {
      if (i < cps.size() && !(flags[i] & kUnicodeNumber)) continue;
      SplitGpt2(cps, flags, piece, i, &ends);
      if (i < cps.size()) ends.push_back(static_cast<uint32_t>(i + 1));
      piece = i + 1;
    }
  }
  uint32_t prev = 0;
  for (uint32_t e : ends) {
    words->emplace_back(offsets[prev], offsets[e]);
    prev = e;
  }
  return absl::OkStatus();
}

}  // namespace xkv
