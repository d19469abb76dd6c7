// SentencePiece-style merging as llama.cpp's llm_tokenizer_spm_session (llama-vocab.cpp): the text
// (spaces already escaped to U+2581) starts as one symbol per UTF-8 character; the adjacent pair
// whose concatenation is the vocabulary entry with the highest score merges first (ties to the
// leftmost), until no pair is an entry. A final symbol that is no entry falls back to one byte
// token per byte ("<0xAB>", else the one-byte text itself).
#ifndef XKV_MODEL_SPM_MERGE_H_
#define XKV_MODEL_SPM_MERGE_H_

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"

namespace xkv {

struct SpmVocab {
  const absl::flat_hash_map<std::string, int32_t>* token_to_id = nullptr;
  const std::vector<float>* scores = nullptr;  // one per token
  std::array<int32_t, 256> byte_tokens{};      // -1 where a byte has no token
};

// Appends the ids of `text` to `out`. INVALID_ARGUMENT when a byte to fall back to has no token.
absl::Status SpmMerge(const SpmVocab& vocab, std::string_view text, std::vector<int32_t>* out);

}  // namespace xkv

#endif  // XKV_MODEL_SPM_MERGE_H_
