// Byte-level BPE tokenizer (GPT-2 style, as llama.cpp's "gpt2" tokenizer model) built from GGUF
// metadata: tokens, merges, token types, special tokens and the pre-tokenizer name.
#ifndef XKV_MODEL_TOKENIZER_H_
#define XKV_MODEL_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "model/gguf.h"

namespace xkv {

struct TokenizerData {
  std::vector<std::string> tokens;  // tokenizer.ggml.tokens
  // tokenizer.ggml.token_type (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte);
  // empty means all normal.
  std::vector<int32_t> token_types;
  std::vector<std::string> merges;  // tokenizer.ggml.merges, "left right"
  std::string pre;                  // tokenizer.ggml.pre, e.g. "smollm"
  int32_t bos = -1, eos = -1, unk = -1, pad = -1;
  bool add_bos = false;
};

class Tokenizer {
 public:
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromGguf(const GgufFile& file);
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromData(TokenizerData data);
  ~Tokenizer();

  // UTF-8 text to ids. With `parse_special`, control/user-defined token texts such as
  // "<|im_start|>" map to their ids; otherwise they are tokenized as plain text. Invalid UTF-8 is
  // an INVALID_ARGUMENT error. `add_bos` follows the model's add_bos flag when unset.
  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text, bool parse_special) const;
  // Ids to UTF-8 bytes (byte-level decoding; control tokens render as their text). Out-of-range ids
  // are an INVALID_ARGUMENT error.
  absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids) const;
  // The bytes of one token (for streaming; may be an incomplete UTF-8 sequence).
  std::string TokenBytes(int32_t id) const;
  int32_t vocab_size() const;
  int32_t bos() const;
  int32_t eos() const;
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
