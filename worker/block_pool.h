// Paged KV accounting for one stage (architecture.md §5): per layer a pool of fixed-size blocks
// (block_tokens tokens × n_kv_heads × head_dim, K and V), per sequence per layer a block table.
// A sequence whose layer holds t tokens owns exactly ceil(t / block_tokens) blocks of that layer.
//
// The pool is the admission and accounting truth; the KvCache keeps the tensors. Changes are
// plan-then-commit: Plan() computes what a set of new token counts would need and answers
// RESOURCE_EXHAUSTED (naming the layer) when some layer lacks free blocks — nothing changes;
// Commit() applies a plan made against the current state (FAILED_PRECONDITION if the pool changed
// since). Shrinking (compaction) always fits. Not thread-safe: the stage serialises its calls.
#ifndef XKV_WORKER_BLOCK_POOL_H_
#define XKV_WORKER_BLOCK_POOL_H_

#include <cstdint>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace xkv {

struct BlockPoolOptions {
  int layer_begin = 0;  // model index of the first layer
  // [layer - layer_begin]: blocks in that layer's pool (>= 0). Its size is the layer count (>= 1).
  std::vector<int64_t> capacity_blocks;
  int block_tokens = 16;    // >= 1
  int64_t block_bytes = 0;  // bytes of one block of one layer (K and V), for reporting
};

// One entry of a plan: layer `layer` of sequence `seq_id` should hold `tokens` tokens.
struct BlockChange {
  uint64_t seq_id = 0;
  int layer = 0;       // model layer index
  int64_t tokens = 0;  // >= 0; 0 frees the layer's blocks
};

struct BlockPlan {
  struct Entry {
    uint64_t seq_id;
    int layer;
    int64_t tokens;
    int64_t blocks;  // ceil(tokens / block_tokens)
  };
  std::vector<Entry> entries;
  std::vector<int64_t> delta_blocks;  // [layer - layer_begin]: net change of used blocks
  uint64_t version = 0;               // pool version the plan was made against
};

class BlockPool {
 public:
  // INVALID_ARGUMENT for no layers, negative capacity or block_tokens < 1.
  static absl::StatusOr<BlockPool> Create(const BlockPoolOptions& options);

  int layer_begin() const { return options_.layer_begin; }
  int layer_end() const { return options_.layer_begin + num_layers(); }
  int num_layers() const { return static_cast<int>(options_.capacity_blocks.size()); }
  int block_tokens() const { return options_.block_tokens; }
  int64_t block_bytes() const { return options_.block_bytes; }
  int64_t BlocksFor(int64_t tokens) const;

  // INVALID_ARGUMENT for a layer outside the pool, negative tokens or the same (seq, layer)
  // twice; RESOURCE_EXHAUSTED when a layer's growth exceeds its free blocks. Changes nothing.
  absl::StatusOr<BlockPlan> Plan(absl::Span<const BlockChange> changes) const;
  // Applies `plan` (shrinks first, so blocks move between sequences of one plan).
  absl::Status Commit(const BlockPlan& plan);
  // Plan + Commit.
  absl::Status Apply(absl::Span<const BlockChange> changes);
  // Frees every block of the sequence; false when it holds none.
  bool Release(uint64_t seq_id);
  void ReleaseAll();

  int64_t capacity(int layer) const;
  int64_t used(int layer) const;
  int64_t free(int layer) const { return capacity(layer) - used(layer); }
  int64_t total_capacity() const;
  int64_t total_used() const;
  int64_t total_free() const { return total_capacity() - total_used(); }

  bool has_sequence(uint64_t seq_id) const { return tables_.contains(seq_id); }
  int num_sequences() const { return static_cast<int>(tables_.size()); }
  // Tokens / blocks the sequence holds in a layer (0 when unknown).
  int64_t tokens(uint64_t seq_id, int layer) const;
  // Block ids of the sequence's layer, in token order (empty when unknown).
  absl::Span<const int32_t> table(uint64_t seq_id, int layer) const;

 private:
  struct SequenceTables {
    std::vector<int64_t> tokens;               // [layer - layer_begin]
    std::vector<std::vector<int32_t>> blocks;  // [layer - layer_begin]: block ids
  };
  explicit BlockPool(const BlockPoolOptions& options);
  bool InRange(int layer) const { return layer >= layer_begin() && layer < layer_end(); }
  void Resize(SequenceTables& t, int i, int64_t tokens, int64_t blocks);

  BlockPoolOptions options_;
  std::vector<std::vector<int32_t>> free_lists_;  // [layer - layer_begin]: free block ids
  absl::flat_hash_map<uint64_t, SequenceTables> tables_;
  uint64_t version_ = 0;
};

}  // namespace xkv

#endif  // XKV_WORKER_BLOCK_POOL_H_
