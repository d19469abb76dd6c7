#include "model/synthetic_model.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "model/gguf.h"
#include "model/model_config.h"
#include "model/tokenizer.h"

namespace xkv {
namespace {

std::unique_ptr<GgufFile> Load(const SyntheticModelOptions& o) {
  auto bytes = WriteSyntheticModelToBuffer(o);
  EXPECT_TRUE(bytes.ok()) << bytes.status();
  if (!bytes.ok()) return nullptr;
  auto f = GgufFile::FromBuffer(*bytes);
  EXPECT_TRUE(f.ok()) << f.status();
  return f.ok() ? *std::move(f) : nullptr;
}

TEST(SyntheticModelTest, TinyConfigRoundTrips) {
  const SyntheticModelOptions o = SyntheticModelOptions::Tiny();
  auto f = Load(o);
  ASSERT_NE(f, nullptr);
  auto c = ReadModelConfig(*f);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->n_layers, o.n_layers);
  EXPECT_EQ(c->hidden, o.hidden);
  EXPECT_EQ(c->ffn, o.ffn);
  EXPECT_EQ(c->n_heads, o.n_heads);
  EXPECT_EQ(c->n_kv_heads, o.n_kv_heads);
  EXPECT_EQ(c->head_dim, o.hidden / o.n_heads);
  EXPECT_EQ(c->vocab_size, o.vocab_size);
  EXPECT_EQ(c->context_length, o.context_length);
  EXPECT_EQ(c->rope_base, o.rope_base);
  EXPECT_EQ(c->norm_eps, o.norm_eps);
  EXPECT_FALSE(c->tied_embeddings);
  EXPECT_EQ(c->bos_token, 1);
  EXPECT_EQ(c->eos_token, 2);
}

TEST(SyntheticModelTest, TensorNamesAndShapesFollowLlamaGguf) {
  SyntheticModelOptions o = SyntheticModelOptions::Tiny();
  o.n_layers = 3;
  auto f = Load(o);
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(f->tensors().size(), 1u + 9u * 3 + 2);
  const int64_t h = 64, kv = 2 * 16, v = o.vocab_size;
  const std::vector<std::pair<std::string, std::vector<int64_t>>> expected = {
      {"token_embd.weight", {h, v}},     {"blk.2.attn_norm.weight", {h}},
      {"blk.2.attn_q.weight", {h, h}},   {"blk.2.attn_k.weight", {h, kv}},
      {"blk.2.attn_v.weight", {h, kv}},  {"blk.2.attn_output.weight", {h, h}},
      {"blk.2.ffn_norm.weight", {h}},    {"blk.2.ffn_gate.weight", {h, 128}},
      {"blk.2.ffn_up.weight", {h, 128}}, {"blk.2.ffn_down.weight", {128, h}},
      {"output_norm.weight", {h}},       {"output.weight", {h, v}},
  };
  for (const auto& [name, dims] : expected) {
    const GgufTensorInfo* t = f->FindTensor(name);
    ASSERT_NE(t, nullptr) << name;
    EXPECT_EQ(t->dims, dims) << name;
    EXPECT_EQ(t->type, GgmlType::kF32) << name;
  }
  EXPECT_EQ(f->FindTensor("blk.3.attn_q.weight"), nullptr);
}

TEST(SyntheticModelTest, TiedEmbeddingsOmitOutputWeight) {
  SyntheticModelOptions o = SyntheticModelOptions::Tiny();
  o.tied_embeddings = true;
  auto f = Load(o);
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(f->FindTensor("output.weight"), nullptr);
  EXPECT_TRUE(ReadModelConfig(*f)->tied_embeddings);
}

TEST(SyntheticModelTest, TokenizerMetadataLoads) {
  auto f = Load(SyntheticModelOptions::Tiny());
  ASSERT_NE(f, nullptr);
  const auto* tokens = *f->Find("tokenizer.ggml.tokens")->AsArray();
  ASSERT_EQ(tokens->elements.size(), 320u);
  EXPECT_EQ(*tokens->elements[0].AsString(), "<|endoftext|>");
  EXPECT_EQ(*tokens->elements[1].AsString(), "<|im_start|>");
  EXPECT_EQ(*tokens->elements[2].AsString(), "<|im_end|>");
  EXPECT_EQ(*tokens->elements[3].AsString(), "!");                    // first GPT-2 byte symbol
  EXPECT_EQ(*tokens->elements[3 + 188].AsString(), "\xc4\x80");       // byte 0x00 -> U+0100
  EXPECT_EQ(*tokens->elements[3 + 188 + 32].AsString(), "\xc4\xa0");  // space -> 'Ġ'
  EXPECT_EQ(*tokens->elements[259].AsString(), "\xc4\xa0t");          // first merge result "Ġt"
  const auto* types = *f->Find("tokenizer.ggml.token_type")->AsArray();
  EXPECT_EQ(*types->elements[2].AsInt(), 3);
  EXPECT_EQ(*types->elements[3].AsInt(), 1);
  EXPECT_EQ(*f->Find("tokenizer.ggml.model")->AsString(), "gpt2");
  EXPECT_EQ(*f->Find("tokenizer.ggml.pre")->AsString(), "smollm");
  EXPECT_EQ(*(*f->Find("tokenizer.ggml.merges")->AsArray())->elements[0].AsString(), "\xc4\xa0 t");

  auto tok = Tokenizer::FromGguf(*f);
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->vocab_size(), 320);
  EXPECT_EQ((*tok)->FindToken("<|im_end|>"), 2);
  EXPECT_EQ((*tok)->eos(), 2);
  auto ids = (*tok)->Encode("<|im_start|>hello the", /*parse_special=*/true);
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_EQ(ids->front(), 1);
  EXPECT_EQ(*(*tok)->Decode(*ids), "<|im_start|>hello the");
}

