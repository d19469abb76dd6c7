// How a GPU stage divides its device's memory (architecture.md §5): weights, the step scratch
// sized by --max-batched-tokens, and the paged KV pool from what --gpu-memory-utilization leaves.
// Plain arithmetic (no CUDA): the CUDA engine measures the inputs, these functions decide, and
// CPU tests check them.
//
// The stage's budget is min(utilization x share x total, utilization x free_at_start), where
// `share` is this stage's part of a device that several stages of one process use (1/S for S
// stages on cuda:0 in `xkv serve`), total the device's memory and free_at_start what was free when
// the stage began loading. On a device of its own this is utilization x its free memory (vLLM's
// --gpu-memory-utilization); stages sharing a device get equal parts, whatever order they load in.
#ifndef XKV_MODEL_GPU_MEMORY_BUDGET_H_
#define XKV_MODEL_GPU_MEMORY_BUDGET_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace xkv {

inline constexpr double kDefaultGpuMemoryUtilization = 0.9;

struct GpuMemoryBudget {
  std::string device;                                 // "cuda:0" (messages)
  int64_t total_bytes = 0;                            // the device's memory
  int64_t free_bytes = 0;                             // free when the stage began loading
  double utilization = kDefaultGpuMemoryUtilization;  // (0, 1]
  double share = 1.0;                                 // (0, 1]: this stage's part of the device
  int64_t weight_bytes = 0;                           // the stage's weights on the device
  // Step scratch: fixed + per_token x max_batched_tokens bytes.
  int64_t scratch_fixed_bytes = 0;
  int64_t scratch_per_token_bytes = 0;
  int64_t pool_bytes = 0;     // a KV pool of fixed size (a capacity was asked for), else 0
  int64_t block_bytes = 0;    // one block of the shared KV pool (K and V)
  int64_t min_kv_blocks = 0;  // the pool must hold at least this many (one step's blocks)

  // Bytes the stage may use in all.
  int64_t budget_bytes() const;
};

// INVALID_ARGUMENT naming the value unless utilization and share are in (0, 1].
absl::Status ValidateGpuMemoryUtilization(double utilization);

// The largest --max-batched-tokens whose scratch fits next to the weights, pool_bytes and a pool
// of min_kv_blocks_per_token x tokens blocks (0 when not even one token fits).
int64_t MaxBatchedTokens(const GpuMemoryBudget& b, double min_kv_blocks_per_token);

// RESOURCE_EXHAUSTED, one line naming the value, the limit and the memory figures, when the
// scratch of max_batched_tokens (plus the pool's minimum) does not fit the budget.
absl::Status CheckMaxBatchedTokens(const GpuMemoryBudget& b, int64_t max_batched_tokens,
                                   double min_kv_blocks_per_token);

// Blocks of the stage's KV pool: what the budget leaves after `used_bytes` (weights, scratch and
// everything else the stage allocated, measured), in whole blocks. RESOURCE_EXHAUSTED when fewer
// than b.min_kv_blocks remain. The one place that sizes a GPU stage's pool.
absl::StatusOr<int64_t> KvPoolBlocks(const GpuMemoryBudget& b, int64_t used_bytes);

// How much device memory the stage has taken before its pool, from `measured` (how far
// the device's free memory fell since the stage began loading) and `tracked` (the bytes of the
// stage's own allocations: weights, scratch, the upload buffer, cuBLAS's workspace). The
// measurement also sees what the driver rounds and keeps, but equally what another process or
// stage on the same device allocated or freed meanwhile (two workers loading on one GPU at once),
// so it is clamped to [tracked, tracked + kUntrackedDeviceBytes]: alone on its device a stage gets
// the measured figure as before, and a neighbour's load no longer starves its pool.
inline constexpr int64_t kUntrackedDeviceBytes = int64_t{256} << 20;
int64_t StageUsedBytes(int64_t measured, int64_t tracked);

// "12.34 GiB" (messages and the start-up report).
std::string GiB(int64_t bytes);

}  // namespace xkv

#endif  // XKV_MODEL_GPU_MEMORY_BUDGET_H_
