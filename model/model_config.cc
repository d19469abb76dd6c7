#include "model/model_config.h"

#include <algorithm>
#include <cmath>
#include <optional>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "model/arch/arch.h"

namespace xkv {
namespace {

// Upper limits far above any real Llama, so a corrupt file cannot ask for absurd buffers.
constexpr int64_t kMaxLayers = 1024;
constexpr int64_t kMaxHidden = 1 << 16;
constexpr int64_t kMaxFfn = 1 << 20;
constexpr int64_t kMaxHeads = 1024;
constexpr int64_t kMaxHeadDim = 1024;
constexpr int64_t kMaxVocab = 10'000'000;
constexpr int64_t kMaxContext = 1 << 24;

class ConfigReader {
 public:
  ConfigReader(const GgufFile& file, std::string arch) : file_(file), arch_(std::move(arch)) {}

  absl::Status Error(absl::string_view key, absl::string_view problem) const {
    return absl::InvalidArgumentError(
        absl::StrCat(file_.path(), ": model config: '", key, "': ", problem));
  }

  std::string Key(absl::string_view suffix) const { return absl::StrCat(arch_, ".", suffix); }

  // Integer at `key` in [min, max]; nullopt when absent and not required.
  absl::StatusOr<std::optional<int64_t>> Int(const std::string& key, bool required, int64_t min,
                                             int64_t max) const {
    const GgufValue* v = file_.Find(key);
    if (v == nullptr) {
      if (required) return Error(key, "missing");
      return std::optional<int64_t>();
    }
    absl::StatusOr<int64_t> i = v->AsInt();
    if (!i.ok()) return Error(key, i.status().message());
    if (*i < min || *i > max) {
      return Error(key, absl::StrCat("value ", *i, " is outside [", min, ", ", max, "]"));
    }
    return std::optional<int64_t>(*i);
  }

  absl::StatusOr<int> RequiredInt(const std::string& key, int64_t min, int64_t max) const {
    ASSIGN_OR_RETURN(std::optional<int64_t> v, Int(key, true, min, max));
    return static_cast<int>(*v);
  }

  // Float at `key` (finite, in (0, max]) or `fallback` when absent.
  absl::StatusOr<float> PositiveFloat(const std::string& key, float fallback, double max) const {
    const GgufValue* v = file_.Find(key);
    if (v == nullptr) return fallback;
    absl::StatusOr<double> d = v->AsFloat();
    if (!d.ok()) return Error(key, d.status().message());
    if (!std::isfinite(*d) || *d <= 0 || *d > max) {
      return Error(key, absl::StrCat("value ", *d, " is not in (0, ", max, "]"));
    }
    return static_cast<float>(*d);
  }

