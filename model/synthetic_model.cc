#include "model/synthetic_model.h"

#include <algorithm>
#include <cmath>
#include <memory>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "model/arch/arch.h"
#include "model/gguf.h"

namespace xkv {
namespace {

// A few GPT-2 style merges (in rank order) over byte symbols; each adds its merged token.
constexpr const char* kMerges[][2] = {
    {"Ġ", "t"}, {"h", "e"}, {"i", "n"},   {"Ġ", "a"},
    {"e", "r"}, {"o", "n"}, {"Ġt", "he"}, {"r", "e"},
};
constexpr int kNumMerges = sizeof(kMerges) / sizeof(kMerges[0]);
constexpr const char* kControlTokens[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
constexpr int kNumControl = 3;
constexpr int kBosId = 1;  // <|im_start|>, as SmolLM2
constexpr int kEosId = 2;  // <|im_end|>

// SmolLM2's ChatML template.
constexpr const char* kChatTemplate =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}";

void AppendUtf8(uint32_t cp, std::string& out) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xc0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  } else {
    out += static_cast<char>(0xe0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  }
}

// GPT-2 bytes_to_unicode symbols in vocabulary order: printable bytes ('!'..'~', '¡'..'¬',
// '®'..'ÿ') map to themselves, then the remaining bytes in order map to U+0100, U+0101, ...
std::vector<std::string> ByteSymbols() {
  std::vector<std::string> symbols;
  std::vector<bool> printable(256, false);
  for (uint32_t b = 0; b < 256; ++b) {
    printable[b] = (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || (b >= 0xae);
  }
  for (uint32_t b = 0; b < 256; ++b) {
    if (!printable[b]) continue;
    symbols.emplace_back();
    AppendUtf8(b, symbols.back());
  }
  uint32_t next = 256;
  for (uint32_t b = 0; b < 256; ++b) {
    if (printable[b]) continue;
    symbols.emplace_back();
    AppendUtf8(next++, symbols.back());
  }
  return symbols;
}

void AddTokenizerMetadata(const SyntheticModelOptions& o, GgufWriter& w) {
  std::vector<std::string> tokens(kControlTokens, kControlTokens + kNumControl);
  std::vector<std::string> bytes = ByteSymbols();
  tokens.insert(tokens.end(), bytes.begin(), bytes.end());
  std::vector<std::string> merges;
  for (const auto& m : kMerges) {
    merges.push_back(absl::StrCat(m[0], " ", m[1]));
    tokens.push_back(absl::StrCat(m[0], m[1]));
  }
  for (int i = static_cast<int>(tokens.size()); i < o.vocab_size; ++i) {
    tokens.push_back(absl::StrCat("<unused_", i, ">"));  // normal tokens BPE never produces
  }
  std::vector<GgufValue> types;
  types.reserve(tokens.size());
  for (int i = 0; i < o.vocab_size; ++i) types.push_back(GgufValue::Int32(i < kNumControl ? 3 : 1));
  w.SetMetadata("tokenizer.ggml.model", GgufValue::String("gpt2"));
  w.SetMetadata("tokenizer.ggml.pre", GgufValue::String("smollm"));
  w.SetMetadata("tokenizer.ggml.tokens", GgufValue::StringArray(tokens));
  w.SetMetadata("tokenizer.ggml.token_type",
                GgufValue::Array(GgufValueType::kInt32, std::move(types)));
  w.SetMetadata("tokenizer.ggml.merges", GgufValue::StringArray(merges));
  w.SetMetadata("tokenizer.ggml.bos_token_id", GgufValue::Uint32(kBosId));
  w.SetMetadata("tokenizer.ggml.eos_token_id", GgufValue::Uint32(kEosId));
  w.SetMetadata("tokenizer.ggml.unknown_token_id", GgufValue::Uint32(0));
  w.SetMetadata("tokenizer.ggml.padding_token_id", GgufValue::Uint32(kEosId));
  w.SetMetadata("tokenizer.ggml.add_bos_token", GgufValue::Bool(false));
  w.SetMetadata("tokenizer.chat_template", GgufValue::String(kChatTemplate));
}

// llama.cpp's general.file_type (LLAMA_FTYPE_*) for a model whose matrices are `type`.
uint32_t FileType(GgmlType type) {
  switch (type) {
    case GgmlType::kF32:
      return 0;
    case GgmlType::kF16:
      return 1;
    case GgmlType::kQ4_0:
      return 2;
    case GgmlType::kQ4_1:
      return 3;
    case GgmlType::kQ8_0:
      return 7;
    case GgmlType::kBF16:
      return 32;
    case GgmlType::kQ2_K:
      return 10;
    case GgmlType::kQ3_K:  // the _S variants: every matrix of the one type
      return 11;
    case GgmlType::kQ4_K:
      return 14;
    case GgmlType::kQ5_K:
      return 16;
    case GgmlType::kQ6_K:
      return 18;
  }
  return 0;
}

void AddModelMetadata(const SyntheticModelOptions& o, GgufWriter& w) {
  auto u32 = [](int v) { return GgufValue::Uint32(static_cast<uint32_t>(v)); };
  auto key = [&o](absl::string_view suffix) { return absl::StrCat(o.architecture, ".", suffix); };
  w.SetMetadata("general.architecture", GgufValue::String(o.architecture));
  w.SetMetadata("general.type", GgufValue::String("model"));
  w.SetMetadata("general.name", GgufValue::String(o.name));
  w.SetMetadata("general.file_type", GgufValue::Uint32(FileType(o.weight_type)));
  w.SetMetadata("general.quantization_version", GgufValue::Uint32(2));
  w.SetMetadata(key("block_count"), u32(o.n_layers));
  w.SetMetadata(key("context_length"), u32(o.context_length));
  w.SetMetadata(key("embedding_length"), u32(o.hidden));
  w.SetMetadata(key("feed_forward_length"), u32(o.ffn));
  w.SetMetadata(key("attention.head_count"), u32(o.n_heads));
  w.SetMetadata(key("attention.head_count_kv"), u32(o.n_kv_heads));
  if (o.key_length > 0) {
    w.SetMetadata(key("attention.key_length"), u32(o.key_length));
    w.SetMetadata(key("attention.value_length"), u32(o.key_length));
  }
  w.SetMetadata(key("rope.freq_base"), GgufValue::Float32(o.rope_base));
  if (o.rope_scaling_factor > 0) {
    w.SetMetadata(key("rope.scaling.type"), GgufValue::String("linear"));
    w.SetMetadata(key("rope.scaling.factor"), GgufValue::Float32(o.rope_scaling_factor));
  }
  w.SetMetadata(key("attention.layer_norm_rms_epsilon"), GgufValue::Float32(o.norm_eps));
  w.SetMetadata(key("vocab_size"), u32(o.vocab_size));
  w.SetMetadata(key("rope.dimension_count"), u32(o.head_dim()));
}

absl::Status Validate(const SyntheticModelOptions& o) {
  auto bad = [](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("synthetic model: ", why));
  };
  if (o.n_layers <= 0 || o.hidden <= 0 || o.ffn <= 0 || o.n_heads <= 0 || o.n_kv_heads <= 0 ||
      o.context_length <= 0) {
    return bad("layers, hidden, ffn, heads, KV heads and context must be positive");
  }
  RETURN_IF_ERROR(FindArch(o.architecture).status());
  if ((o.key_length <= 0 && o.hidden % o.n_heads != 0) || o.head_dim() % 2 != 0) {
    return bad(
        absl::StrCat("hidden ", o.hidden, " must split into ", o.n_heads, " heads of even size"));
  }
  if (o.n_heads % o.n_kv_heads != 0) return bad("n_heads must be a multiple of n_kv_heads");
  if (o.vocab_size < MinSyntheticVocab()) {
    return bad(absl::StrCat("vocab_size ", o.vocab_size, " < ", MinSyntheticVocab()));
  }
  std::vector<GgmlType> types = {o.weight_type};
  for (const auto& [suffix, type] : o.type_overrides) types.push_back(type);
  for (GgmlType type : types) {
    const auto traits = GetGgmlTypeTraits(static_cast<uint32_t>(type));
    if (!traits) return bad("unsupported weight type");
    if (o.hidden % traits->block_elements != 0 || o.ffn % traits->block_elements != 0) {
      return bad(absl::StrCat("hidden and ffn must be multiples of ", traits->block_elements,
                              " for ", std::string(traits->name)));
    }
  }
  if (!(o.weight_scale > 0) || !std::isfinite(o.weight_scale)) return bad("weight_scale");
  if (!(o.rope_scaling_factor >= 0) || !std::isfinite(o.rope_scaling_factor)) {
    return bad("rope_scaling_factor");
  }
  return absl::OkStatus();
}

uint64_t Mix64(uint64_t x) {  // splitmix64 finalizer
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// Deterministic approximately-normal values for one row: each element sums four 16-bit uniforms
// (Irwin-Hall, mean 2, variance 1/3), rescaled to N(0, 1)-like, then mean + scale * n.
void FillRow(uint64_t seed, uint64_t tensor, int64_t row, float mean, float scale,
             absl::Span<float> out) {
  uint64_t state = Mix64(seed ^ Mix64(tensor * 0x9e3779b97f4a7c15ULL + static_cast<uint64_t>(row)));
  constexpr float kInv = 1.0f / 65536.0f;
  const float kNorm = std::sqrt(3.0f);
  for (float& v : out) {
    state += 0x9e3779b97f4a7c15ULL;
    const uint64_t r = Mix64(state);
    float sum = 0;
    for (int k = 0; k < 4; ++k) sum += (static_cast<float>((r >> (16 * k)) & 0xffff) + 0.5f) * kInv;
    v = mean + scale * (sum - 2.0f) * kNorm;
  }
}

// llama 3.1's rope_freqs.weight (convert_hf_to_gguf.py, rope_type "llama3": factor 8, low / high
// frequency factors 1 / 4) for an original context of `original_context` tokens.
void Llama3RopeFactors(const SyntheticModelOptions& o, int64_t original_context,
                       absl::Span<float> out) {
  constexpr double kFactor = 8, kLow = 1, kHigh = 4, kPi = 3.14159265358979323846;
  const double low_wavelen = original_context / kLow, high_wavelen = original_context / kHigh;
  for (size_t i = 0; i < out.size(); ++i) {
    const double freq = std::pow(double{o.rope_base}, -2.0 * i / o.head_dim());
    const double wavelen = 2 * kPi / freq;
    double f = kFactor;
    if (wavelen < high_wavelen) {
      f = 1;
    } else if (wavelen <= low_wavelen) {
      const double smooth = (original_context / wavelen - kLow) / (kHigh - kLow);
      f = 1 / ((1 - smooth) / kFactor + smooth);
    }
    out[i] = static_cast<float>(f);
  }
}

absl::StatusOr<std::unique_ptr<GgufWriter>> BuildWriter(const SyntheticModelOptions& o) {
  ASSIGN_OR_RETURN(std::vector<SyntheticTensor> tensors, SyntheticTensorList(o));
  auto w = std::make_unique<GgufWriter>();
  AddModelMetadata(o, *w);
  AddTokenizerMetadata(o, *w);
  for (size_t i = 0; i < tensors.size(); ++i) {
    SyntheticTensor& t = tensors[i];
    if (t.name == "rope_freqs.weight") {
      const int64_t original_context = std::max(1, o.context_length / 16);
      w->AddTensorRows(std::move(t.name), std::move(t.dims), t.type,
                       [o, original_context](int64_t, absl::Span<float> out) {
                         Llama3RopeFactors(o, original_context, out);
                       });
      continue;
    }
    // Norm gains ~ 1 + N(0, 0.05^2), biases ~ N(0, 0.5^2) (large enough to matter), matrices
    // ~ N(0, weight_scale^2).
    const bool bias = absl::EndsWith(t.name, ".bias");
    const bool norm = t.dims.size() == 1 && !bias;
    const float mean = norm ? 1.0f : 0.0f;
    const float scale = norm ? 0.05f : bias ? 0.5f : o.weight_scale;
    const uint64_t seed = o.seed;
    w->AddTensorRows(std::move(t.name), std::move(t.dims), t.type,
                     [seed, i, mean, scale](int64_t row, absl::Span<float> out) {
                       FillRow(seed, i, row, mean, scale, out);
                     });
  }
  return w;
}

}  // namespace

int MinSyntheticVocab() { return kNumControl + 256 + kNumMerges; }

SyntheticModelOptions SyntheticModelOptions::Tiny() { return SyntheticModelOptions(); }

SyntheticModelOptions SyntheticModelOptions::Llama3_8B() {
  SyntheticModelOptions o;
  o.n_layers = 32;
  o.hidden = 4096;
  o.ffn = 14336;
  o.n_heads = 32;
  o.n_kv_heads = 8;
  o.vocab_size = 128256;
  o.context_length = 8192;
  o.rope_base = 500000.f;
  o.weight_type = GgmlType::kQ4_0;
  o.name = "xkv-synthetic-llama3-8b";
  return o;
}

SyntheticModelOptions SyntheticModelOptions::Llama32_1B() {
  SyntheticModelOptions o;
  o.n_layers = 16;
  o.hidden = 2048;
  o.ffn = 8192;
  o.n_heads = 32;
  o.n_kv_heads = 8;
  o.vocab_size = 128256;
  o.context_length = 131072;
  o.rope_base = 500000.f;
  o.weight_type = GgmlType::kQ4_0;
  o.tied_embeddings = true;
  o.name = "xkv-synthetic-llama3.2-1b";
  return o;
}

absl::StatusOr<std::vector<SyntheticTensor>> SyntheticTensorList(const SyntheticModelOptions& o) {
  RETURN_IF_ERROR(Validate(o));
  const int64_t h = o.hidden, f = o.ffn, v = o.vocab_size;
  const int64_t q = static_cast<int64_t>(o.n_heads) * o.head_dim();
  const int64_t kv = static_cast<int64_t>(o.n_kv_heads) * o.head_dim();
  const GgmlType wt = o.weight_type;
  ASSIGN_OR_RETURN(const ArchSpec* arch, FindArch(o.architecture));
  ModelConfig shape;  // what the architecture's extra tensors are sized from
  shape.n_heads = o.n_heads;
  shape.n_kv_heads = o.n_kv_heads;
  shape.head_dim = o.head_dim();
  shape.rope_dims = o.head_dim();
  std::vector<SyntheticTensor> t;
  for (const ArchTensor& a : arch->extra_tensors) {
    if (!a.per_layer && (a.required || o.optional_tensors)) {
      t.push_back({ArchTensorName(a, 0), {ArchTensorElements(a.shape, shape)}, GgmlType::kF32});
    }
  }
  t.push_back({"token_embd.weight", {h, v}, wt});  // [vocab rows of hidden]
  for (int l = 0; l < o.n_layers; ++l) {
    const std::string p = absl::StrCat("blk.", l, ".");
    t.push_back({p + "attn_norm.weight", {h}, GgmlType::kF32});
    t.push_back({p + "attn_q.weight", {h, q}, wt});  // y = W x: rows = outputs, dims[0] = inputs
    t.push_back({p + "attn_k.weight", {h, kv}, wt});
    t.push_back({p + "attn_v.weight", {h, kv}, wt});
    for (const ArchTensor& a : arch->extra_tensors) {
      if (a.per_layer && (a.required || o.optional_tensors)) {
        t.push_back({ArchTensorName(a, l), {ArchTensorElements(a.shape, shape)}, GgmlType::kF32});
      }
    }
    t.push_back({p + "attn_output.weight", {q, h}, wt});
    t.push_back({p + "ffn_norm.weight", {h}, GgmlType::kF32});
    t.push_back({p + "ffn_gate.weight", {h, f}, wt});
    t.push_back({p + "ffn_up.weight", {h, f}, wt});
    t.push_back({p + "ffn_down.weight", {f, h}, wt});
  }
  t.push_back({"output_norm.weight", {h}, GgmlType::kF32});
  if (!o.tied_embeddings) t.push_back({"output.weight", {h, v}, wt});
  for (SyntheticTensor& tensor : t) {
    for (const auto& [suffix, type] : o.type_overrides) {
      if (tensor.dims.size() == 2 &&
          (tensor.name == suffix || absl::EndsWith(tensor.name, "." + suffix))) {
        tensor.type = type;
        break;
      }
    }
  }
  return t;
}

absl::Status WriteSyntheticModel(const SyntheticModelOptions& options, const std::string& path) {
  ASSIGN_OR_RETURN(std::unique_ptr<GgufWriter> w, BuildWriter(options));
  return w->WriteFile(path);
}

absl::StatusOr<std::vector<uint8_t>> WriteSyntheticModelToBuffer(
    const SyntheticModelOptions& options) {
  ASSIGN_OR_RETURN(std::unique_ptr<GgufWriter> w, BuildWriter(options));
  return w->WriteBuffer();
}

}  // namespace xkv
