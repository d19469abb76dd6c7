#include "model/gpu_memory_budget.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace xkv {

int64_t GpuMemoryBudget::budget_bytes() const {
  const double of_total = utilization * share * static_cast<double>(total_bytes);
  const double of_free = utilization * static_cast<double>(free_bytes);
  return static_cast<int64_t>(std::max(0.0, std::min(of_total, of_free)));
}

absl::Status ValidateGpuMemoryUtilization(double utilization) {
  if (!(utilization > 0.0 && utilization <= 1.0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--gpu-memory-utilization must be in (0, 1] (a fraction of the device's free memory), got ",
        utilization));
  }
  return absl::OkStatus();
}

std::string GiB(int64_t bytes) {
  return absl::StrFormat("%.2f GiB", static_cast<double>(bytes) / (1 << 30));
}

int64_t MaxBatchedTokens(const GpuMemoryBudget& b, double min_kv_blocks_per_token) {
  const double left =
      static_cast<double>(b.budget_bytes() - b.weight_bytes - b.scratch_fixed_bytes - b.pool_bytes);
  const double per_token = static_cast<double>(b.scratch_per_token_bytes) +
                           min_kv_blocks_per_token * static_cast<double>(b.block_bytes);
  if (left <= 0 || per_token <= 0) return 0;
  return static_cast<int64_t>(std::floor(left / per_token));
}

absl::Status CheckMaxBatchedTokens(const GpuMemoryBudget& b, int64_t max_batched_tokens,
                                   double min_kv_blocks_per_token) {
  const int64_t limit = MaxBatchedTokens(b, min_kv_blocks_per_token);
  if (max_batched_tokens >= 1 && max_batched_tokens <= limit) return absl::OkStatus();
  const double scratch = static_cast<double>(b.scratch_fixed_bytes) +
                         static_cast<double>(b.scratch_per_token_bytes) * max_batched_tokens;
  return absl::ResourceExhaustedError(
      absl::StrCat(b.device, ": --max-batched-tokens ", max_batched_tokens,
                   " is above what the device holds: at most ", limit, " tokens (",
                   GiB(static_cast<int64_t>(scratch)), " of step scratch asked; budget ",
                   GiB(b.budget_bytes()), " = --gpu-memory-utilization ", b.utilization,
                   b.share < 1.0 ? absl::StrCat(" x share ", b.share) : "", " of ",
                   GiB(b.free_bytes), " free, weights ", GiB(b.weight_bytes),
                   b.pool_bytes > 0 ? absl::StrCat(", KV pool ", GiB(b.pool_bytes)) : "", ")"));
}

int64_t StageUsedBytes(int64_t measured, int64_t tracked) {
  return std::clamp(measured, tracked, tracked + kUntrackedDeviceBytes);
}

absl::StatusOr<int64_t> KvPoolBlocks(const GpuMemoryBudget& b, int64_t used_bytes) {
  const int64_t left = b.budget_bytes() - used_bytes;
  const int64_t blocks = b.block_bytes > 0 && left > 0 ? left / b.block_bytes : 0;
  if (blocks < std::max<int64_t>(b.min_kv_blocks, 1)) {
    return absl::ResourceExhaustedError(
        absl::StrCat(b.device, ": no room for the KV pool: the budget of ", GiB(b.budget_bytes()),
                     " (--gpu-memory-utilization ", b.utilization, " of ", GiB(b.free_bytes),
                     " free) leaves ", GiB(std::max<int64_t>(left, 0)), " after ", GiB(used_bytes),
                     " of weights and scratch; the pool needs at least ",
                     std::max<int64_t>(b.min_kv_blocks, 1), " blocks of ", b.block_bytes,
                     " bytes (raise --gpu-memory-utilization or lower "
                     "--max-batched-tokens)"));
  }
  return blocks;
}

}  // namespace xkv