TEST(SyntheticModelTest, WeightsAreSmallFiniteAndDeterministic) {
  SyntheticModelOptions o = SyntheticModelOptions::Tiny();
  auto f = Load(o);
  ASSERT_NE(f, nullptr);
  auto q = f->ReadTensorF32("blk.0.attn_q.weight");
  ASSERT_TRUE(q.ok());
  double sum = 0, sq = 0;
  for (float x : *q) {
    ASSERT_TRUE(std::isfinite(x));
    sum += x;
    sq += x * x;
  }
  const double mean = sum / q->size(), sd = std::sqrt(sq / q->size() - mean * mean);
  EXPECT_NEAR(mean, 0.0, 0.003);
  EXPECT_NEAR(sd, 0.02, 0.002);
  auto norm = f->ReadTensorF32("blk.1.ffn_norm.weight");
  ASSERT_TRUE(norm.ok());
  for (float x : *norm) EXPECT_NEAR(x, 1.0f, 0.35f);
  // Tensors differ from each other; the same seed gives the same bytes, another seed does not.
  EXPECT_NE(*f->ReadTensorF32("blk.0.attn_k.weight"), *f->ReadTensorF32("blk.0.attn_v.weight"));
  EXPECT_EQ(*WriteSyntheticModelToBuffer(o), *WriteSyntheticModelToBuffer(o));
  SyntheticModelOptions other = o;
  other.seed = 2;
  EXPECT_NE(*WriteSyntheticModelToBuffer(o), *WriteSyntheticModelToBuffer(other));
}

TEST(SyntheticModelTest, EveryWeightTypeLoads) {
  for (GgmlType t :
       {GgmlType::kF16, GgmlType::kBF16, GgmlType::kQ8_0, GgmlType::kQ4_0, GgmlType::kQ4_1}) {
    SyntheticModelOptions o = SyntheticModelOptions::Tiny();
    o.weight_type = t;
    auto f = Load(o);
    ASSERT_NE(f, nullptr);
    EXPECT_EQ(f->FindTensor("blk.0.ffn_down.weight")->type, t);
    EXPECT_EQ(f->FindTensor("blk.0.ffn_norm.weight")->type, GgmlType::kF32);
    auto w = f->ReadTensorF32("token_embd.weight");
    ASSERT_TRUE(w.ok());
    float amax = 0;
    for (float x : *w) amax = std::max(amax, std::fabs(x));
    EXPECT_GT(amax, 0.02f);
    EXPECT_LT(amax, 0.2f);
  }
}

TEST(SyntheticModelTest, WriteFileMatchesBuffer) {
  const std::string path = ::testing::TempDir() + "/xkv_synthetic_tiny.gguf";
  SyntheticModelOptions o = SyntheticModelOptions::Tiny();
  o.weight_type = GgmlType::kQ4_0;
  ASSERT_TRUE(WriteSyntheticModel(o, path).ok());
  std::ifstream in(path, std::ios::binary);
  const std::vector<uint8_t> file_bytes((std::istreambuf_iterator<char>(in)),
                                        std::istreambuf_iterator<char>());
  EXPECT_EQ(file_bytes, *WriteSyntheticModelToBuffer(o));
  auto f = GgufFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status();
  std::filesystem::remove(path);
}

