// Byte-level BPE as in llama.cpp's llm_tokenizer_bpe_session (llama-vocab.cpp):
//  1. special tokens are split out first (tokenizer_st_partition): for every special token, longest
//     text first, every occurrence in the remaining raw text becomes that token;
//  2. each raw fragment is pre-tokenized into words (model/pretokenizer.h);
//  3. each word's bytes are mapped to GPT-2 byte-level code points and merged pairwise: the
//     adjacent pair with the lowest merge rank first, ties to the leftmost;
//  4. a final symbol that is not a vocabulary entry falls back to one token per byte of its text.
// Symbols are interned strings (vocabulary ids, plus extra ids for merge strings outside the
// vocabulary), so the merge loop compares integers; words are cached.
#include "model/tokenizer.h"

#include <algorithm>
#include <array>
#include <climits>
#include <cstdlib>
#include <mutex>
#include <queue>
#include <shared_mutex>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "base/status_macros.h"
#include "model/pretokenizer.h"

namespace xkv {
namespace {

// llama_token_type values of tokenizer.ggml.token_type.
enum TokenType : int32_t {
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6,
};

constexpr size_t kMaxCachedWords = 1 << 16;
constexpr size_t kMaxCachedWordBytes = 256;

void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// GPT-2 bytes_to_unicode: printable Latin-1 bytes map to themselves, the other 68 bytes to
// U+0100.. in byte order.
std::array<uint32_t, 256> ByteToCodePoint() {
  std::array<uint32_t, 256> map{};
  uint32_t next = 256;
  for (uint32_t b = 0; b < 256; ++b) {
    const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    map[b] = printable ? b : next++;
  }
  return map;
}

// Debian's absl has its own string_view type; hash-map lookups need it.
absl::string_view AbslView(std::string_view s) { return absl::string_view(s.data(), s.size()); }

uint64_t PairKey(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

}  // namespace

struct Tokenizer::Impl {
  struct Merge {
    int32_t rank;
    int32_t result;  // symbol id of left + right
  };

  TokenizerData data;
  PreTokenizerKind pre_kind = PreTokenizerKind::kGpt2;
  int32_t n_vocab = 0;
  absl::flat_hash_map<std::string, int32_t> token_to_id;  // duplicate texts: the last id wins
  std::vector<std::string> extra_symbols;                 // symbol id n_vocab + i
  absl::flat_hash_map<std::string, int32_t> extra_symbol_ids;
  absl::flat_hash_map<uint64_t, Merge> merges;  // PairKey(left symbol, right symbol)
  std::array<int32_t, 256> byte_symbol{};       // symbol id of each byte's byte-level character
  std::array<std::string, 256> byte_text;       // UTF-8 of each byte's byte-level character
  std::vector<int32_t> special_tokens;          // split out before BPE, longest text first
  std::vector<std::string> pieces;              // decoded bytes of every token

  mutable std::shared_mutex cache_mu;
  mutable absl::flat_hash_map<std::string, std::vector<int32_t>> cache;  // word bytes -> ids

