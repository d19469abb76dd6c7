#include "model/llama_weights.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "gtest/gtest.h"
#include "model/gguf.h"
#include "model/llama_model.h"
#include "model/model_config.h"
#include "model/synthetic_model.h"
#include "tests/unit/model/llama_test_util.h"

namespace xkv {
namespace {

std::unique_ptr<GgufFile> Synthetic(GgmlType type, bool tied) {
  SyntheticModelOptions o = SyntheticModelOptions::Tiny();
  o.weight_type = type;
  o.tied_embeddings = tied;
  o.weight_scale = 0.2f;
  auto buf = WriteSyntheticModelToBuffer(o);
  EXPECT_TRUE(buf.ok()) << buf.status();
  auto file = GgufFile::FromBuffer(*buf);
  EXPECT_TRUE(file.ok()) << file.status();
  return std::move(*file);
}

TEST(LlamaWeightsTest, LoadsFusedTensorsAndTiesTheHead) {
  auto file = Synthetic(GgmlType::kF32, /*tied=*/true);
  auto config = ReadModelConfig(*file);
  ASSERT_TRUE(config.ok()) << config.status();
  auto w = LoadLlamaWeights(*file, *config, {});
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->layers.size(), static_cast<size_t>(config->n_layers));
  EXPECT_EQ(w->embedding, w->lm_head);  // one shared buffer
  std::vector<float> want;
  for (const char* t : {"attn_q", "attn_k", "attn_v"}) {
    auto part = file->ReadTensorF32(std::string("blk.1.") + t + ".weight");
    ASSERT_TRUE(part.ok());
    want.insert(want.end(), part->begin(), part->end());
  }
  EXPECT_EQ(w->layer(1).wqkv, want);
  auto up = file->ReadTensorF32("blk.0.ffn_up.weight");
  ASSERT_TRUE(up.ok());
  EXPECT_TRUE(std::equal(up->begin(), up->end(), w->layer(0).w_gate_up.begin() + up->size()));
  // A head-only last stage of a tied model still gets lm_head (from token_embd), no embedding.
  auto last = LoadLlamaWeights(*file, *config, {.layer_begin = 1, .load_embedding = false});
  ASSERT_TRUE(last.ok());
  EXPECT_EQ(last->embedding, nullptr);
  ASSERT_NE(last->lm_head, nullptr);
  EXPECT_EQ(*last->lm_head, *w->lm_head);
  EXPECT_FALSE(LoadLlamaWeights(*file, *config, {.layer_begin = 1, .layer_end = 9}).ok());
}

// A Q4_K_M-style file (Q4_K, with Q6_K attn_v, ffn_down and output): the matrices are the K-quant
// tensors dequantized to fp32 (fused in order), activations multiplied with them round to Q8_K,
// and no kGgml blocks are kept (the bit-exact kernels take Q4_1 / Q8_0 only).
TEST(LlamaWeightsTest, LoadsKQuantMixesDequantized) {
  SyntheticModelOptions o = SyntheticModelOptions::Tiny();
  o.hidden = 256;
  o.ffn = 512;
  o.weight_type = GgmlType::kQ4_K;
  o.type_overrides = {{"attn_v.weight", GgmlType::kQ6_K},
                      {"ffn_down.weight", GgmlType::kQ6_K},
                      {"output.weight", GgmlType::kQ6_K}};
  auto buf = WriteSyntheticModelToBuffer(o);
  ASSERT_TRUE(buf.ok()) << buf.status();
  auto file = GgufFile::FromBuffer(*buf);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->FindTensor("blk.1.attn_q.weight")->type, GgmlType::kQ4_K);
  EXPECT_EQ((*file)->FindTensor("blk.1.attn_v.weight")->type, GgmlType::kQ6_K);
  EXPECT_EQ((*file)->FindTensor("output.weight")->type, GgmlType::kQ6_K);
  auto config = ReadModelConfig(**file);
  ASSERT_TRUE(config.ok()) << config.status();
  auto w = LoadLlamaWeights(**file, *config, {});
  ASSERT_TRUE(w.ok()) << w.status();
  std::vector<float> want;
  for (const char* t : {"attn_q", "attn_k", "attn_v"}) {
    auto part = (*file)->ReadTensorF32(std::string("blk.1.") + t + ".weight");
    ASSERT_TRUE(part.ok());
    want.insert(want.end(), part->begin(), part->end());
  }
  EXPECT_EQ(w->layer(1).wqkv, want);
  auto down = (*file)->ReadTensorF32("blk.0.ffn_down.weight");
  ASSERT_TRUE(down.ok());
  EXPECT_EQ(w->layer(0).w_down, *down);
  auto head = (*file)->ReadTensorF32("output.weight");
  ASSERT_TRUE(head.ok());
  EXPECT_EQ(*w->lm_head, *head);
  float amax = 0;
  for (float v : *down) amax = std::max(amax, std::fabs(v));
  EXPECT_GT(amax, 0.f);
  for (const LlamaLayerWeights& l : w->layers) {
    EXPECT_EQ(l.qkv_rounding, cpu::ActRounding::kQ8KBlocks);
    EXPECT_EQ(l.down_rounding, cpu::ActRounding::kQ8KBlocks);
    // Also kept in their super-blocks for kGgml's exact K-quant products (Q4_K and Q6_K fused).
    EXPECT_TRUE(l.wqkv_q.is_kquant() && l.w_down_q.is_kquant() && l.wqkv_mins.empty());
    EXPECT_EQ(l.wqkv_q.rows(), static_cast<int64_t>(want.size()) / o.hidden);
  }
  EXPECT_EQ(w->lm_head_rounding, cpu::ActRounding::kQ8KBlocks);
  ASSERT_NE(w->lm_head_q, nullptr);
  EXPECT_TRUE(w->lm_head_q->is_kquant());
}

