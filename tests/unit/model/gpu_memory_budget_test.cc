// The GPU stage's memory arithmetic (model/gpu_memory_budget.h): budget, the largest step the
// device holds, the refusal above it, and the KV pool from what is left.
#include "model/gpu_memory_budget.h"

#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace xkv {
namespace {

using ::testing::HasSubstr;

constexpr int64_t kGiB = int64_t{1} << 30;

GpuMemoryBudget Budget() {
  GpuMemoryBudget b;
  b.device = "cuda:0";
  b.total_bytes = 80 * kGiB;
  b.free_bytes = 80 * kGiB;
  b.utilization = 0.5;
  b.weight_bytes = 2 * kGiB;
  b.scratch_fixed_bytes = 1 * kGiB;
  b.scratch_per_token_bytes = 1 << 20;  // 1 MiB per batched token
  b.block_bytes = 1 << 16;
  b.min_kv_blocks = 100;
  return b;
}

TEST(GpuMemoryBudget, UsedBytesAreMeasuredWithinWhatTheStageAllocated) {
  const int64_t tracked = 3 * kGiB;
  // Alone on the device: the measurement (the driver's rounding and context included) counts.
  EXPECT_EQ(StageUsedBytes(tracked + (100 << 20), tracked), tracked + (100 << 20));
  EXPECT_EQ(StageUsedBytes(tracked, tracked), tracked);
  // Another worker allocated 30 GiB on the same device meanwhile: not this stage's.
  EXPECT_EQ(StageUsedBytes(tracked + 30 * kGiB, tracked), tracked + kUntrackedDeviceBytes);
  // Another one freed memory meanwhile: the stage still holds what it allocated.
  EXPECT_EQ(StageUsedBytes(1 * kGiB, tracked), tracked);
  // The pool from it: 40 GiB budget less 3.25 GiB, not 40 less 33.
  GpuMemoryBudget b = Budget();
  absl::StatusOr<int64_t> blocks = KvPoolBlocks(b, StageUsedBytes(tracked + 30 * kGiB, tracked));
  ASSERT_TRUE(blocks.ok()) << blocks.status();
  EXPECT_EQ(*blocks, (40 * kGiB - tracked - kUntrackedDeviceBytes) / b.block_bytes);
}

TEST(GpuMemoryBudget, BudgetIsTheUtilizationOfFreeMemoryAndSharesSplitIt) {
  GpuMemoryBudget b = Budget();
  EXPECT_EQ(b.budget_bytes(), 40 * kGiB);
  b.free_bytes = 20 * kGiB;  // someone else holds 60 GiB
  EXPECT_EQ(b.budget_bytes(), 10 * kGiB);
  b = Budget();
  b.share = 0.5;  // the second of two stages on one device: the first took its part already
  b.free_bytes = 60 * kGiB;
  EXPECT_EQ(b.budget_bytes(), 20 * kGiB);
}

TEST(GpuMemoryBudget, MaxBatchedTokensIsWhatTheScratchLeaves) {
  const GpuMemoryBudget b = Budget();
  // (40 - 2 - 1) GiB of room, 1 MiB + 2 blocks of 64 KiB per token.
  const int64_t limit = MaxBatchedTokens(b, 2.0);
  EXPECT_EQ(limit, (37 * kGiB) / ((1 << 20) + 2 * (1 << 16)));
  EXPECT_TRUE(CheckMaxBatchedTokens(b, limit, 2.0).ok());
  const absl::Status over = CheckMaxBatchedTokens(b, limit + 1, 2.0);
  EXPECT_EQ(over.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(over.message(), HasSubstr(absl::StrCat("--max-batched-tokens ", limit + 1)));
  EXPECT_THAT(over.message(), HasSubstr(absl::StrCat("at most ", limit, " tokens")));
  EXPECT_THAT(over.message(), HasSubstr("--gpu-memory-utilization 0.5"));
  EXPECT_EQ(std::string(over.message()).find('\n'), std::string::npos);
  EXPECT_FALSE(CheckMaxBatchedTokens(b, 0, 2.0).ok());
  GpuMemoryBudget fixed_pool = b;  // a pool of 10 GiB asked for: 10 GiB less room
  fixed_pool.pool_bytes = 10 * kGiB;
  EXPECT_EQ(MaxBatchedTokens(fixed_pool, 0.0), (27 * kGiB) / (1 << 20));
  EXPECT_THAT(CheckMaxBatchedTokens(fixed_pool, 1 << 20, 0.0).message(),
              HasSubstr("KV pool 10.00 GiB"));
  GpuMemoryBudget tiny = b;
  tiny.free_bytes = kGiB;  // not even the weights fit
  EXPECT_EQ(MaxBatchedTokens(tiny, 2.0), 0);
}

TEST(GpuMemoryBudget, KvPoolGetsWhatWeightsAndScratchLeave) {
  const GpuMemoryBudget b = Budget();
  absl::StatusOr<int64_t> blocks = KvPoolBlocks(b, 4 * kGiB);
  ASSERT_TRUE(blocks.ok()) << blocks.status();
  EXPECT_EQ(*blocks, (36 * kGiB) / (1 << 16));
  const absl::Status none = KvPoolBlocks(b, 40 * kGiB - 99 * (1 << 16)).status();
  EXPECT_EQ(none.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(none.message(), HasSubstr("at least 100 blocks"));
}

TEST(GpuMemoryBudget, UtilizationOutsideTheRangeIsRefused) {
  EXPECT_TRUE(ValidateGpuMemoryUtilization(0.9).ok());
  EXPECT_TRUE(ValidateGpuMemoryUtilization(1.0).ok());
  for (double bad : {0.0, -0.1, 1.01, std::nan("")}) {
    const absl::Status s = ValidateGpuMemoryUtilization(bad);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(s.message(), HasSubstr("--gpu-memory-utilization must be in (0, 1]"));
  }
}

}  // namespace
}  // namespace xkv
