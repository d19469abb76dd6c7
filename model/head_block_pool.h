// Host bookkeeping of a paged KV pool handed out per KV head (the CUDA engine's,
// model/cuda/cuda_llama_model.h; the memory layout is kernels/cuda/paged_kv.cuh): the pool is
// `head_blocks` head-blocks of kBlockTokens rows of ONE KV head (K and V), and every sequence owns
// one table of head-blocks and one length per (layer, KV head) of the stage, so the KV heads of one
// layer hold different token counts after per-head compaction and each returns its whole unused
// head-blocks. A head holding n tokens owns ceil(n / 16) head-blocks: at most 15 rows of rounding
// per (sequence, layer, KV head); a full cache (every head equal) holds exactly what blocks of all
// heads did. No device code: the engine copies the tables to the device. Not thread-safe.
#ifndef XKV_MODEL_HEAD_BLOCK_POOL_H_
#define XKV_MODEL_HEAD_BLOCK_POOL_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace xkv {

// One sequence's tables: index layer * n_kv_heads + head (HeadBlockPool::Index), layers local to
// the stage.
struct HeadTables {
  std::vector<std::vector<int32_t>> blocks;  // head-block ids in slot order
  std::vector<int64_t> lengths;              // slots held
};

class HeadBlockPool {
 public:
  static constexpr int64_t kBlockTokens = 16;
  static int64_t BlocksFor(int64_t tokens) { return (tokens + kBlockTokens - 1) / kBlockTokens; }

  HeadBlockPool() = default;
  // Ids [0, head_blocks) free, handed out from the lowest.
  HeadBlockPool(int64_t head_blocks, int layers, int kv_heads);

  int layers() const { return layers_; }
  int kv_heads() const { return kv_heads_; }
  int64_t capacity() const { return capacity_; }
  int64_t free_blocks() const { return static_cast<int64_t>(free_.size()); }
  int64_t Index(int64_t layer, int head) const { return layer * kv_heads_ + head; }

  // Empty tables for every (layer, KV head).
  HeadTables NewTables() const;
  // Head-blocks the tables own, and the largest head length of a layer.
  static int64_t Held(const HeadTables& t);
  int64_t MaxLength(const HeadTables& t, int64_t layer) const;

  // Head-blocks that growing every (layer, head) of `t` (null: a new sequence) by n_new slots
  // takes (each head after its own rows).
  int64_t GrowthNeed(const HeadTables* t, int64_t n_new) const;
  // Appends head-blocks so every head holds length + n_new slots (lengths unchanged: the caller
  // sets them once the step succeeded); returns how many it took. The caller checked
  // GrowthNeed <= free_blocks().
  int64_t Grow(HeadTables& t, int64_t n_new);
  // Gives back every head-block past each head's length (a failed or scores-only step).
  void Trim(HeadTables& t);
  // Head-slot (head_block * 16 + row) of slot `slot` of table `index` (slot < blocks * 16).
  static int64_t HeadSlot(const HeadTables& t, int64_t index, int64_t slot) {
    return int64_t{t.blocks[index][slot / kBlockTokens]} * kBlockTokens + slot % kBlockTokens;
  }

  // Compaction of one layer to kept[h] slots per head (strictly increasing, each < that head's
  // length; heads may keep different counts): INVALID_ARGUMENT for bad lists, RESOURCE_EXHAUSTED
  // without enough free head-blocks (nothing taken); else the fresh head-blocks of every head
  // (ceil(kept[h] / 16) each), taken from the pool.
  absl::StatusOr<std::vector<std::vector<int32_t>>> TakeForKept(
      const HeadTables& t, int64_t layer, absl::Span<const std::vector<int32_t>> kept);
  // After the rows were copied: frees the layer's old head-blocks and installs `fresh`.
  void FinishCompact(HeadTables& t, int64_t layer, std::vector<std::vector<int32_t>> fresh,
                     absl::Span<const std::vector<int32_t>> kept);
  // Tables with the same lengths in fresh head-blocks (RESOURCE_EXHAUSTED: nothing taken).
  absl::StatusOr<HeadTables> TakeCopyOf(const HeadTables& t);

  std::vector<int32_t> Take(int64_t n);  // n <= free_blocks()
  void Free(const std::vector<int32_t>& blocks);
  void Release(HeadTables& t);  // every head-block back; the tables end empty

 private:
  int64_t capacity_ = 0;
  int layers_ = 0, kv_heads_ = 0;
  std::vector<int32_t> free_;  // taken from the back
};

}  // namespace xkv

#endif  // XKV_MODEL_HEAD_BLOCK_POOL_H_
