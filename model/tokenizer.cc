// As llama.cpp's llama_vocab::impl::tokenize (llama-vocab.cpp):
//  1. special tokens are split out first (tokenizer_st_partition): for every special token, longest
//     text first, every occurrence in the remaining raw text becomes that token (with the lstrip/
//     rstrip attributes eating the spaces beside it);
//  2. BPE: each raw fragment is pre-tokenized into words (model/pretokenizer.h); each word's bytes
//     are mapped to GPT-2 byte-level code points and merged pairwise: the adjacent pair with the
//     lowest merge rank first, ties to the leftmost; a final symbol that is not a vocabulary entry
//     falls back to one token per byte of its text (llm_tokenizer_bpe_session);
//  3. SPM: each raw fragment, with a leading space when it starts the text or follows a special
//     token, has its spaces escaped to U+2581 and is merged by score (model/spm_merge.h).
// Symbols are interned strings (vocabulary ids, plus extra ids for merge strings outside the
// vocabulary), so the merge loop compares integers; words are cached.
#include "model/tokenizer.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <climits>
#include <cstdlib>
#include <mutex>
#include <queue>
#include <shared_mutex>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/status_macros.h"
#include "model/pretokenizer.h"
#include "model/spm_merge.h"

namespace xkv {
namespace {

// llama_token_attr bits (llama.h), from tokenizer.ggml.token_type and llama.cpp's inferences.
enum TokenAttr : uint32_t {
  kUndefined = 0,
  kUnknown = 1 << 0,
  kUnused = 1 << 1,
  kNormal = 1 << 2,
  kControl = 1 << 3,
  kUserDefined = 1 << 4,
  kByte = 1 << 5,
  kLstrip = 1 << 7,
  kRstrip = 1 << 8,
};

// llama_token_type (tokenizer.ggml.token_type) to its attribute.
uint32_t AttrOfType(int32_t type) {
  switch (type) {
    case 1:
      return kNormal;
    case 2:
      return kUnknown;
    case 3:
      return kControl;
    case 4:
      return kUserDefined;
    case 5:
      return kUnused;
    case 6:
      return kByte;
    default:
      return kUndefined;
  }
}

// Token texts llama.cpp makes control tokens whatever their type (llama_vocab::impl::load): its
// end-of-generation list (which holds its end-of-turn list) and its fill-in-the-middle lists.
constexpr std::string_view kInferredControl[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<｜end▁of▁sentence｜>", "[e~[",
    // fill-in-the-middle
    "<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<PRE>", "▁<PRE>", "<|code_prefix|>",
    "<|prefix|>", "<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<SUF>", "▁<SUF>",
    "<|code_suffix|>", "<|suffix|>", "<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<MID>",
    "▁<MID>", "<|code_middle|>", "<|middle|>", "<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>",
    "[PAD]", "<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>", "<|file_sep|>",
    "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"};

// llama.cpp's end-of-turn and end-of-message texts, for eot/eom ids the GGUF does not give, in the
// order they are tried.
constexpr std::string_view kEotTexts[] = {
    "<|eot_id|>",        "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
    "<|end_of_text|>",   "<EOT>",      "_<EOT>",  "[EOT]",         "<｜end▁of▁sentence｜>",
    "<end_of_utterance>"};
constexpr std::string_view kEomText = "<|eom_id|>";

// U+2581 LOWER ONE EIGHTH BLOCK: SentencePiece's space.
constexpr std::string_view kSpmSpace = "▁";

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

// `text` with every `from` replaced by `to` (llama_escape_whitespace / llama_unescape_whitespace).
std::string ReplaceAll(std::string_view text, std::string_view from, std::string_view to) {
  std::string out;
  out.reserve(text.size());
  for (size_t pos = 0;;) {
    const size_t match = text.find(from, pos);
    out += text.substr(pos, match == std::string_view::npos ? text.npos : match - pos);
    if (match == std::string_view::npos) return out;
    out += to;
    pos = match + from.size();
  }
}

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
  bool spm = false;  // tokenizer.ggml.model "llama"
  PreTokenizerSpec pre{PreTokenizerKind::kGpt2};
  bool add_bos = false, add_space_prefix = false;
  int32_t n_vocab = 0;
  std::vector<uint32_t> attrs;                            // TokenAttr bits of every token
  absl::flat_hash_map<std::string, int32_t> token_to_id;  // duplicate texts: the last id wins
  std::vector<std::string> extra_symbols;                 // symbol id n_vocab + i
  absl::flat_hash_map<std::string, int32_t> extra_symbol_ids;
  absl::flat_hash_map<uint64_t, Merge> merges;  // PairKey(left symbol, right symbol)
  std::array<int32_t, 256> byte_symbol{};       // symbol id of each byte's byte-level character
  std::array<std::string, 256> byte_text;       // UTF-8 of each byte's byte-level character
  SpmVocab spm_vocab;
  std::vector<int32_t> special_tokens;  // split out before merging, longest text first
  std::vector<std::string> pieces;      // decoded bytes of every token

  mutable std::shared_mutex cache_mu;
  mutable absl::flat_hash_map<std::string, std::vector<int32_t>> cache;  // word bytes -> ids

  int32_t Intern(const std::string& text);
  const std::string& SymbolText(int32_t sym) const {
    return sym < n_vocab ? data.tokens[sym] : extra_symbols[sym - n_vocab];
  }
  int32_t Find(std::string_view text) const {
    auto it = token_to_id.find(AbslView(text));
    return it == token_to_id.end() ? -1 : it->second;
  }
  std::string MakePiece(int32_t id) const;
  absl::Status Build();
  void InferAttributes();
  void BuildBpe();
  void BuildSpm();
  void BpeWord(std::string_view word, std::vector<int32_t>* out) const;
  void EncodeWord(std::string_view word, std::vector<int32_t>* out) const;
  absl::Status EncodeRaw(std::string_view text, bool after_special,
                         std::vector<int32_t>* out) const;
};

int32_t Tokenizer::Impl::Intern(const std::string& text) {
  if (auto it = token_to_id.find(text); it != token_to_id.end()) return it->second;
  auto [it, inserted] =
      extra_symbol_ids.try_emplace(text, n_vocab + static_cast<int32_t>(extra_symbols.size()));
  if (inserted) extra_symbols.push_back(text);
  return it->second;
}

// llama.cpp token_to_piece(special = true).
std::string Tokenizer::Impl::MakePiece(int32_t id) const {
  const std::string& text = data.tokens[id];
  const uint32_t attr = attrs[id];
  if (attr & (kUnknown | kControl | kUserDefined)) return text;
  if (attr & kByte) {  // "<0xAB>"
    return std::string(1, static_cast<char>(std::strtol(text.substr(3, 2).c_str(), nullptr, 16)));
  }
  if (!(attr & kNormal)) return "";  // unused, undefined: render as nothing
  if (spm) return ReplaceAll(text, kSpmSpace, " ");
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

// What llama_vocab::impl::load infers beyond the token types: end-of-generation and FIM texts are
// control tokens; eot/eom found by text; gpt-oss's channel markers are user-defined; Phi-3 models
// (general.name) strip the spaces after their special tokens.
void Tokenizer::Impl::InferAttributes() {
  for (std::string_view text : kInferredControl) {
    if (const int32_t id = Find(text); id >= 0) attrs[id] |= kControl;
  }
  for (std::string_view text : kEotTexts) {
    if (data.eot >= 0) break;
    data.eot = Find(text);
  }
  if (data.eom < 0) data.eom = Find(kEomText);
  for (std::string_view text : {"<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"}) {
    if (const int32_t id = Find(text); id >= 0) attrs[id] = kUserDefined;
  }
  const std::string name = absl::AsciiStrToLower(data.name);
  if (absl::StrContains(name, "phi-3") || absl::StrContains(name, "phi3")) {
    for (int32_t id = 0; id < n_vocab; ++id) {
      if (attrs[id] & (kControl | kUserDefined | kUnknown)) attrs[id] |= kRstrip;
    }
    if (const int32_t id = Find("</s>"); id >= 0) attrs[id] |= kRstrip;
    for (std::string_view text : {"<unk>", "<s>", "<|endoftext|>"}) {
      if (const int32_t id = Find(text); id >= 0) attrs[id] &= ~kRstrip;
    }
  }
}

void Tokenizer::Impl::BuildBpe() {
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
}

void Tokenizer::Impl::BuildSpm() {
  if (data.scores.empty()) data.scores.assign(n_vocab, 0.0f);
  spm_vocab.token_to_id = &token_to_id;
  spm_vocab.scores = &data.scores;
  for (int b = 0; b < 256; ++b) {  // llama_vocab::byte_to_token
    int32_t id = Find(absl::StrFormat("<0x%02X>", b));
    if (id < 0) id = Find(std::string(1, static_cast<char>(b)));
    spm_vocab.byte_tokens[b] = id;
  }
}

absl::Status Tokenizer::Impl::Build() {
  if (data.model == "llama") {
    spm = true;
  } else if (data.model != "gpt2") {
    return absl::UnimplementedError(absl::StrFormat(
        "tokenizer: unsupported tokenizer model tokenizer.ggml.model = \"%s\" (supported: gpt2, "
        "llama)",
        data.model));
  }
  if (data.tokens.empty()) return absl::InvalidArgumentError("tokenizer: empty vocabulary");
  if (data.tokens.size() >= (1u << 30))
    return absl::InvalidArgumentError("tokenizer: vocab too big");
  n_vocab = static_cast<int32_t>(data.tokens.size());
  if (!data.token_types.empty() && data.token_types.size() != data.tokens.size()) {
    return absl::InvalidArgumentError(absl::StrFormat("tokenizer: %d token types for %d tokens",
                                                      data.token_types.size(), data.tokens.size()));
  }
  if (!data.scores.empty() && data.scores.size() != data.tokens.size()) {
    return absl::InvalidArgumentError(absl::StrFormat("tokenizer: %d scores for %d tokens",
                                                      data.scores.size(), data.tokens.size()));
  }
  for (int32_t id : {data.bos, data.eos, data.unk, data.pad, data.eot, data.eom}) {
    if (id < -1 || id >= n_vocab) {
      return absl::InvalidArgumentError(
          absl::StrFormat("tokenizer: special id %d out of range [0, %d)", id, n_vocab));
    }
  }
  if (spm) {
    add_bos = data.add_bos.value_or(true);
    add_space_prefix = data.add_space_prefix.value_or(true);
  } else {
    ASSIGN_OR_RETURN(pre, PreTokenizerFromName(data.pre));
    add_bos = data.add_bos.value_or(pre.add_bos);
  }
  if (add_bos && data.bos < 0) {
    return absl::InvalidArgumentError("tokenizer: the model adds BOS but has no BOS id");
  }
  token_to_id.reserve(data.tokens.size());
  attrs.resize(n_vocab);
  for (int32_t id = 0; id < n_vocab; ++id) {
    if (data.tokens[id].empty()) data.tokens[id] = absl::StrCat("[EMPTY_", id, "]");  // llama.cpp
    token_to_id[data.tokens[id]] = id;
    attrs[id] = data.token_types.empty() ? kNormal : AttrOfType(data.token_types[id]);
  }
  InferAttributes();
  if (spm) {
    BuildSpm();
  } else {
    BuildBpe();
  }
  for (int32_t id = 0; id < n_vocab; ++id) {
    if (attrs[id] & (kControl | kUserDefined | kUnknown)) special_tokens.push_back(id);
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
  if (pre.ignore_merges) {  // the whole word's byte-level text, if that is a token
    std::string text;
    for (char c : word) text += byte_text[static_cast<uint8_t>(c)];
    if (const int32_t id = Find(text); id >= 0) {
      out->push_back(id);
      return;
    }
  }
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

absl::Status Tokenizer::Impl::EncodeRaw(std::string_view text, bool after_special,
                                        std::vector<int32_t>* out) const {
  if (spm) {
    std::string escaped = add_space_prefix && after_special ? " " : "";
    escaped += text;
    return SpmMerge(spm_vocab, ReplaceAll(escaped, " ", kSpmSpace), out);
  }
  std::vector<std::pair<uint32_t, uint32_t>> words;
  RETURN_IF_ERROR(PreTokenize(pre.kind, text, &words));
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

absl::StatusOr<std::string> ReadString(const GgufFile& file, std::string_view key, bool required) {
  const GgufValue* v = file.Find(key);
  if (v == nullptr) {
    if (!required) return std::string();
    return absl::InvalidArgumentError(absl::StrFormat("tokenizer: GGUF key %s missing", key));
  }
  absl::StatusOr<std::string_view> s = v->AsString();
  if (!s.ok()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("tokenizer: %s: %s", key, s.status().message()));
  }
  return std::string(*s);
}

// An optional numeric array key, each element read by `get` (AsInt, AsFloat) and cast to T.
template <typename T, typename Get>
absl::Status ReadOptionalArray(const GgufFile& file, std::string_view key, Get get,
                               std::vector<T>* out) {
  const GgufValue* v = file.Find(key);
  if (v == nullptr) return absl::OkStatus();
  ASSIGN_OR_RETURN(const GgufArray* array, v->AsArray());
  out->reserve(array->elements.size());
  for (const GgufValue& e : array->elements) {
    ASSIGN_OR_RETURN(auto x, get(e));
    out->push_back(static_cast<T>(x));
  }
  return absl::OkStatus();
}

absl::Status ReadOptionalBool(const GgufFile& file, std::string_view key,
                              std::optional<bool>* out) {
  const GgufValue* v = file.Find(key);
  if (v == nullptr) return absl::OkStatus();
  ASSIGN_OR_RETURN(*out, v->AsBool());
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
  TokenizerData data;
  ASSIGN_OR_RETURN(data.model, ReadString(file, "tokenizer.ggml.model", /*required=*/true));
  if (data.model != "gpt2" && data.model != "llama") {
    return absl::UnimplementedError(absl::StrFormat(
        "tokenizer: unsupported tokenizer model tokenizer.ggml.model = \"%s\" (supported: gpt2, "
        "llama)",
        data.model));
  }
  ASSIGN_OR_RETURN(data.name, ReadString(file, "general.name", /*required=*/false));
  RETURN_IF_ERROR(ReadStrings(file, "tokenizer.ggml.tokens", &data.tokens));
  if (data.model == "gpt2") {
    RETURN_IF_ERROR(ReadStrings(file, "tokenizer.ggml.merges", &data.merges));
    ASSIGN_OR_RETURN(data.pre, ReadString(file, "tokenizer.ggml.pre", /*required=*/false));
  }
  RETURN_IF_ERROR(ReadOptionalArray(
      file, "tokenizer.ggml.token_type", [](const GgufValue& e) { return e.AsInt(); },
      &data.token_types));
  RETURN_IF_ERROR(ReadOptionalArray(
      file, "tokenizer.ggml.scores", [](const GgufValue& e) { return e.AsFloat(); }, &data.scores));
  RETURN_IF_ERROR(ReadOptionalId(file, "tokenizer.ggml.bos_token_id", &data.bos));
  RETURN_IF_ERROR(ReadOptionalId(file, "tokenizer.ggml.eos_token_id", &data.eos));
  RETURN_IF_ERROR(ReadOptionalId(file, "tokenizer.ggml.unknown_token_id", &data.unk));
  RETURN_IF_ERROR(ReadOptionalId(file, "tokenizer.ggml.padding_token_id", &data.pad));
  RETURN_IF_ERROR(ReadOptionalId(file, "tokenizer.ggml.eot_token_id", &data.eot));
  RETURN_IF_ERROR(ReadOptionalId(file, "tokenizer.ggml.eom_token_id", &data.eom));
  RETURN_IF_ERROR(ReadOptionalBool(file, "tokenizer.ggml.add_bos_token", &data.add_bos));
  RETURN_IF_ERROR(
      ReadOptionalBool(file, "tokenizer.ggml.add_space_prefix", &data.add_space_prefix));
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

absl::StatusOr<std::vector<int32_t>> Tokenizer::Encode(std::string_view text, bool parse_special,
                                                       bool add_special) const {
  RETURN_IF_ERROR(ValidateUtf8(text));  // reject invalid UTF-8 before any work
  // Fragments: raw text (id -1, byte range) or one special token (id >= 0).
  struct Fragment {
    int32_t id;
    size_t begin, end;
  };
  auto is_space = [&](size_t i) { return std::isspace(static_cast<unsigned char>(text[i])) != 0; };
  std::vector<Fragment> fragments;
  if (!text.empty()) fragments.push_back({-1, 0, text.size()});
  for (int32_t special : impl_->special_tokens) {
    const uint32_t attr = impl_->attrs[special];
    if (!parse_special && (attr & (kControl | kUnknown))) continue;  // user-defined always split
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
      while (pos < f.end) {
        const size_t match = text.substr(0, f.end).find(needle, pos);
        if (match == std::string_view::npos) break;
        size_t left_end = match;
        if (attr & kLstrip) {
          while (left_end > pos && is_space(left_end - 1)) --left_end;
        }
        if (left_end > pos) next.push_back({-1, pos, left_end});
        next.push_back({special, match, match + needle.size()});
        pos = match + needle.size();
        if (attr & kRstrip) {
          while (pos < f.end && is_space(pos)) ++pos;
        }
      }
      if (pos < f.end) next.push_back({-1, pos, f.end});
    }
    fragments = std::move(next);
  }
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 2);
  if (add_special && impl_->add_bos) ids.push_back(impl_->data.bos);
  bool after_special = true;  // SPM: the first raw fragment gets the space prefix too
  for (const Fragment& f : fragments) {
    if (f.id >= 0) {
      ids.push_back(f.id);
      after_special = true;
    } else {
      RETURN_IF_ERROR(impl_->EncodeRaw(text.substr(f.begin, f.end - f.begin), after_special, &ids));
      after_special = false;
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
int32_t Tokenizer::eot() const { return impl_->data.eot; }
int32_t Tokenizer::eom() const { return impl_->data.eom; }

bool Tokenizer::IsControl(int32_t id) const {
  return id >= 0 && id < impl_->n_vocab && (impl_->attrs[id] & kControl);
}

int32_t Tokenizer::FindToken(std::string_view text) const { return impl_->Find(text); }

}  // namespace xkv
