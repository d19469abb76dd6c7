// BPE pre-tokenizers: split UTF-8 text into words before byte-level BPE, matching llama.cpp's
// unicode_regex_split for the supported `tokenizer.ggml.pre` names.
//
//   kGpt2:   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//   kSmolLm: first \p{N} (every number code point is a word of its own), then the kGpt2 split on
//            each piece between them (the look-ahead never sees past a piece).
//
// Implemented as a hand-written scanner over code points (RE2 has no look-ahead), with the
// character classes from model/unicode_tables.h.
#ifndef XKV_MODEL_PRETOKENIZER_H_
#define XKV_MODEL_PRETOKENIZER_H_

#include <cstdint>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace xkv {

enum class PreTokenizerKind {
  kGpt2,    // "gpt-2", "mpt", "olmo", "jais"
  kSmolLm,  // "smollm", "starcoder", "refact", "command-r", "codeshell"
};

// Maps a tokenizer.ggml.pre name to its kind; UNIMPLEMENTED for names this port does not support.
absl::StatusOr<PreTokenizerKind> PreTokenizerFromName(std::string_view name);

// Decodes strict UTF-8 (no overlong forms, surrogates or code points above U+10FFFF) into code
// points; `byte_offsets` (optional) receives the byte offset of every code point plus a final
// entry text.size(). INVALID_ARGUMENT names the offset of the first bad byte.
absl::Status DecodeUtf8(std::string_view text, std::vector<uint32_t>* code_points,
                        std::vector<uint32_t>* byte_offsets);

// OK when `text` is strict UTF-8 (as DecodeUtf8), else the same INVALID_ARGUMENT.
absl::Status ValidateUtf8(std::string_view text);

// Splits `text` (valid UTF-8) into words, appended to `words` as byte ranges [first, second) of
// `text`, in order and covering all of it. INVALID_ARGUMENT for invalid UTF-8.
absl::Status PreTokenize(PreTokenizerKind kind, std::string_view text,
                         std::vector<std::pair<uint32_t, uint32_t>>* words);

}  // namespace xkv

#endif  // XKV_MODEL_PRETOKENIZER_H_