 private:
  const GgufFile& file_;
  std::string arch_;
};

absl::Status ReadShape(const ConfigReader& r, ModelConfig& c) {
  ASSIGN_OR_RETURN(c.n_layers, r.RequiredInt(r.Key("block_count"), 1, kMaxLayers));
  ASSIGN_OR_RETURN(c.hidden, r.RequiredInt(r.Key("embedding_length"), 1, kMaxHidden));
  ASSIGN_OR_RETURN(c.ffn, r.RequiredInt(r.Key("feed_forward_length"), 1, kMaxFfn));
  ASSIGN_OR_RETURN(c.n_heads, r.RequiredInt(r.Key("attention.head_count"), 1, kMaxHeads));
  ASSIGN_OR_RETURN(auto kv, r.Int(r.Key("attention.head_count_kv"), false, 1, kMaxHeads));
  c.n_kv_heads = kv ? static_cast<int>(*kv) : c.n_heads;
  if (c.n_heads % c.n_kv_heads != 0) {
    return r.Error(
        r.Key("attention.head_count_kv"),
        absl::StrCat(c.n_heads, " query heads are not a multiple of ", c.n_kv_heads, " KV heads"));
  }
  ASSIGN_OR_RETURN(auto key_len, r.Int(r.Key("attention.key_length"), false, 1, kMaxHeadDim));
  ASSIGN_OR_RETURN(auto value_len, r.Int(r.Key("attention.value_length"), false, 1, kMaxHeadDim));
  if (key_len) {
    c.head_dim = static_cast<int>(*key_len);
  } else {
    if (c.hidden % c.n_heads != 0) {
      return r.Error(r.Key("attention.head_count"),
                     absl::StrCat("hidden size ", c.hidden, " is not a multiple of ", c.n_heads,
                                  " heads (and no attention.key_length)"));
    }
    c.head_dim = c.hidden / c.n_heads;
  }
  if (c.head_dim > kMaxHeadDim || c.head_dim % 2 != 0) {
    return r.Error(r.Key("attention.key_length"),
                   absl::StrCat("head dim ", c.head_dim, " must be even and <= ", kMaxHeadDim));
  }
  if (value_len && *value_len != c.head_dim) {
    return r.Error(r.Key("attention.value_length"),
                   absl::StrCat(*value_len, " differs from the key length ", c.head_dim));
  }
  ASSIGN_OR_RETURN(auto rope_dims, r.Int(r.Key("rope.dimension_count"), false, 2, c.head_dim));
  c.rope_dims = rope_dims ? static_cast<int>(*rope_dims) : c.head_dim;
  if (c.rope_dims % 2 != 0) {
    return r.Error(r.Key("rope.dimension_count"), absl::StrCat(c.rope_dims, " is not even"));
  }
  return absl::OkStatus();
}

// Vocabulary size from <arch>.vocab_size, else the token list, else token_embd.weight's dims[1].
absl::Status ReadVocab(const GgufFile& file, const ConfigReader& r, ModelConfig& c) {
  ASSIGN_OR_RETURN(auto vocab, r.Int(r.Key("vocab_size"), false, 1, kMaxVocab));
  const GgufTensorInfo* embd = file.FindTensor("token_embd.weight");
  if (vocab) {
    c.vocab_size = static_cast<int>(*vocab);
  } else if (const GgufValue* tokens = file.Find("tokenizer.ggml.tokens")) {
    absl::StatusOr<const GgufArray*> a = tokens->AsArray();
    if (!a.ok()) return r.Error("tokenizer.ggml.tokens", a.status().message());
    c.vocab_size = static_cast<int>(std::min<size_t>((*a)->elements.size(), kMaxVocab + 1));
  } else if (embd != nullptr && embd->dims.size() == 2) {
    c.vocab_size = static_cast<int>(std::min<int64_t>(embd->dims[1], kMaxVocab + 1));
  }
  if (c.vocab_size <= 0 || c.vocab_size > kMaxVocab) {
    return r.Error(r.Key("vocab_size"), absl::StrCat("vocabulary size ", c.vocab_size,
                                                     " is not in [1, ", kMaxVocab, "]"));
  }
  if (embd != nullptr &&
      (embd->dims.size() != 2 || embd->dims[0] != c.hidden || embd->dims[1] != c.vocab_size)) {
    return r.Error("token_embd.weight", absl::StrCat("tensor shape does not match [hidden ",
                                                     c.hidden, ", vocab ", c.vocab_size, "]"));
  }
  return absl::OkStatus();
}

absl::Status ReadSpecialTokens(const ConfigReader& r, ModelConfig& c) {
  ASSIGN_OR_RETURN(auto bos, r.Int("tokenizer.ggml.bos_token_id", false, 0, c.vocab_size - 1));
  ASSIGN_OR_RETURN(auto eos, r.Int("tokenizer.ggml.eos_token_id", false, 0, c.vocab_size - 1));
  c.bos_token = bos ? static_cast<int>(*bos) : -1;
  c.eos_token = eos ? static_cast<int>(*eos) : -1;
  return absl::OkStatus();
}

// RoPE scaling as llama.cpp reads it (src/llama-model.cpp: rope.scaling.*); only the kinds that
// change the angles by one factor are supported.
absl::Status ReadRopeScaling(const GgufFile& file, const ConfigReader& r, ModelConfig& c) {
  std::string type = "linear";
  if (const GgufValue* v = file.Find(r.Key("rope.scaling.type"))) {
    absl::StatusOr<std::string_view> s = v->AsString();
    if (!s.ok()) return r.Error(r.Key("rope.scaling.type"), s.status().message());
    type = std::string(*s);
  }
  if (type == "none") return absl::OkStatus();
  if (type != "linear") {
    return r.Error(r.Key("rope.scaling.type"),
                   absl::StrCat("unsupported RoPE scaling '", type, "' (supported: none, linear)"));
  }
  const std::string key = file.Find(r.Key("rope.scaling.factor")) != nullptr
                              ? r.Key("rope.scaling.factor")
                              : r.Key("rope.scale_linear");
  const GgufValue* v = file.Find(key);
  if (v == nullptr) return absl::OkStatus();
  absl::StatusOr<double> factor = v->AsFloat();
  if (!factor.ok()) return r.Error(key, factor.status().message());
  if (*factor == 0) return absl::OkStatus();  // llama.cpp: 0 means unscaled
  if (!std::isfinite(*factor) || *factor < 1e-3 || *factor > 1e3) {
    return r.Error(key, absl::StrCat("value ", *factor, " is not 0 or in [0.001, 1000]"));
  }
  c.rope_freq_scale = static_cast<float>(1.0 / *factor);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ModelConfig> ReadModelConfig(const GgufFile& file) {
  ModelConfig c;
  const GgufValue* arch = file.Find("general.architecture");
  if (arch == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(file.path(), ": model config: 'general.architecture': missing"));
  }
  absl::StatusOr<std::string_view> arch_name = arch->AsString();
  if (!arch_name.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(file.path(), ": model config: 'general.architecture': not a string"));
  }
  absl::StatusOr<const ArchSpec*> spec = FindArch(std::string(*arch_name));
  if (!spec.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(file.path(), ": model config: ", spec.status().message()));
  }
  c.architecture = std::string(*arch_name);
  c.rope_style = (*spec)->rope_style;
  if (const GgufValue* name = file.Find("general.name")) {
    absl::StatusOr<std::string_view> s = name->AsString();
    if (s.ok()) c.name = std::string(*s);
  }
  const ConfigReader r(file, c.architecture);
  RETURN_IF_ERROR(ReadShape(r, c));
  ASSIGN_OR_RETURN(c.rope_base, r.PositiveFloat(r.Key("rope.freq_base"), 10000.f, 1e12));
  RETURN_IF_ERROR(ReadRopeScaling(file, r, c));
  ASSIGN_OR_RETURN(c.norm_eps,
                   r.PositiveFloat(r.Key("attention.layer_norm_rms_epsilon"), 1e-5f, 1.0));
  ASSIGN_OR_RETURN(c.context_length, r.RequiredInt(r.Key("context_length"), 1, kMaxContext));
  RETURN_IF_ERROR(ReadVocab(file, r, c));
  RETURN_IF_ERROR(ReadSpecialTokens(r, c));
  c.tied_embeddings = file.FindTensor("output.weight") == nullptr;
  RETURN_IF_ERROR(ReadArchTensors(file, **spec, c));
  return c;
}

}  // namespace xkv