  int32_t Intern(const std::string& text);
  const std::string& SymbolText(int32_t sym) const {
    return sym < n_vocab ? data.tokens[sym] : extra_symbols[sym - n_vocab];
  }
  int32_t TypeOf(int32_t id) const {
    return data.token_types.empty() ? kNormal : data.token_types[id];
  }
  std::string MakePiece(int32_t id) const;
  absl::Status Build();
  void BpeWord(std::string_view word, std::vector<int32_t>* out) const;
  void EncodeWord(std::string_view word, std::vector<int32_t>* out) const;
  absl::Status EncodeRaw(std::string_view text, std::vector<int32_t>* out) const;
};

int32_t Tokenizer::Impl::Intern(const std::string& text) {
  if (auto it = token_to_id.find(text); it != token_to_id.end()) return it->second;
  auto [it, inserted] =
      extra_symbol_ids.try_emplace(text, n_vocab + static_cast<int32_t>(extra_symbols.size()));
  if (inserted) extra_symbols.push_back(text);
  return it->second;
}

// llama.cpp token_to_piece(special = true) for the BPE vocabulary type.
std::string Tokenizer::Impl::MakePiece(int32_t id) const {
  const std::string& text = data.tokens[id];
  switch (TypeOf(id)) {
    case kUnknown:
    case kControl:
    case kUserDefined:
      return text;
    case kByte:  // "<0xAB>"
      return std::string(1, static_cast<char>(std::strtol(text.substr(3, 2).c_str(), nullptr, 16)));
    case kNormal:
      break;
    default:  // unused, undefined: render as nothing
      return "";
  }
  static const absl::flat_hash_map<uint32_t, uint8_t>* const kCodePointToByte = [] {
    auto* map = new absl::flat_hash_map<uint32_t, uint8_t>();
    const auto fwd = ByteToCodePoint();
    for (int b = 0; b < 256; ++b) (*map)[fwd[b]] = static_cast<uint8_t>(b);
    return map;
  }();
  std::vector<uint32_t> cps;
  if (!DecodeUtf8(text, &cps, nullptr).ok()) return text;
  std::string out;
  for (uint32_t cp : cps) {
    if (auto it = kCodePointToByte->find(cp); it != kCodePointToByte->end()) {
      out.push_back(static_cast<char>(it->second));
    } else {  // as llama_decode_text
      std::string utf8;
      AppendUtf8(cp, &utf8);
      out += "[UNK_BYTE_0x";
      for (char c : utf8) out += absl::StrFormat("%02x", static_cast<uint8_t>(c));
      out += text + "]";
    }
  }
  return out;
}

absl::Status Tokenizer::Impl::Build() {
  if (data.tokens.empty()) return absl::InvalidArgumentError("tokenizer: empty vocabulary");
  if (data.tokens.size() >= (1u << 30))
    return absl::InvalidArgumentError("tokenizer: vocab too big");
  n_vocab = static_cast<int32_t>(data.tokens.size());
  if (!data.token_types.empty() && data.token_types.size() != data.tokens.size()) {
    return absl::InvalidArgumentError(absl::StrFormat("tokenizer: %d token types for %d tokens",
                                                      data.token_types.size(), data.tokens.size()));
  }
  for (int32_t id : {data.bos, data.eos, data.unk, data.pad}) {
    if (id < -1 || id >= n_vocab) {
      return absl::InvalidArgumentError(
          absl::StrFormat("tokenizer: special id %d out of range", id));
    }
  }
  ASSIGN_OR_RETURN(pre_kind, PreTokenizerFromName(data.pre));
  token_to_id.reserve(data.tokens.size());
  for (int32_t id = 0; id < n_vocab; ++id) token_to_id[data.tokens[id]] = id;

  const auto byte_cp = ByteToCodePoint();
  for (int b = 0; b < 256; ++b) {
    AppendUtf8(byte_cp[b], &byte_text[b]);
    byte_symbol[b] = Intern(byte_text[b]);
  }
  merges.reserve(data.merges.size());
  for (size_t rank = 0; rank < data.merges.size(); ++rank) {
    const std::string& m = data.merges[rank];
    const size_t space = m.find(' ', 1);
    if (space == std::string::npos) continue;  // llama.cpp keeps ("", ""), which never matches
    const std::string left = m.substr(0, space), right = m.substr(space + 1);
    if (left.empty() || right.empty()) continue;
    const int32_t l = Intern(left), r = Intern(right), result = Intern(left + right);
    merges.try_emplace(PairKey(l, r), Merge{static_cast<int32_t>(rank), result});  // first wins
  }

  for (int32_t id = 0; id < n_vocab; ++id) {
    const int32_t type = TypeOf(id);
    if ((type == kControl || type == kUserDefined || type == kUnknown) &&
        !data.tokens[id].empty()) {
      special_tokens.push_back(id);
    }
  }
  std::stable_sort(special_tokens.begin(), special_tokens.end(), [&](int32_t a, int32_t b) {
    return data.tokens[a].size() > data.tokens[b].size();
  });
  pieces.resize(n_vocab);
  for (int32_t id = 0; id < n_vocab; ++id) pieces[id] = MakePiece(id);
  return absl::OkStatus();
}

// Merges one pre-tokenized word (raw bytes) and appends its token ids.
void Tokenizer::Impl::BpeWord(std::string_view word, std::vector<int32_t>* out) const {
  struct Symbol {
    int32_t sym;
    int32_t prev, next;  // neighbour indices, -1 at the ends
    bool alive;
  };
  struct Candidate {
    int32_t rank, left, left_sym, right_sym;
    bool operator<(const Candidate& o) const {  // max-heap order: lowest rank, then leftmost
      return rank > o.rank || (rank == o.rank && left > o.left);
    }
  };
  const int32_t n = static_cast<int32_t>(word.size());
  std::vector<Symbol> symbols(n);
  for (int32_t i = 0; i < n; ++i) {
    symbols[i] = {byte_symbol[static_cast<uint8_t>(word[i])], i - 1, i + 1 < n ? i + 1 : -1, true};
  }
  std::priority_queue<Candidate> queue;
  auto consider = [&](int32_t left) {
    if (left < 0 || symbols[left].next < 0) return;
    const Symbol& l = symbols[left];
    const Symbol& r = symbols[l.next];
    if (auto it = merges.find(PairKey(l.sym, r.sym)); it != merges.end()) {
      queue.push({it->second.rank, left, l.sym, r.sym});
    }
  };
  for (int32_t i = 0; i + 1 < n; ++i) consider(i);
  while (!queue.empty()) {
    const Candidate c = queue.top();
    queue.pop();
    Symbol& l = symbols[c.left];
    if (!l.alive || l.sym != c.left_sym || l.next < 0) continue;
    Symbol& r = symbols[l.next];
    if (r.sym != c.right_sym) continue;  // stale: a neighbour changed since it was queued
    l.sym = merges.find(PairKey(l.sym, r.sym))->second.result;
    r.alive = false;
    l.next = r.next;
    if (r.next >= 0) symbols[r.next].prev = c.left;
    consider(l.prev);
    consider(c.left);
  }
  for (int32_t i = 0; i >= 0 && i < n; i = symbols[i].next) {
    const int32_t sym = symbols[i].sym;
    if (sym < n_vocab) {
      out->push_back(sym);
      continue;
    }
    // Not a vocabulary entry: one token per byte of the symbol text, if that byte is a token.
    for (char c : SymbolText(sym)) {
      if (auto it = token_to_id.find(absl::string_view(&c, 1)); it != token_to_id.end()) {
        out->push_back(it->second);
      }
    }
  }
}

void Tokenizer::Impl::EncodeWord(std::string_view word, std::vector<int32_t>* out) const {
  if (word.size() > kMaxCachedWordBytes) {
    BpeWord(word, out);
    return;
  }
  {
    std::shared_lock lock(cache_mu);
    if (auto it = cache.find(AbslView(word)); it != cache.end()) {
      out->insert(out->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t start = out->size();
  BpeWord(word, out);
  std::vector<int32_t> ids(out->begin() + start, out->end());
  std::unique_lock lock(cache_mu);
  if (cache.size() >= kMaxCachedWords) cache.clear();
  cache.try_emplace(std::string(word), std::move(ids));
}

absl::Status Tokenizer::Impl::EncodeRaw(std::string_view text, std::vector<int32_t>* out) const {
  std::vector<std::pair<uint32_t, uint32_t>> words;
  RETURN_IF_ERROR(PreTokenize(pre_kind, text, &words));
  for (const auto& [begin, end] : words) EncodeWord(text.substr(begin, end - begin), out);
  return absl::OkStatus();
}

namespace {

absl::StatusOr<const GgufValue*> Required(const GgufFile& file, std::string_view key) {
  const GgufValue* v = file.Find(key);
  if (v == nullptr) {
    return absl::InvalidArgumentError(absl::StrFormat("tokenizer: GGUF key %s missing", key));
  }
  return v;
}

absl::Status ReadStrings(const GgufFile& file, std::string_view key,
                         std::vector<std::string>* out) {
  ASSIGN_OR_RETURN(const GgufValue* v, Required(file, key));
  ASSIGN_OR_RETURN(const GgufArray* array, v->AsArray());
  out->reserve(array->elements.size());
  for (const GgufValue& e : array->elements) {
    absl::StatusOr<std::string_view> s = e.AsString();
    if (!s.ok()) {
      return absl::InvalidArgumentError(
          absl::StrFormat("tokenizer: %s: %s", key, s.status().message()));
    }
    out->emplace_back(*s);
  }
  return absl::OkStatus();
}

absl::Status ReadOptionalId(const GgufFile& file, std::string_view key, int32_t* out) {
  const GgufValue* v = file.Find(key);
  if (v == nullptr) return absl::OkStatus();
  ASSIGN_OR_RETURN(int64_t id, v->AsInt());
  if (id < -1 || id > INT32_MAX) {
    return absl::InvalidArgumentError(absl::StrFormat("tokenizer: %s = %d out of range", key, id));
  }
  *out = static_cast<int32_t>(id);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromGguf(const GgufFile& file) {
  ASSIGN_OR_RETURN(const GgufValue* model, Required(file, "tokenizer.ggml.model"));
  ASSIGN_OR_RETURN(std::string_view model_name, model->AsString());
  if (model_name != "gpt2") {
    return absl::UnimplementedError(absl::StrFormat(
        "tokenizer: model \"%s\" unsupported (only gpt2 byte-level BPE)", model_name));
  }
  TokenizerData data;
  RETURN_IF_ERROR(ReadStrings(file, "tokenizer.ggml.tokens", &data.tokens));
  RETURN_IF_ERROR(ReadStrings(file, "tokenizer.ggml.merges", &data.merges));
  if (const GgufValue* types = file.Find("tokenizer.ggml.token_type"); types != nullptr) {
    ASSIGN_OR_RETURN(const GgufArray* array, types->AsArray());
    data.token_types.reserve(array->elements.size());
    for (const GgufValue& e : array->elements) {
      ASSIGN_OR_RETURN(int64_t type, e.AsInt());
      data.token_types.push_back(static_cast<int32_t>(type));
    }
  }
  ASSIGN_OR_RETURN(const GgufValue* pre, Required(file, "tokenizer.ggml.pre"));
  ASSIGN_OR_RETURN(std::string_view pre_name, pre->AsString());
  data.pre = std::string(pre_name);
  RETURN_IF_ERROR(ReadOptionalId(file, "tokenizer.ggml.bos_token_id", &data.bos));
  RETURN_IF_ERROR(ReadOptionalId(file, "tokenizer.ggml.eos_token_id", &data.eos));
  RETURN_IF_ERROR(ReadOptionalId(file, "tokenizer.ggml.unknown_token_id", &data.unk));
  RETURN_IF_ERROR(ReadOptionalId(file, "tokenizer.ggml.padding_token_id", &data.pad));
  if (const GgufValue* add_bos = file.Find("tokenizer.ggml.add_bos_token"); add_bos != nullptr) {
    ASSIGN_OR_RETURN(data.add_bos, add_bos->AsBool());
  }
  return FromData(std::move(data));
}

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::~Tokenizer() = default;

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromData(TokenizerData data) {
  auto impl = std::make_unique<Impl>();
  impl->data = std::move(data);
  RETURN_IF_ERROR(impl->Build());
  return std::unique_ptr<Tokenizer>(new Tokenizer(std::move(impl)));
}

absl::StatusOr<std::vector<int32_t>> Tokenizer::Encode(std::string_view text,
                                                       bool parse_special) const {
  RETURN_IF_ERROR(ValidateUtf8(text));  // reject invalid UTF-8 before any work
  // Fragments: raw text (id -1, byte range) or one special token (id >= 0).
  struct Fragment {
    int32_t id;
    size_t begin, end;
  };
  std::vector<Fragment> fragments;
  if (!text.empty()) fragments.push_back({-1, 0, text.size()});
  for (int32_t special : impl_->special_tokens) {
    const int32_t type = impl_->TypeOf(special);
    if (!parse_special && type != kUserDefined) continue;  // user-defined always split
    const std::string& needle = impl_->data.tokens[special];
    if (text.find(needle) == std::string_view::npos) continue;
    std::vector<Fragment> next;
    next.reserve(fragments.size() + 2);
    for (const Fragment& f : fragments) {
      if (f.id >= 0) {
        next.push_back(f);
        continue;
      }
      size_t pos = f.begin;
      while (true) {
        const size_t match = text.substr(0, f.end).find(needle, pos);
        if (match == std::string_view::npos) break;
        if (match > pos) next.push_back({-1, pos, match});
        next.push_back({special, match, match + needle.size()});
        pos = match + needle.size();
      }
      if (pos < f.end) next.push_back({-1, pos, f.end});
    }
    fragments = std::move(next);
  }
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 2);
  if (impl_->data.add_bos && impl_->data.bos >= 0) ids.push_back(impl_->data.bos);
  for (const Fragment& f : fragments) {
    if (f.id >= 0) {
      ids.push_back(f.id);
    } else {
      RETURN_IF_ERROR(impl_->EncodeRaw(text.substr(f.begin, f.end - f.begin), &ids));
    }
  }
  return ids;
}

absl::StatusOr<std::string> Tokenizer::Decode(absl::Span<const int32_t> ids) const {
  std::string out;
  for (int32_t id : ids) {
    if (id < 0 || id >= impl_->n_vocab) {
      return absl::InvalidArgumentError(
          absl::StrFormat("tokenizer: token id %d out of range [0, %d)", id, impl_->n_vocab));
    }
    out += impl_->pieces[id];
  }
  return out;
}

std::string Tokenizer::TokenBytes(int32_t id) const {
  if (id < 0 || id >= impl_->n_vocab) return "";
  return impl_->pieces[id];
}

int32_t Tokenizer::vocab_size() const { return impl_->n_vocab; }
int32_t Tokenizer::bos() const { return impl_->data.bos; }
int32_t Tokenizer::eos() const { return impl_->data.eos; }

bool Tokenizer::IsControl(int32_t id) const {
  return id >= 0 && id < impl_->n_vocab && impl_->TypeOf(id) == kControl;
}

int32_t Tokenizer::FindToken(std::string_view text) const {
  auto it = impl_->token_to_id.find(AbslView(text));
  return it == impl_->token_to_id.end() ? -1 : it->second;
}

}  // namespace xkv
