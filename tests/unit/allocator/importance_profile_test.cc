#include "allocator/importance_profile.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace xkv {
namespace {

TEST(ImportanceProfileTest, BuildsSortedScoresGainsAndRetention) {
  // heads = 2, P = 4.
  const std::vector<float> scores = {0.1f, 0.4f, 0.0f, 0.5f,   // head 0
                                     0.3f, 0.3f, 0.2f, 0.2f};  // head 1
  auto p = BuildLayerProfile(scores, 2, 4);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_NEAR(p->total_mass, 2.0, 1e-7);
  EXPECT_EQ(p->sorted_scores, (std::vector<float>{0.5f, 0.4f, 0.1f, 0.0f, 0.3f, 0.3f, 0.2f, 0.2f}));
  const std::vector<double> want_gain = {0.8 / 2, 0.7 / 2, 0.3 / 2, 0.2 / 2};
  ASSERT_EQ(p->gain.size(), 4u);
  ASSERT_EQ(p->retention.size(), 5u);
  for (int k = 0; k < 4; ++k) EXPECT_NEAR(p->gain[k], want_gain[k], 1e-7);
  EXPECT_EQ(p->retention[0], 0.0);
  EXPECT_NEAR(p->retention[2], 0.75, 1e-7);
  EXPECT_NEAR(p->retention[4], 1.0, 1e-12);
}

TEST(ImportanceProfileTest, RandomProfilesAreMonotoneAndEndAtOne) {
  std::mt19937 rng(3);
  std::exponential_distribution<float> expo(3.0f);
  for (int trial = 0; trial < 50; ++trial) {
    const int heads = 1 + trial % 4;
    const int64_t P = 1 + trial * 7;
    std::vector<float> scores(heads * P);
    for (float& s : scores) s = expo(rng);
    auto p = BuildLayerProfile(scores, heads, P);
    ASSERT_TRUE(p.ok());
    for (int64_t k = 1; k < P; ++k) EXPECT_LE(p->gain[k], p->gain[k - 1]);
    for (int64_t b = 1; b <= P; ++b) EXPECT_GE(p->retention[b], p->retention[b - 1]);
    EXPECT_NEAR(p->retention[P], 1.0, 1e-9);
  }
}

TEST(ImportanceProfileTest, ZeroMassMeansNothingToLose) {
  const std::vector<float> scores(6, 0.0f);
  auto p = BuildLayerProfile(scores, 2, 3);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->total_mass, 0.0);
  EXPECT_EQ(p->gain, (std::vector<double>{0, 0, 0}));
  EXPECT_EQ(p->retention, (std::vector<double>{1, 1, 1, 1}));
}

TEST(ImportanceProfileTest, EmptyPrefix) {
  auto p = BuildLayerProfile({}, 3, 0);
  ASSERT_TRUE(p.ok());
  EXPECT_TRUE(p->gain.empty());
  EXPECT_EQ(p->retention, (std::vector<double>{1.0}));
}

TEST(ImportanceProfileTest, RejectsBadScores) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(BuildLayerProfile(std::vector<float>{0.1f, -0.2f}, 1, 2).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(BuildLayerProfile(std::vector<float>{0.1f, nan}, 1, 2).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(BuildLayerProfile(std::vector<float>{0.1f, 0.2f}, 1, 3).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(BuildLayerProfile(std::vector<float>{}, 0, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ImportanceProfileTest, FromGainsValidatesMonotonicity) {
  auto p = LayerProfileFromGains({0.5, 0.3, 0.2});
  ASSERT_TRUE(p.ok());
  EXPECT_NEAR(p->retention[3], 1.0, 1e-15);
  EXPECT_EQ(LayerProfileFromGains({0.2, 0.3}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(LayerProfileFromGains({0.2, -0.1}).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace xkv

namespace xkv {
namespace {

// Long rows take the radix-sort path: the same order as std::sort, ties and zeros included.
TEST(ImportanceProfileTest, LongRowsSortLikeStdSort) {
  std::mt19937 rng(9);
  for (int64_t P : {511, 512, 5000, 20011}) {
    const int heads = 3;
    std::vector<float> s(heads * P);
    std::exponential_distribution<float> e(2.0f);
    for (size_t i = 0; i < s.size(); ++i) {
      s[i] = i % 7 == 0 ? 0.0f : (i % 5 == 0 ? -0.0f : e(rng));
      if (i % 11 == 0) s[i] = 0.25f;  // many exact ties
    }
    absl::StatusOr<LayerProfile> p = BuildLayerProfile(s, heads, P);
    ASSERT_TRUE(p.ok()) << p.status();
    for (int h = 0; h < heads; ++h) {
      std::vector<float> want(s.begin() + h * P, s.begin() + (h + 1) * P);
      for (float& x : want) x += 0.0f;
      std::sort(want.begin(), want.end(), std::greater<float>());
      const std::vector<float> got(p->sorted_scores.begin() + h * P,
                                   p->sorted_scores.begin() + (h + 1) * P);
      ASSERT_EQ(got, want) << "P " << P << " head " << h;
    }
  }
}

}  // namespace
}  // namespace xkv
