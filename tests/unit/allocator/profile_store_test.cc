#include "allocator/profile_store.h"

#include <cmath>
#include <vector>

#include "gtest/gtest.h"

namespace xkv {
namespace {

std::unique_ptr<ProfileStore> Make(double rate, uint64_t seed = 1, int64_t window = 0) {
  auto store = ProfileStore::Create({rate, seed, window});
  EXPECT_TRUE(store.ok()) << store.status();
  return std::move(store).value();
}

TEST(ProfileStoreTest, RejectsBadRates) {
  for (double bad : {0.0, -0.5, 1.5, std::nan("")}) {
    auto s = ProfileStore::Create({bad});
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(s.status().message().find("must be in (0, 1]"), std::string::npos);
  }
  EXPECT_EQ(ProfileStore::Create({0.5, 0, -1}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ProfileStoreTest, SamplingIsSeededBernoulli) {
  auto store = Make(0.25, 7);
  EXPECT_TRUE(store->ShouldProfile(12345));  // no samples yet
  ASSERT_TRUE(store->AddSample(std::vector<int64_t>{1, 2}, 10).ok());
  int hits = 0;
  for (uint64_t id = 0; id < 20000; ++id) hits += store->ShouldProfile(id);
  EXPECT_NEAR(hits / 20000.0, 0.25, 0.015);
  hits = 0;  // a request's own rate (sampled:ρ per request) overrides the store's
  for (uint64_t id = 0; id < 20000; ++id) hits += store->ShouldProfile(id, 0.75);
  EXPECT_NEAR(hits / 20000.0, 0.75, 0.015);
  auto again = Make(0.25, 7);
  auto other_seed = Make(0.25, 8);
  ASSERT_TRUE(again->AddSample(std::vector<int64_t>{1, 2}, 10).ok());
  ASSERT_TRUE(other_seed->AddSample(std::vector<int64_t>{1, 2}, 10).ok());
  int same = 0, differ = 0;
  for (uint64_t id = 0; id < 1000; ++id) {
    same += store->ShouldProfile(id) == again->ShouldProfile(id);
    differ += store->ShouldProfile(id) != other_seed->ShouldProfile(id);
  }
  EXPECT_EQ(same, 1000);
  EXPECT_GT(differ, 100);
  auto always = Make(1.0);
  ASSERT_TRUE(always->AddSample(std::vector<int64_t>{1}, 10).ok());
  for (uint64_t id = 0; id < 1000; ++id) EXPECT_TRUE(always->ShouldProfile(id));
}

TEST(ProfileStoreTest, MeanOfFractionsTransfersAcrossLengths) {
  auto store = Make(0.5);
  EXPECT_EQ(store->BudgetsFor(100).status().code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(store->AddSample(std::vector<int64_t>{50, 10}, 100).ok());
  ASSERT_TRUE(store->AddSample(std::vector<int64_t>{100, 0}, 200).ok());
  EXPECT_EQ(store->num_samples(), 2);
  const std::vector<double> mean = store->MeanFractions();
  ASSERT_EQ(mean.size(), 2u);
  EXPECT_NEAR(mean[0], 0.5, 1e-15);
  EXPECT_NEAR(mean[1], 0.05, 1e-15);
  EXPECT_EQ(*store->BudgetsFor(1000, 550), (std::vector<int64_t>{500, 50}));
  EXPECT_EQ(*store->BudgetsFor(1000), (std::vector<int64_t>{500, 50}));
  EXPECT_EQ(*store->BudgetsFor(1000, 1100), (std::vector<int64_t>{1000, 100}));
  // Total above what the fractions ask for: layer 0 clamps at P, the rest goes to layer 1.
  EXPECT_EQ(*store->BudgetsFor(100, 150), (std::vector<int64_t>{100, 50}));
  EXPECT_EQ(*store->BudgetsFor(7, 3), (std::vector<int64_t>{3, 0}));
  EXPECT_EQ(store->BudgetsFor(100, 201).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store->BudgetsFor(100, -1).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ProfileStoreTest, WindowedMeanFollowsDrift) {
  auto store = Make(0.5, 1, 2);
  for (int64_t b : {0, 10, 10}) ASSERT_TRUE(store->AddSample(std::vector<int64_t>{b}, 10).ok());
  EXPECT_NEAR(store->MeanFractions()[0], 0.75, 1e-15);  // 0 -> 0.5 -> 0.75
}

TEST(ProfileStoreTest, RejectsBadSamples) {
  auto store = Make(0.5);
  EXPECT_EQ(store->AddSample(std::vector<int64_t>{11}, 10).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store->AddSample(std::vector<int64_t>{1}, 0).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store->AddSample({}, 10).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(store->AddSample(std::vector<int64_t>{1, 2}, 10).ok());
  EXPECT_EQ(store->AddSample(std::vector<int64_t>{1, 2, 3}, 10).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store->num_samples(), 1);
}

}  // namespace
}  // namespace xkv
