// BPE pre-tokenizers: split UTF-8 text into words before byte-level BPE, matching llama.cpp's
// unicode_regex_split for the supported `tokenizer.ggml.pre` names. Each kind is llama.cpp's list
// of regexes, applied in order: every regex splits each current piece into its matches and the text
// between them (a look-ahead or `$` never sees past a piece).
//
//   kGpt2:          's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//   kSmolLm:        \p{N}, then kGpt2
//   kLlama3:        (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
//                   ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//   kQwen2:         kLlama3 with \p{N} for \p{N}{1,3}
//   kDeepseekLlm:   [\r\n], \s?[Latin/Greek/Cyrillic/... letters]+, \s?[ASCII/fullwidth punct.]+,
//                   \s+$, [CJK/Hangul]+, \p{N}+
//   kDeepseekCoder: [\r\n], \s?\p{L}+, \s?\p{P}+, [CJK/Hangul]+, \p{N}
//   kFalcon:        [\p{P}\$\+<=>\^~\|`]+, kGpt2, [0-9][0-9][0-9]
//   kDefault:       [\p{P}\$\+<=>\^~\|]+, kGpt2, \p{N}+, [0-9][0-9][0-9]
//
// Implemented as hand-written scanners over code points (RE2 has no look-ahead), with the
// character classes from model/unicode_tables.h; \s is the White_Space property, as llama.cpp's
// std::regex sees it after mapping non-ASCII White_Space to U+000B.
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
  kGpt2,           // "gpt-2", "mpt", "olmo", "jais", "phi-2", ...
  kSmolLm,         // "smollm", "starcoder", "refact", "command-r", "codeshell", ...
  kLlama3,         // "llama-bpe", "llama3", "llama-v3", "dbrx", "smaug-bpe", ...
  kQwen2,          // "qwen2", "deepseek-r1-qwen", "stablelm2", "megrez", ...
  kDeepseekLlm,    // "deepseek-llm"
  kDeepseekCoder,  // "deepseek-coder"
  kFalcon,         // "falcon"
  kDefault,        // "default" (and a GGUF without tokenizer.ggml.pre, as llama.cpp)
};

struct PreTokenizerSpec {
  PreTokenizerKind kind;
  // llama.cpp's ignore_merges: a word that is itself a vocabulary entry is that token, unmerged.
  bool ignore_merges = false;
  // llama.cpp's default for tokenizer.ggml.add_bos_token when the GGUF does not set it.
  bool add_bos = false;
};

// Maps a tokenizer.ggml.pre name to its kind (as llama.cpp's llama_vocab::load); UNIMPLEMENTED
// naming the key and the value for names this port does not support.
absl::StatusOr<PreTokenizerSpec> PreTokenizerFromName(std::string_view name);

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
