#include "model/model_config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <map>
#include <optional>

#include "model/gguf.h"

namespace xkv {
namespace {

using ::testing::HasSubstr;

// Llama metadata for a small model; tests override or erase single keys.
std::map<std::string, std::optional<GgufValue>> BaseKeys() {
  return {
      {"general.architecture", GgufValue::String("llama")},
      {"general.name", GgufValue::String("unit")},
      {"llama.block_count", GgufValue::Uint32(4)},
      {"llama.context_length", GgufValue::Uint32(4096)},
      {"llama.embedding_length", GgufValue::Uint32(256)},
      {"llama.feed_forward_length", GgufValue::Uint32(512)},
      {"llama.attention.head_count", GgufValue::Uint32(8)},
      {"llama.attention.head_count_kv", GgufValue::Uint32(2)},
      {"llama.rope.freq_base", GgufValue::Float32(500000.f)},
      {"llama.attention.layer_norm_rms_epsilon", GgufValue::Float32(1e-6f)},
      {"llama.vocab_size", GgufValue::Uint32(1000)},
      {"tokenizer.ggml.bos_token_id", GgufValue::Uint32(1)},
      {"tokenizer.ggml.eos_token_id", GgufValue::Uint32(2)},
  };
}

struct Extra {
  bool with_output = false;
  std::vector<int64_t> embd_dims = {256, 1000};
  std::vector<std::pair<std::string, std::vector<int64_t>>> tensors;  // more F32 tensors
};

absl::StatusOr<ModelConfig> Read(const std::map<std::string, std::optional<GgufValue>>& keys,
                                 const Extra& extra = {}) {
  GgufWriter w;
  for (const auto& [k, v] : keys) {
    if (v) w.SetMetadata(k, *v);
  }
  int64_t n = 1;
  for (int64_t d : extra.embd_dims) n *= d;
  w.AddTensor("token_embd.weight", extra.embd_dims, GgmlType::kF32, std::vector<float>(n, 0.f));
  if (extra.with_output) {
    w.AddTensor("output.weight", {256, 1000}, GgmlType::kF32, std::vector<float>(256000, 0.f));
  }
  for (const auto& [name, dims] : extra.tensors) {
    int64_t elements = 1;
    for (int64_t d : dims) elements *= d;
    w.AddTensor(name, dims, GgmlType::kF32, std::vector<float>(elements, 1.f));
  }
  auto bytes = w.WriteBuffer();
  if (!bytes.ok()) return bytes.status();
  auto f = GgufFile::FromBuffer(*bytes);
  if (!f.ok()) return f.status();
  return ReadModelConfig(**f);
}

void ExpectError(const std::map<std::string, std::optional<GgufValue>>& keys,
                 std::string_view needle, const Extra& extra = {}) {
  auto c = Read(keys, extra);
  ASSERT_FALSE(c.ok()) << "accepted; expected error mentioning " << needle;
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(c.status().message()), HasSubstr(std::string(needle)));
}

TEST(ModelConfigTest, ReadsEveryField) {
  auto c = Read(BaseKeys());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, "llama");
  EXPECT_EQ(c->name, "unit");
  EXPECT_EQ(c->n_layers, 4);
  EXPECT_EQ(c->hidden, 256);
  EXPECT_EQ(c->ffn, 512);
  EXPECT_EQ(c->n_heads, 8);
  EXPECT_EQ(c->n_kv_heads, 2);
  EXPECT_EQ(c->head_dim, 32);
  EXPECT_EQ(c->rope_dims, 32);
  EXPECT_EQ(c->rope_base, 500000.f);
  EXPECT_EQ(c->rope_style, RopeStyle::kNorm);
  EXPECT_EQ(c->norm_eps, 1e-6f);
  EXPECT_EQ(c->context_length, 4096);
  EXPECT_EQ(c->vocab_size, 1000);
  EXPECT_TRUE(c->tied_embeddings);
  EXPECT_EQ(c->bos_token, 1);
  EXPECT_EQ(c->eos_token, 2);
  EXPECT_EQ(c->KvBytesPerTokenPerLayer(2), 2 * 2 * 32 * 2);
}

TEST(ModelConfigTest, DefaultsAndDerivedValues) {
  auto keys = BaseKeys();
  keys["llama.attention.head_count_kv"] = std::nullopt;  // -> n_heads
  keys["llama.rope.freq_base"] = std::nullopt;           // -> 10000
  keys["llama.attention.layer_norm_rms_epsilon"] = std::nullopt;
  keys["llama.vocab_size"] = std::nullopt;  // -> token_embd.weight dims[1]
  keys["tokenizer.ggml.bos_token_id"] = std::nullopt;
  auto c = Read(keys, Extra{.with_output = true});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->n_kv_heads, 8);
  EXPECT_EQ(c->rope_base, 10000.f);
  EXPECT_EQ(c->norm_eps, 1e-5f);
  EXPECT_EQ(c->vocab_size, 1000);
  EXPECT_EQ(c->bos_token, -1);
  EXPECT_FALSE(c->tied_embeddings);
}

