#include "model/kv_cache.h"

#include <vector>

#include "gtest/gtest.h"

namespace xkv {
namespace {

using Kept = std::vector<std::vector<int32_t>>;

// Token t, head h, dim d of K is 1000 t + 10 h + d (V is its negative), so slots are traceable.
std::vector<float> Rows(int64_t t0, int64_t n, int heads, int hd, float sign, int64_t stride) {
  std::vector<float> r(n * stride, -7.f);
  for (int64_t t = 0; t < n; ++t) {
    for (int h = 0; h < heads; ++h) {
      for (int d = 0; d < hd; ++d)
        r[t * stride + h * hd + d] = sign * (1000 * (t0 + t) + 10 * h + d);
    }
  }
  return r;
}

TEST(KvCacheTest, AppendLayoutPerLayerLengthsAndCompact) {
  const int heads = 3, hd = 4;
  KvCache cache(2, 5, heads, hd);         // layers 2, 3, 4
  const int64_t stride = heads * hd + 5;  // as a fused QKV row would be
  for (int layer = 2; layer < 5; ++layer) {
    auto k = Rows(0, 10, heads, hd, 1.f, stride), v = Rows(0, 10, heads, hd, -1.f, stride);
    ASSERT_TRUE(cache.Append(layer, k.data(), v.data(), 10, stride).ok());
  }
  auto k1 = Rows(10, 1, heads, hd, 1.f, stride), v1 = Rows(10, 1, heads, hd, -1.f, stride);
  ASSERT_TRUE(cache.Append(3, k1.data(), v1.data(), 1, stride).ok());
  EXPECT_EQ(cache.length(2), 10);
  EXPECT_EQ(cache.length(3), 11);
  for (int h = 0; h < heads; ++h) {
    for (int t = 0; t < 11; ++t) {
      EXPECT_EQ(cache.k(3)[h * cache.head_stride(3) + t * hd + 1], 1000 * t + 10 * h + 1);
      EXPECT_EQ(cache.v(3)[h * cache.head_stride(3) + t * hd + 2], -(1000 * t + 10 * h + 2));
    }
  }
  const int64_t before = cache.BytesHeld(2);
  const std::vector<std::vector<int32_t>> kept = {{0, 4, 9}, {1, 2, 3}, {5, 8, 9}};
  ASSERT_TRUE(cache.Compact(2, kept).ok());
  EXPECT_EQ(cache.length(2), 3);
  EXPECT_EQ(cache.length(4), 10);
  EXPECT_EQ(cache.BytesHeld(2), 2 * 3 * heads * hd * 4);
  EXPECT_LT(cache.BytesHeld(2), before);
  for (int h = 0; h < heads; ++h) {
    for (int i = 0; i < 3; ++i) {
      EXPECT_EQ(cache.k(2)[h * cache.head_stride(2) + i * hd], 1000 * kept[h][i] + 10 * h);
      EXPECT_EQ(cache.v(2)[h * cache.head_stride(2) + i * hd + 3],
                -(1000 * kept[h][i] + 10 * h + 3));
    }
  }
  // Appending after compaction goes after the kept slots.
  ASSERT_TRUE(cache.Append(2, k1.data(), v1.data(), 1, stride).ok());
  EXPECT_EQ(cache.length(2), 4);
  EXPECT_EQ(cache.k(2)[cache.head_stride(2) + 3 * hd], 1000 * 10 + 10);
  EXPECT_EQ(cache.BytesHeld(), cache.BytesHeld(2) + cache.BytesHeld(3) + cache.BytesHeld(4));
}

TEST(KvCacheTest, CompactRejectsBadSlots) {
  KvCache cache(0, 1, 2, 2);
  std::vector<float> k(5 * 4, 1.f);
  ASSERT_TRUE(cache.Append(0, k.data(), k.data(), 5, 4).ok());
  EXPECT_FALSE(cache.Compact(0, Kept{{0, 1}}).ok());          // one list per head
  EXPECT_FALSE(cache.Compact(0, Kept{{1, 0}, {2, 3}}).ok());  // increasing
  EXPECT_FALSE(cache.Compact(0, Kept{{0, 5}, {2, 3}}).ok());  // inside the length
  EXPECT_FALSE(cache.Compact(1, Kept{{0}, {0}}).ok());        // layer outside the range
  EXPECT_EQ(cache.length(0), 5);
  cache.Clear();
  EXPECT_EQ(cache.BytesHeld(), 0);
}

TEST(KvCacheTest, PerHeadCountsFreeTheirBytesAndAppendPerHead) {
  const int heads = 3, hd = 4;
  KvCache cache(0, 1, heads, hd);
  const int64_t stride = heads * hd;
  auto k = Rows(0, 12, heads, hd, 1.f, stride), v = Rows(0, 12, heads, hd, -1.f, stride);
  ASSERT_TRUE(cache.Append(0, k.data(), v.data(), 12, stride).ok());
  EXPECT_TRUE(cache.uniform(0));
  const std::vector<std::vector<int32_t>> kept = {{0, 11}, {1, 2, 3, 4, 5, 11}, {}};
  ASSERT_TRUE(cache.Compact(0, kept).ok());
  EXPECT_FALSE(cache.uniform(0));
  EXPECT_EQ(cache.length(0), 6);  // the largest head
  EXPECT_EQ(cache.head_rows(0), 8);
  EXPECT_EQ(cache.BytesHeld(0), 2 * 8 * hd * 4);  // exactly the kept rows: the rest is freed
  for (int h = 0; h < heads; ++h) {
    ASSERT_EQ(cache.head_length(0, h), static_cast<int64_t>(kept[h].size()));
    for (size_t i = 0; i < kept[h].size(); ++i) {
      EXPECT_EQ(cache.k_head(0, h)[i * hd + 1], 1000 * kept[h][i] + 10 * h + 1);
      EXPECT_EQ(cache.v_head(0, h)[i * hd + 2], -(1000 * kept[h][i] + 10 * h + 2));
    }
  }
  // A new token lands after each head's own rows; the kept rows stay in place.
  auto k1 = Rows(20, 2, heads, hd, 1.f, stride), v1 = Rows(20, 2, heads, hd, -1.f, stride);
  ASSERT_TRUE(cache.Append(0, k1.data(), v1.data(), 2, stride).ok());
  for (int h = 0; h < heads; ++h) {
    const int64_t n = kept[h].size();
    ASSERT_EQ(cache.head_length(0, h), n + 2);
    for (int64_t i = 0; i < n; ++i)
      EXPECT_EQ(cache.k_head(0, h)[i * hd], 1000 * kept[h][i] + 10 * h);
    EXPECT_EQ(cache.k_head(0, h)[n * hd], 1000 * 20 + 10 * h);
    EXPECT_EQ(cache.v_head(0, h)[(n + 1) * hd + 3], -(1000 * 21 + 10 * h + 3));
  }
  EXPECT_EQ(cache.length(0), 8);
  // Slots are checked against each head's own length.
  EXPECT_FALSE(cache.Compact(0, Kept{{0, 1}, {0}, {0, 2}}).ok());  // head 2 holds 2
  EXPECT_EQ(cache.head_length(0, 0), 4);
  // Equal counts make the layer uniform again.
  ASSERT_TRUE(cache.Compact(0, Kept{{0, 3}, {0, 7}, {0, 1}}).ok());
  EXPECT_TRUE(cache.uniform(0));
  EXPECT_EQ(cache.head_stride(0), 2 * hd);
  EXPECT_EQ(cache.k(0)[cache.head_stride(0) + hd], 1000 * 21 + 10);
}

// Async decode's undo (StageEngine::UndoDecode): the newest slots of every head go, per-head
// counts included; the next Append writes where they were; too many is refused and changes nothing.
TEST(KvCacheTest, DropNewestUndoesAnAppend) {
  const int heads = 2, hd = 4;
  const int64_t stride = heads * hd;
  KvCache cache(0, 1, heads, hd);
  auto k = Rows(0, 6, heads, hd, 1.f, stride), v = Rows(0, 6, heads, hd, -1.f, stride);
  ASSERT_TRUE(cache.Append(0, k.data(), v.data(), 6, stride).ok());
  ASSERT_TRUE(cache.Compact(0, Kept{{0, 2, 4, 5}, {1, 5}}).ok());  // heads hold 4 and 2
  auto k1 = Rows(6, 1, heads, hd, 1.f, stride), v1 = Rows(6, 1, heads, hd, -1.f, stride);
  ASSERT_TRUE(cache.Append(0, k1.data(), v1.data(), 1, stride).ok());
  ASSERT_TRUE(cache.DropNewest(0, 1).ok());
  EXPECT_EQ(cache.head_length(0, 0), 4);
  EXPECT_EQ(cache.head_length(0, 1), 2);
  EXPECT_EQ(cache.length(0), 4);
  auto k2 = Rows(7, 1, heads, hd, 1.f, stride), v2 = Rows(7, 1, heads, hd, -1.f, stride);
  ASSERT_TRUE(cache.Append(0, k2.data(), v2.data(), 1, stride).ok());
  EXPECT_EQ(cache.k_head(0, 0)[4 * hd], 7000);
  EXPECT_EQ(cache.k_head(0, 1)[2 * hd], 7010);
  EXPECT_EQ(cache.k_head(0, 1)[1 * hd], 5010);  // the kept slots stay
  EXPECT_EQ(cache.DropNewest(0, 4).code(), absl::StatusCode::kInvalidArgument);  // head 1 holds 3
  EXPECT_EQ(cache.head_length(0, 0), 5);
  EXPECT_EQ(cache.head_length(0, 1), 3);
  EXPECT_EQ(cache.DropNewest(1, 1).code(), absl::StatusCode::kInvalidArgument);  // no layer 1
}

}  // namespace
}  // namespace xkv
