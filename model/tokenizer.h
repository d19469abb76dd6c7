// The tokenizer of a GGUF, as llama.cpp's llama_vocab, built from its metadata:
//  - tokenizer.ggml.model "gpt2": byte-level BPE (Llama 3, Qwen 2/3, SmolLM, DeepSeek, GPT-2, ...)
//    with the pre-tokenizer tokenizer.ggml.pre (model/pretokenizer.h);
//  - tokenizer.ggml.model "llama": SentencePiece-style merging by score with byte fallback and
//    llama.cpp's space prefix (Llama 2, Mistral, TinyLlama, Phi-3, Gemma; model/spm_merge.h).
// Any other tokenizer model or pre-tokenizer is UNIMPLEMENTED naming the key and the value.
// Token attributes follow llama.cpp, including what it infers from token texts: end-of-generation
// and fill-in-the-middle tokens are control tokens, and Phi-3 models strip spaces after specials.
#ifndef XKV_MODEL_TOKENIZER_H_
#define XKV_MODEL_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "model/gguf.h"

namespace xkv {

struct TokenizerData {
  std::string model = "gpt2";  // tokenizer.ggml.model: "gpt2" (BPE) or "llama" (SPM)
  std::string name;            // general.name (llama.cpp keys Phi-3's special-token rules on it)
  std::vector<std::string> tokens;  // tokenizer.ggml.tokens
  std::vector<float> scores;        // tokenizer.ggml.scores (SPM merge priority); empty: all 0
  // tokenizer.ggml.token_type (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte);
  // empty means all normal.
  std::vector<int32_t> token_types;
  std::vector<std::string> merges;  // tokenizer.ggml.merges, "left right"
  std::string pre;                  // tokenizer.ggml.pre, e.g. "smollm" (BPE only)
  // Special ids (-1: none). eot/eom unset are found by text as llama.cpp ("<|eot_id|>", ...).
  int32_t bos = -1, eos = -1, unk = -1, pad = -1, eot = -1, eom = -1;
  std::optional<bool> add_bos;           // unset: llama.cpp's default for the model/pre-tokenizer
  std::optional<bool> add_space_prefix;  // SPM only; unset: true
};

class Tokenizer {
 public:
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromGguf(const GgufFile& file);
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromData(TokenizerData data);
  ~Tokenizer();

  // UTF-8 text to ids, as llama.cpp's llama_tokenize. With `parse_special`, control token texts
  // such as "<|im_start|>" map to their ids; otherwise they are tokenized as plain text
  // (user-defined tokens always map). With `add_special`, BOS leads when the model adds it.
  // Invalid UTF-8 is an INVALID_ARGUMENT error.
  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text, bool parse_special,
                                              bool add_special) const;
  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text, bool parse_special) const {
    return Encode(text, parse_special, /*add_special=*/true);
  }
  // Ids to UTF-8 bytes: the concatenated pieces of llama.cpp's token_to_piece(special = true)
  // (control tokens render as their text). Out-of-range ids are an INVALID_ARGUMENT error.
  absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids) const;
  // The bytes of one token (for streaming; may be an incomplete UTF-8 sequence).
  std::string TokenBytes(int32_t id) const;
  int32_t vocab_size() const;
  int32_t bos() const;
  int32_t eos() const;
  int32_t eot() const;  // end of turn (key or found by text), -1 if none
  int32_t eom() const;  // end of message (Llama 3.1 tool calls), -1 if none
  bool IsControl(int32_t id) const;
  // Id of an exact token text (e.g. "<|im_end|>"), or -1.
  int32_t FindToken(std::string_view text) const;

 private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace xkv

#endif  // XKV_MODEL_TOKENIZER_H_
