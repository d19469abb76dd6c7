#include <cmath>
#include <vector>

#include "gtest/gtest.h"
#include "model/importance_collector.h"
#include "model/kv_allocation.h"
#include "model/kv_cache.h"
#include "tests/unit/model/llama_test_util.h"

namespace xkv {
namespace {

TEST(WeightByValueNormTest, MultipliesEachScoreByItsValueNorm) {
  const ModelConfig c = testing::TinyConfig();  // 2 KV heads, head_dim 8
  KvCache cache(0, c.n_layers, c.n_kv_heads, c.head_dim);
  const int64_t T = 6, kv = int64_t{c.n_kv_heads} * c.head_dim;
  std::vector<float> k(T * kv, 0.0f), v(T * kv, 0.0f);
  for (int64_t t = 0; t < T; ++t) {
    for (int g = 0; g < c.n_kv_heads; ++g) v[t * kv + g * c.head_dim] = float(t + 1) * (g + 1);
  }
  for (int l = 0; l < c.n_layers; ++l) ASSERT_TRUE(cache.Append(l, k.data(), v.data(), T, kv).ok());
  ImportanceOptions o;
  o.window = 2;
  CollectedScores s = MakeCollectedScores(c, 0, c.n_layers, T, o);  // prefix 4
  for (auto& layer : s.layers) layer.assign(c.n_kv_heads * 4, 0.5f);
  ASSERT_TRUE(WeightByValueNorm(cache, &s).ok());
  for (int l = 0; l < c.n_layers; ++l) {
    for (int g = 0; g < c.n_kv_heads; ++g) {
      for (int j = 0; j < 4; ++j) {
        EXPECT_FLOAT_EQ(s.layer(l)[g * 4 + j], 0.5f * (j + 1) * (g + 1));
      }
    }
  }
  // A cache that does not hold the scored prompt is refused.
  KvCache empty(0, c.n_layers, c.n_kv_heads, c.head_dim);
  EXPECT_EQ(WeightByValueNorm(empty, &s).code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace xkv
