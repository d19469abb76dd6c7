#include "kernels/cpu/embedding.h"

#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace xkv::cpu {
namespace {

TEST(EmbeddingTest, GathersRowsExactly) {
  const int64_t vocab = 37, dim = 13;
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-2.f, 2.f);
  std::vector<float> table(vocab * dim);
  for (float& x : table) x = u(rng);
  const std::vector<int32_t> tokens = {5, 0, 36, 5, 17};
  std::vector<float> out(tokens.size() * dim, -1.f);
  ASSERT_TRUE(
      LaunchEmbedding(table.data(), vocab, dim, tokens.data(), tokens.size(), out.data()).ok());
  for (size_t i = 0; i < tokens.size(); ++i) {
    for (int64_t d = 0; d < dim; ++d) {
      EXPECT_EQ(out[i * dim + d], table[tokens[i] * dim + d]) << i << "," << d;
    }
  }
}

TEST(EmbeddingTest, RejectsOutOfRangeToken) {
  std::vector<float> table(4 * 2, 1.f), out(2 * 2);
  const std::vector<int32_t> bad = {1, 4};
  const absl::Status st = LaunchEmbedding(table.data(), 4, 2, bad.data(), 2, out.data());
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  const std::vector<int32_t> negative = {-1};
  EXPECT_FALSE(LaunchEmbedding(table.data(), 4, 2, negative.data(), 1, out.data()).ok());
}

}  // namespace
}  // namespace xkv::cpu