TEST(ModelConfigTest, VocabFromTokenList) {
  auto keys = BaseKeys();
  keys["llama.vocab_size"] = std::nullopt;
  std::vector<std::string> tokens(1000, "t");
  keys["tokenizer.ggml.tokens"] = GgufValue::StringArray(tokens);
  auto c = Read(keys);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->vocab_size, 1000);
}

TEST(ModelConfigTest, KeyLengthOverridesHiddenOverHeads) {
  auto keys = BaseKeys();
  keys["llama.attention.key_length"] = GgufValue::Uint32(64);  // 8 * 64 != 256: allowed
  keys["llama.rope.dimension_count"] = GgufValue::Uint32(32);  // partial rotary
  auto c = Read(keys);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->head_dim, 64);
  EXPECT_EQ(c->rope_dims, 32);
  keys["llama.attention.value_length"] = GgufValue::Uint32(128);
  ExpectError(keys, "value_length");
}

TEST(ModelConfigTest, RejectsOtherArchitectures) {
  auto keys = BaseKeys();
  keys["general.architecture"] = GgufValue::String("gpt2");
  ExpectError(keys, "unsupported architecture 'gpt2'");
  keys["general.architecture"] = GgufValue::Uint32(1);
  ExpectError(keys, "general.architecture");
  keys["general.architecture"] = std::nullopt;
  ExpectError(keys, "'general.architecture': missing");
}

TEST(ModelConfigTest, RejectsBadCounts) {
  const std::vector<std::pair<std::string, GgufValue>> bad = {
      {"llama.block_count", GgufValue::Uint32(0)},
      {"llama.block_count", GgufValue::Uint32(2000)},
      {"llama.block_count", GgufValue::Int32(-3)},
      {"llama.block_count", GgufValue::String("4")},
      {"llama.embedding_length", GgufValue::Uint64(1ull << 40)},
      {"llama.feed_forward_length", GgufValue::Uint32(0)},
      {"llama.attention.head_count", GgufValue::Uint32(5000)},
      {"llama.vocab_size", GgufValue::Uint32(20'000'000)},
      {"llama.context_length", GgufValue::Uint32(0)},
      {"llama.rope.freq_base", GgufValue::Float32(-1.f)},
      {"llama.attention.layer_norm_rms_epsilon", GgufValue::Float32(0.f)},
      {"tokenizer.ggml.eos_token_id", GgufValue::Uint32(1000)},  // == vocab size
  };
  for (const auto& [key, value] : bad) {
    auto keys = BaseKeys();
    keys[key] = value;
    SCOPED_TRACE(key);
    ExpectError(keys, key);
  }
}

TEST(ModelConfigTest, RejectsMissingRequiredKeys) {
  for (const char* key :
       {"llama.block_count", "llama.embedding_length", "llama.feed_forward_length",
        "llama.attention.head_count", "llama.context_length"}) {
    auto keys = BaseKeys();
    keys[key] = std::nullopt;
    SCOPED_TRACE(key);
    ExpectError(keys, std::string(key) + "': missing");
  }
}

TEST(ModelConfigTest, RejectsInconsistentShapes) {
  auto keys = BaseKeys();
  keys["llama.attention.head_count_kv"] = GgufValue::Uint32(3);  // 8 % 3 != 0
  ExpectError(keys, "head_count_kv");
  keys = BaseKeys();
  keys["llama.attention.head_count"] = GgufValue::Uint32(6);  // 256 / 6 is not whole
  keys["llama.attention.head_count_kv"] = GgufValue::Uint32(6);
  ExpectError(keys, "not a multiple of 6 heads");
  keys = BaseKeys();
  keys["llama.rope.dimension_count"] = GgufValue::Uint32(64);  // > head_dim 32
  ExpectError(keys, "rope.dimension_count");
  ExpectError(BaseKeys(), "token_embd.weight", Extra{.embd_dims = {128, 1000}});
}

// BaseKeys with the "llama." keys renamed to `arch`.
std::map<std::string, std::optional<GgufValue>> ArchKeys(const std::string& arch) {
  std::map<std::string, std::optional<GgufValue>> keys;
  for (const auto& [k, v] : BaseKeys()) {
    keys[k.rfind("llama.", 0) == 0 ? arch + k.substr(5) : k] = v;
  }
  keys["general.architecture"] = GgufValue::String(arch);
  return keys;
}

// `suffix` of every one of BaseKeys' 4 layers, [elements].
std::vector<std::pair<std::string, std::vector<int64_t>>> PerLayer(const std::string& suffix,
                                                                   int64_t elements) {
  std::vector<std::pair<std::string, std::vector<int64_t>>> out;
  for (int l = 0; l < 4; ++l)
    out.push_back({"blk." + std::to_string(l) + "." + suffix, {elements}});
  return out;
}

