#include "model/spm_merge.h"

#include <algorithm>
#include <queue>

#include "absl/strings/str_format.h"

namespace xkv {
namespace {

// Bytes of the UTF-8 sequence a lead byte starts, as llama.cpp's unicode_len_utf8.
size_t Utf8Len(char lead) {
  static constexpr size_t kLen[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
  return kLen[static_cast<uint8_t>(lead) >> 4];
}

struct Symbol {
  int32_t prev, next;  // neighbour indices, -1 at the ends
  size_t begin, size;  // byte range in the text; size 0 once merged into the left neighbour
};

struct Bigram {
  int32_t left, right;
  float score;
  size_t size;
  bool operator<(const Bigram& o) const {  // max-heap order: highest score, then leftmost
    return score < o.score || (score == o.score && left > o.left);
  }
};

}  // namespace

absl::Status SpmMerge(const SpmVocab& vocab, std::string_view text, std::vector<int32_t>* out) {
  std::vector<Symbol> symbols;
  symbols.reserve(text.size());
  for (size_t offset = 0; offset < text.size();) {
    const size_t n = std::min(Utf8Len(text[offset]), text.size() - offset);
    const int32_t index = static_cast<int32_t>(symbols.size());
    symbols.push_back({index - 1, offset + n == text.size() ? -1 : index + 1, offset, n});
    offset += n;
  }
  auto lookup = [&](size_t begin, size_t size) -> int32_t {
    auto it = vocab.token_to_id->find(absl::string_view(text.data() + begin, size));
    return it == vocab.token_to_id->end() ? -1 : it->second;
  };
  std::priority_queue<Bigram> queue;
  auto try_add = [&](int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    const size_t size = symbols[left].size + symbols[right].size;
    const int32_t id = lookup(symbols[left].begin, size);
    if (id < 0) return;
    queue.push({left, right, (*vocab.scores)[id], size});
  };
  for (int32_t i = 1; i < static_cast<int32_t>(symbols.size()); ++i) try_add(i - 1, i);
  while (!queue.empty()) {
    const Bigram b = queue.top();
    queue.pop();
    Symbol& left = symbols[b.left];
    Symbol& right = symbols[b.right];
    if (left.size == 0 || right.size == 0 || left.size + right.size != b.size) continue;  // stale
    left.size += right.size;
    right.size = 0;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = b.left;
    try_add(left.prev, b.left);
    try_add(b.left, left.next);
  }
  for (int32_t i = symbols.empty() ? -1 : 0; i >= 0; i = symbols[i].next) {
    const Symbol& s = symbols[i];
    if (const int32_t id = lookup(s.begin, s.size); id >= 0) {
      out->push_back(id);
      continue;
    }
    for (size_t k = s.begin; k < s.begin + s.size; ++k) {
      const int32_t id = vocab.byte_tokens[static_cast<uint8_t>(text[k])];
      if (id < 0) {
        return absl::InvalidArgumentError(
            absl::StrFormat("tokenizer: byte 0x%02X has no token in this vocabulary",
                            static_cast<uint8_t>(text[k])));
      }
      out->push_back(id);
    }
  }
  return absl::OkStatus();
}

}  // namespace xkv