// Stages loaded separately from one file reproduce the whole model (tolerance 1e-5), and the engine
// matches the naive reference on dequantized Q4_1 weights (tolerance 2e-4).
TEST(LlamaWeightsTest, StagesFromFileMatchWholeModelOnQuantizedWeights) {
  auto file = Synthetic(GgmlType::kQ4_1, /*tied=*/false);
  auto config = ReadModelConfig(*file);
  ASSERT_TRUE(config.ok());
  auto whole = LoadLlamaWeights(*file, *config, {});
  auto a = LoadLlamaWeights(*file, *config, {.layer_end = 1, .load_head = false});
  auto b = LoadLlamaWeights(*file, *config, {.layer_begin = 1, .load_embedding = false});
  ASSERT_TRUE(whole.ok() && a.ok() && b.ok()) << whole.status() << a.status() << b.status();
  EXPECT_NE(whole->embedding, whole->lm_head);
  EXPECT_LT(a->Bytes(), whole->Bytes());
  auto whole_w = std::make_shared<LlamaWeights>(std::move(*whole));
  auto m = LlamaModel::Create(whole_w, {});
  auto ma = LlamaModel::Create(std::make_shared<LlamaWeights>(std::move(*a)), {});
  auto mb = LlamaModel::Create(std::make_shared<LlamaWeights>(std::move(*b)), {});
  ASSERT_TRUE(m.ok() && ma.ok() && mb.ok());
  std::vector<int32_t> tokens(13);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int32_t>((i * 37 + 5) % 300);
  auto cache = (*m)->NewCache();
  BatchStep step;
  step.sequences.push_back({cache.get(), 13, 0, false});
  auto logits = (*m)->Forward(tokens, step, /*all_rows=*/true);
  ASSERT_TRUE(logits.ok());
  std::vector<int64_t> positions(13);
  std::iota(positions.begin(), positions.end(), 0);
  const std::vector<double> want = testing::NaiveForward(*whole_w, tokens, positions);
  double diff = 0;
  for (size_t i = 0; i < want.size(); ++i) diff = std::max(diff, std::abs((*logits)[i] - want[i]));
  EXPECT_LT(diff, 2e-4);
  auto ca = (*ma)->NewCache();
  auto cb = (*mb)->NewCache();
  BatchStep sa, sb;
  sa.sequences.push_back({ca.get(), 13, 0, false});
  sb.sequences.push_back({cb.get(), 13, 0, false});
  auto hidden = (*ma)->Embed(tokens);
  ASSERT_TRUE(hidden.ok());
  ASSERT_TRUE((*ma)->RunLayers(0, 1, sa, absl::MakeSpan(*hidden)).ok());
  ASSERT_TRUE((*mb)->RunLayers(1, config->n_layers, sb, absl::MakeSpan(*hidden)).ok());
  auto staged = (*mb)->Logits(*hidden, sb.LastRows());
  ASSERT_TRUE(staged.ok());
  const int64_t v = config->vocab_size;
  for (int64_t i = 0; i < v; ++i) EXPECT_NEAR((*staged)[i], (*logits)[12 * v + i], 1e-5);
}

}  // namespace
}  // namespace xkv
