// The real shapes behind the random-weight models of `xkv bench gpu --shape`: the published sizes
// of Llama-3-8B and Llama-3.2-1B, and a clear error for an unknown name.
#include "model/model_shapes.h"

#include "gtest/gtest.h"

namespace xkv {
namespace {

TEST(ModelShapesTest, PublishedSizes) {
  const ModelConfig big = Llama3_8BShape();
  EXPECT_EQ(big.n_layers, 32);
  EXPECT_EQ(big.hidden, 4096);
  EXPECT_EQ(big.ffn, 14336);
  EXPECT_EQ(big.n_heads, 32);
  EXPECT_EQ(big.n_kv_heads, 8);
  EXPECT_EQ(big.head_dim, 128);
  EXPECT_EQ(big.vocab_size, 128256);
  EXPECT_FALSE(big.tied_embeddings);
  // 8.03 B parameters: the published count (embedding and head included).
  const int64_t per_layer = int64_t{4096} * (4096 + 2 * 1024) + int64_t{4096} * 4096 +
                            3 * int64_t{4096} * 14336 + 2 * 4096;
  EXPECT_NEAR((32 * per_layer + 2 * int64_t{128256} * 4096 + 4096) / 1e9, 8.03, 0.01);
  const ModelConfig small = Llama32_1BShape();
  EXPECT_EQ(small.n_layers, 16);
  EXPECT_EQ(small.hidden, 2048);
  EXPECT_EQ(small.ffn, 8192);
  EXPECT_EQ(small.n_heads, 32);
  EXPECT_EQ(small.n_kv_heads, 8);
  EXPECT_EQ(small.head_dim, 64);
  EXPECT_TRUE(small.tied_embeddings);
}

TEST(ModelShapesTest, ByName) {
  auto big = ShapeByName("llama3-8b");
  ASSERT_TRUE(big.ok());
  EXPECT_EQ(big->hidden, 4096);
  auto small = ShapeByName("llama3.2-1b");
  ASSERT_TRUE(small.ok());
  EXPECT_EQ(small->hidden, 2048);
  auto bad = ShapeByName("gpt2");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("llama3-8b"), std::string::npos);
}

}  // namespace
}  // namespace xkv
