// The layer sizes a compaction leaves (architecture.md §3.4): every selection rule keeps exactly
// min(b_l, P) of the P = T - w prefix tokens of layer l plus the w-token window (a prompt of at
// most w tokens is not compacted). The coordinator shrinks its KV ledger to these sizes when it
// queues a compaction, so the next step may use the freed blocks without waiting for the stages'
// answer (issue 13: a compaction does not stall the other requests' steps); the answer must then
// report the same sizes.
#ifndef XKV_COORDINATOR_COMPACTION_SIZES_H_
#define XKV_COORDINATOR_COMPACTION_SIZES_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "xkv/v1/worker.pb.h"

namespace xkv {

// `before`: every layer of the sequence, ordered, each holding the whole `prompt_len`-token prompt;
// `budgets`: kept prefix tokens per layer. `head_budgets` (empty: per layer): [layers][KV heads]
// kept prefix tokens per head, on stages with a table per KV head (each head keeps its own count;
// the layer's tokens are its largest head's, head_tokens each head's). FAILED_PRECONDITION when a
// layer holds another count (the sizes cannot be predicted) or the counts differ.
absl::StatusOr<std::vector<xkv::v1::LayerSize>> CompactedLayerSizes(
    absl::Span<const xkv::v1::LayerSize> before, absl::Span<const int64_t> budgets,
    absl::Span<const std::vector<int64_t>> head_budgets, int64_t prompt_len, int window,
    int block_tokens);

// INTERNAL naming the sequence, the layer and both counts when the stages' answer to a compaction
// differs from the predicted sizes.
absl::Status CheckCompactedSizes(uint64_t seq_id, absl::Span<const xkv::v1::LayerSize> predicted,
                                 absl::Span<const xkv::v1::LayerSize> reported);

}  // namespace xkv

#endif  // XKV_COORDINATOR_COMPACTION_SIZES_H_