TEST(SyntheticModelTest, PresetShapes) {
  const SyntheticModelOptions l8 = SyntheticModelOptions::Llama3_8B();
  EXPECT_EQ(l8.n_layers, 32);
  EXPECT_EQ(l8.hidden, 4096);
  EXPECT_EQ(l8.n_heads, 32);
  EXPECT_EQ(l8.n_kv_heads, 8);
  EXPECT_EQ(l8.ffn, 14336);
  EXPECT_EQ(l8.vocab_size, 128256);
  EXPECT_EQ(l8.rope_base, 500000.f);
  auto tensors = SyntheticTensorList(l8);
  ASSERT_TRUE(tensors.ok()) << tensors.status();
  EXPECT_EQ(tensors->size(), 1u + 9u * 32 + 2);  // 291, as llama.cpp's Llama-3-8B GGUF
  EXPECT_EQ(tensors->front().dims, (std::vector<int64_t>{4096, 128256}));
  int64_t params = 0;
  for (const SyntheticTensor& t : *tensors) {
    int64_t n = 1;
    for (int64_t d : t.dims) n *= d;
    params += n;
    if (t.name == "blk.31.attn_k.weight") {
      EXPECT_EQ(t.dims, (std::vector<int64_t>{4096, 1024}));
    }
    if (t.name == "blk.31.ffn_down.weight") {
      EXPECT_EQ(t.dims, (std::vector<int64_t>{14336, 4096}));
    }
  }
  EXPECT_EQ(params, 8030261248);  // Llama-3-8B's published parameter count
  const SyntheticModelOptions l1 = SyntheticModelOptions::Llama32_1B();
  EXPECT_EQ(l1.n_layers, 16);
  EXPECT_EQ(l1.hidden, 2048);
  EXPECT_TRUE(l1.tied_embeddings);
  EXPECT_EQ(SyntheticTensorList(l1)->size(), 1u + 9u * 16 + 1);
}

TEST(SyntheticModelTest, RejectsBadOptions) {
  SyntheticModelOptions o = SyntheticModelOptions::Tiny();
  o.vocab_size = MinSyntheticVocab() - 1;
  EXPECT_FALSE(WriteSyntheticModelToBuffer(o).ok());
  o = SyntheticModelOptions::Tiny();
  o.n_kv_heads = 3;
  EXPECT_FALSE(WriteSyntheticModelToBuffer(o).ok());
  o = SyntheticModelOptions::Tiny();
  o.hidden = 48;  // 4 heads of 12, but not a whole Q4_0 block
  o.weight_type = GgmlType::kQ4_0;
  EXPECT_THAT(std::string(WriteSyntheticModelToBuffer(o).status().message()),
              ::testing::HasSubstr("multiples of 32"));
}

TEST(SyntheticModelTest, ArchitecturesWriteTheirTensorsAndMetadata) {
  SyntheticModelOptions o = SyntheticModelOptions::Tiny();
  o.architecture = "qwen2";
  auto f = Load(o);
  ASSERT_NE(f, nullptr);
  auto c = ReadModelConfig(*f);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, "qwen2");
  EXPECT_EQ(c->rope_style, RopeStyle::kNeox);
  EXPECT_TRUE(c->qkv_bias);
  ASSERT_NE(f->FindTensor("blk.1.attn_q.bias"), nullptr);
  EXPECT_EQ(f->FindTensor("blk.1.attn_k.bias")->dims, std::vector<int64_t>{2 * 16});

  o.architecture = "qwen3";
  o.key_length = 32;  // head_dim != hidden / n_heads
  f = Load(o);
  ASSERT_NE(f, nullptr);
  c = ReadModelConfig(*f);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->qk_norm);
  EXPECT_EQ(c->head_dim, 32);
  EXPECT_EQ(f->FindTensor("blk.0.attn_q.weight")->dims, (std::vector<int64_t>{64, 4 * 32}));
  EXPECT_EQ(f->FindTensor("blk.0.attn_k_norm.weight")->dims, std::vector<int64_t>{32});

  o = SyntheticModelOptions::Tiny();
  o.optional_tensors = true;
  o.rope_scaling_factor = 2.f;
  o.context_length = 1024;
  f = Load(o);
  ASSERT_NE(f, nullptr);
  c = ReadModelConfig(*f);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->qkv_bias);
  EXPECT_TRUE(c->rope_freqs);
  EXPECT_EQ(c->rope_freq_scale, 0.5f);
  // llama 3.1's factors for an original context of 1024 / 16: 1 at high frequencies, 8 at low.
  auto factors = f->ReadTensorF32("rope_freqs.weight");
  ASSERT_TRUE(factors.ok()) << factors.status();
  ASSERT_EQ(factors->size(), 8u);
  EXPECT_EQ(factors->front(), 1.f);
  EXPECT_EQ(factors->back(), 8.f);
  EXPECT_TRUE(std::is_sorted(factors->begin(), factors->end()));

  o = SyntheticModelOptions::Tiny();
  o.architecture = "gemma2";
  EXPECT_FALSE(WriteSyntheticModelToBuffer(o).ok());
}

}  // namespace
}  // namespace xkv