Extra Qwen2Biases() {  // 8 heads x 32 = 256 for Q, 2 x 32 = 64 for K and V
  Extra e;
  for (const auto& [suffix, n] : {std::pair<std::string, int64_t>{"attn_q.bias", 256},
                                  {"attn_k.bias", 64},
                                  {"attn_v.bias", 64}}) {
    for (auto& t : PerLayer(suffix, n)) e.tensors.push_back(t);
  }
  return e;
}

TEST(ModelConfigTest, UnsupportedArchitectureListsTheSupportedOnes) {
  auto keys = BaseKeys();
  keys["general.architecture"] = GgufValue::String("gemma2");
  ExpectError(keys,
              "'general.architecture': unsupported architecture 'gemma2' (supported: llama, "
              "qwen2, qwen3)");
}

TEST(ModelConfigTest, Qwen2HasNeoxRopeAndQkvBias) {
  auto c = Read(ArchKeys("qwen2"), Qwen2Biases());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, "qwen2");
  EXPECT_EQ(c->rope_style, RopeStyle::kNeox);
  EXPECT_TRUE(c->qkv_bias);
  EXPECT_FALSE(c->qk_norm);
  EXPECT_EQ(c->n_layers, 4);
}

TEST(ModelConfigTest, Qwen2WithoutItsBiasesNamesTheTensor) {
  ExpectError(ArchKeys("qwen2"), "tensor 'blk.0.attn_q.bias': missing (architecture qwen2)");
  Extra e = Qwen2Biases();
  e.tensors.erase(e.tensors.begin() + 5);  // blk.1.attn_k.bias
  ExpectError(ArchKeys("qwen2"), "tensor 'blk.1.attn_k.bias': missing", e);
  e = Qwen2Biases();
  e.tensors[4].second = {255};  // blk.0.attn_k.bias
  ExpectError(ArchKeys("qwen2"), "tensor 'blk.0.attn_k.bias': has dims [255], want [64]", e);
}

TEST(ModelConfigTest, Qwen3HasQkNorm) {
  Extra e;
  for (auto& t : PerLayer("attn_q_norm.weight", 32)) e.tensors.push_back(t);
  for (auto& t : PerLayer("attn_k_norm.weight", 32)) e.tensors.push_back(t);
  auto c = Read(ArchKeys("qwen3"), e);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rope_style, RopeStyle::kNeox);
  EXPECT_TRUE(c->qk_norm);
  EXPECT_FALSE(c->qkv_bias);
  e.tensors.pop_back();
  ExpectError(ArchKeys("qwen3"), "tensor 'blk.3.attn_k_norm.weight': missing", e);
}

TEST(ModelConfigTest, LlamaOptionalTensorsSwitchTheirHooksOn) {
  Extra e;
  e.tensors.push_back({"rope_freqs.weight", {16}});
  auto c = Read(BaseKeys(), e);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->rope_freqs);
  EXPECT_FALSE(c->qkv_bias);
  e.tensors[0].second = {32};
  ExpectError(BaseKeys(), "tensor 'rope_freqs.weight': has dims [32], want [16]", e);
  c = Read(BaseKeys(), Qwen2Biases());  // llama.cpp loads optional Q/K/V biases for llama too
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->qkv_bias);
  e = Qwen2Biases();
  e.tensors.pop_back();  // some biases but not all: a broken file, not a model without biases
  ExpectError(BaseKeys(), "tensor 'blk.3.attn_v.bias': missing", e);
}

TEST(ModelConfigTest, RejectsTensorsTheArchitectureDoesNotUse) {
  Extra e;
  e.tensors.push_back({"blk.0.attn_output.bias", {256}});
  ExpectError(BaseKeys(), "tensor 'blk.0.attn_output.bias': not used by architecture llama", e);
  ExpectError(BaseKeys(), "tensor 'blk.0.attn_q_norm.weight': not used by architecture llama",
              Extra{.tensors = PerLayer("attn_q_norm.weight", 32)});
}

TEST(ModelConfigTest, RopeScaling) {
  auto keys = BaseKeys();
  auto c = Read(keys);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rope_freq_scale, 1.f);
  keys["llama.rope.scaling.type"] = GgufValue::String("linear");
  keys["llama.rope.scaling.factor"] = GgufValue::Float32(4.f);
  c = Read(keys);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rope_freq_scale, 0.25f);
  keys["llama.rope.scaling.type"] = GgufValue::String("none");  // llama.cpp: never scaled
  c = Read(keys);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rope_freq_scale, 1.f);
  keys["llama.rope.scaling.type"] = GgufValue::String("yarn");
  ExpectError(keys, "'llama.rope.scaling.type': unsupported RoPE scaling 'yarn'");
  keys["llama.rope.scaling.type"] = std::nullopt;  // linear by default, as llama.cpp
  keys["llama.rope.scaling.factor"] = GgufValue::Float32(-2.f);
  ExpectError(keys, "llama.rope.scaling.factor");
}

}  // namespace
}  // namespace xkv
