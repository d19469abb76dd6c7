// Paged KV accounting for one stage (architecture.md §5): ONE pool of fixed-size blocks shared by
// every layer of the stage (a block holds block_tokens tokens of one layer's K and V for every KV
// head), and per sequence per layer a block table drawn from the shared free list. A sequence
// whose layer holds t tokens owns exactly ceil(t / block_tokens) blocks of the pool, so memory
// that compaction frees in one layer serves any other layer (or sequence) at once.
//
// The pool is the stage's admission and accounting truth; the engine keeps the tensors (the CUDA
// engine's physical pool is sized from the same capacity, worker/stage_engine_factory.cc). Changes
// are plan-then-commit: Plan() computes what a set of new token counts would need and answers
// RESOURCE_EXHAUSTED when the stage lacks free blocks — nothing changes; Commit() applies a plan
// made against the current state (FAILED_PRECONDITION if the pool changed since). Shrinking
// (compaction) always fits. Not thread-safe: the stage serialises its calls.
//
// Granularity: by default one table per (sequence, layer), every KV head of the layer in each
// block. With `head_tables` = n_kv_heads (per-(layer, KV head) budgets) each layer has one table
// per KV head and a block holds block_tokens tokens of ONE head's K and V (block_bytes is then
// that block's size): a layer whose heads hold t_h tokens owns sum_h ceil(t_h / block_tokens)
// blocks, so a head compacted below another frees its own blocks. TableIndex() is the one place
// that maps a (layer, head) to its table.
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
  int layer_begin = 0;      // model index of the first layer
  int num_layers = 1;       // >= 1
  int64_t capacity = 0;     // blocks of the stage's shared pool, [0, INT32_MAX]
  int block_tokens = 16;    // >= 1
  int64_t block_bytes = 0;  // bytes of one block (one layer's, or one head's, K and V), reporting
  int head_tables = 1;      // tables per layer: 1, or n_kv_heads for per-head tables (>= 1)
};

// One entry of a plan: layer `layer` (its KV head `head` in a per-head pool; -1 = every head of
// the layer) of sequence `seq_id` should hold `tokens` tokens.
struct BlockChange {
  uint64_t seq_id = 0;
  int layer = 0;       // model layer index
  int64_t tokens = 0;  // >= 0; 0 frees the blocks
  int head = -1;       // [0, head_tables) or -1
};

struct BlockPlan {
  struct Entry {
    uint64_t seq_id;
    int layer;
    int head;  // resolved: [0, head_tables)
    int64_t tokens;
    int64_t blocks;  // ceil(tokens / block_tokens)
  };
  std::vector<Entry> entries;
  int64_t delta_blocks = 0;  // net change of the stage's used blocks
  uint64_t version = 0;      // pool version the plan was made against
};

class BlockPool {
 public:
  // INVALID_ARGUMENT for no layers, a capacity outside [0, INT32_MAX], block_tokens < 1 or
  // head_tables < 1.
  static absl::StatusOr<BlockPool> Create(const BlockPoolOptions& options);

  int layer_begin() const { return options_.layer_begin; }
  int layer_end() const { return options_.layer_begin + options_.num_layers; }
  int num_layers() const { return options_.num_layers; }
  int block_tokens() const { return options_.block_tokens; }
  int head_tables() const { return options_.head_tables; }
  int64_t block_bytes() const { return options_.block_bytes; }
  int64_t BlocksFor(int64_t tokens) const;

  // INVALID_ARGUMENT for a layer or head outside the pool, negative tokens or the same (seq,
  // layer, head) twice; RESOURCE_EXHAUSTED when the growth exceeds the stage's free blocks.
  // Changes nothing.
  absl::StatusOr<BlockPlan> Plan(absl::Span<const BlockChange> changes) const;
  // Applies `plan` (shrinks first, so blocks move between layers and sequences of one plan).
  absl::Status Commit(const BlockPlan& plan);
  // Plan + Commit.
  absl::Status Apply(absl::Span<const BlockChange> changes);
  // Frees every block of the sequence; false when it holds none.
  bool Release(uint64_t seq_id);
  void ReleaseAll();

  int64_t capacity() const { return options_.capacity; }
  int64_t used() const { return options_.capacity - static_cast<int64_t>(free_list_.size()); }
  int64_t free() const { return static_cast<int64_t>(free_list_.size()); }
  // Blocks the layer's tables (every head's) hold over every sequence (0 outside the pool).
  int64_t layer_used(int layer) const;

  bool has_sequence(uint64_t seq_id) const { return tables_.contains(seq_id); }
  int num_sequences() const { return static_cast<int>(tables_.size()); }
  // Tokens the sequence holds in a layer: its largest head (0 when unknown).
  int64_t tokens(uint64_t seq_id, int layer) const;
  // Tokens of one head's table (0 when unknown).
  int64_t head_tokens(uint64_t seq_id, int layer, int head) const;
  // Blocks the sequence holds in a layer, summed over its heads' tables (0 when unknown).
  int64_t blocks(uint64_t seq_id, int layer) const;
  // Block ids of the sequence's layer (head `head` in a per-head pool), in token order (empty
  // when unknown).
  absl::Span<const int32_t> table(uint64_t seq_id, int layer, int head = 0) const;

 private:
  struct SequenceTables {
    std::vector<int64_t> tokens;               // [table]
    std::vector<std::vector<int32_t>> blocks;  // [table]: block ids
  };
  explicit BlockPool(const BlockPoolOptions& options);
  bool InRange(int layer) const { return layer >= layer_begin() && layer < layer_end(); }
  bool InRange(int layer, int head) const {
    return InRange(layer) && head >= 0 && head < options_.head_tables;
  }
  // The table of a (layer, head): head_tables per layer (see the file comment).
  int TableIndex(int layer, int head = 0) const {
    return (layer - layer_begin()) * options_.head_tables + head;
  }
  int num_tables() const { return options_.num_layers * options_.head_tables; }
  void Resize(SequenceTables& t, int i, int64_t tokens, int64_t blocks);

  BlockPoolOptions options_;
  std::vector<int32_t> free_list_;   // the stage's free block ids (a stack)
  std::vector<int64_t> table_used_;  // [table]: blocks held over every sequence
  absl::flat_hash_map<uint64_t, SequenceTables> tables_;
  uint64_t version_ = 0;
};

}  // namespace xkv

#endif  // XKV_WORKER_BLOCK_POOL_H_
