// The coordinator's KV ledger (architecture.md §5), in the spirit of vLLM v1's KVCacheManager: per
// pipeline stage the blocks of its ONE paged pool (shared by all its layers, the capacity the
// stage reported at load), per running sequence the tokens and blocks of every layer. The
// Scheduler decides admission, growth and release with it; the stages apply the same decisions in
// their BlockPools and report what they hold after every step and compaction, and Verify() turns
// any disagreement into an error instead of a silent drift.
//
// Per (sequence, layer) the ledger keeps `tokens` (what the stage's cache holds) and `blocks`
// reserved for it (>= ceil(tokens / block_tokens)): a reservation may cover tokens not written yet
// (the rest of a prompt being prefilled in chunks, or, under guaranteed_no_evict, every token the
// request may still write). A stage with per-head tables (KvStage::head_tables = n_kv_heads, the
// stages that take per-(layer, KV head) budgets) counts blocks of one head: a layer holding t
// tokens in every head owns head_tables * ceil(t / block_tokens) blocks, and after a per-head
// compaction the ledger keeps each head's tokens (KvLayerHeld::head_tokens) and owns
// sum_h ceil(t_h / block_tokens); every head grows one token per decode step. Not thread-safe
// (the Scheduler holds it under its mutex).
#ifndef XKV_COORDINATOR_KV_MANAGER_H_
#define XKV_COORDINATOR_KV_MANAGER_H_

#include <cstdint>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace xkv {

// When a request may enter the batch (TensorRT-LLM's capacity-scheduler policies).
enum class KvAdmission {
  // Reserve the worst case at admission (prompt + max_tokens in every layer; shrunk to kept +
  // window + the tokens still to come after compaction): a running request never lacks a block,
  // so nothing is ever preempted; fewer requests run at once.
  kGuaranteedNoEvict,
  // Reserve the prompt's blocks at admission and grow block by block as the request decodes;
  // when a stage's pool runs out, the most recently admitted request is preempted (its blocks
  // freed, recomputed later from its prompt and the tokens it already produced).
  kMaxUtilization,
};

// "guaranteed_no_evict" | "max_utilization"; INVALID_ARGUMENT naming the value and both names.
absl::StatusOr<KvAdmission> ParseKvAdmission(absl::string_view name);
absl::string_view KvAdmissionName(KvAdmission admission);

// One pipeline stage's pool.
struct KvStage {
  int layer_begin = 0;
  int layer_end = 0;            // exclusive
  int64_t capacity_blocks = 0;  // blocks of the stage's shared pool
  int head_tables = 1;          // block tables per layer (LoadStageResponse.head_tables), >= 1
};

struct KvManagerOptions {
  int block_tokens = 16;
  // Contiguous layer ranges from layer 0, in stage order. Empty: no block accounting.
  std::vector<KvStage> stages;
};

// What a stage reports one layer of a sequence holds (the worker's LayerSize).
struct KvLayerHeld {
  int layer = 0;
  int64_t tokens = 0;  // the largest head's
  int64_t blocks = 0;
  // [head_tables] each head's tokens on a stage with per-head tables; empty: every head `tokens`.
  std::vector<int64_t> head_tokens;
};

class KvManager {
 public:
  // INVALID_ARGUMENT for block_tokens < 1, a negative capacity or ranges that are not contiguous.
  static absl::StatusOr<KvManager> Create(const KvManagerOptions& options);
  KvManager() = default;  // no accounting

  bool enabled() const { return !options_.stages.empty(); }
  int num_stages() const { return static_cast<int>(options_.stages.size()); }
  int num_layers() const { return static_cast<int>(stage_of_layer_.size()); }
  const KvManagerOptions& options() const { return options_; }
  int64_t BlocksFor(int64_t tokens) const;

  // RESOURCE_EXHAUSTED when `tokens` in every layer exceed some stage's whole pool: such a
  // request could never run, even alone.
  absl::Status CheckEverFits(uint64_t id, int64_t tokens) const;
  // Whether a new sequence reserving `tokens` in every layer fits now, leaving headroom[s] blocks
  // free on stage s (empty: none).
  bool CanAllocate(int64_t tokens, absl::Span<const int64_t> headroom = {}) const;
  // Adds a sequence holding nothing, with `tokens` per layer reserved. ALREADY_EXISTS for a known
  // id, RESOURCE_EXHAUSTED when a stage lacks the blocks (nothing changes).
  absl::Status Allocate(uint64_t id, int64_t tokens);
  // Blocks per stage that writing `n` more tokens in every layer of `id` takes beyond its
  // reservation (zeros for an unknown id).
  std::vector<int64_t> GrowthBlocks(uint64_t id, int64_t n) const;
  // Writes `n` tokens in every layer (a prefill chunk, a decode token), taking whole blocks where
  // a layer crosses its reservation. RESOURCE_EXHAUSTED when a stage lacks them (nothing changes),
  // NOT_FOUND for an unknown id.
  absl::Status Grow(uint64_t id, int64_t n);
  // After a compaction: every layer holds what `held` says (no more tokens than before; all
  // layers, ordered), and reserves its blocks for `headroom_tokens` more. INTERNAL when the report
  // is not a shrink of this sequence's layers; NOT_FOUND for an unknown id.
  absl::Status Shrink(uint64_t id, absl::Span<const KvLayerHeld> held, int64_t headroom_tokens);
  // The stages' report (every layer, ordered) against the ledger: INTERNAL naming the sequence,
  // the layer and both counts at the first disagreement. OK for an unknown id (it ended).
  absl::Status Verify(uint64_t id, absl::Span<const KvLayerHeld> held) const;
  // Frees every block of the sequence; false when unknown.
  bool Free(uint64_t id);

  bool Contains(uint64_t id) const { return seqs_.contains(id); }
  int num_sequences() const { return static_cast<int>(seqs_.size()); }
  int64_t capacity(int stage) const { return options_.stages[stage].capacity_blocks; }
  const std::vector<int64_t>& free_blocks() const { return free_; }  // [stage]
  // The sequence's layer (0 when unknown).
  int64_t tokens(uint64_t id, int layer) const;
  int64_t reserved(uint64_t id, int layer) const;

 private:
  struct Sequence {
    std::vector<int64_t> tokens;  // [layer]: the largest head's
    std::vector<int64_t> blocks;  // [layer] reserved, >= LayerBlocks(tokens)
    // [layer][head] after a per-head compaction (empty for a layer whose heads hold `tokens`).
    std::vector<std::vector<int64_t>> head_tokens;
  };
  explicit KvManager(const KvManagerOptions& options);
  int head_tables(int layer) const { return options_.stages[stage_of_layer_[layer]].head_tables; }
  // Blocks layer l of `q` needs with `extra` more tokens in every head.
  int64_t LayerBlocks(const Sequence& q, int layer, int64_t extra) const;
  // Blocks a stage's report of one layer amounts to (its heads' own counts when given).
  int64_t HeldBlocks(const KvLayerHeld& held) const;
  bool Fits(absl::Span<const int64_t> need, absl::Span<const int64_t> headroom = {}) const;
  absl::Status CheckReport(uint64_t id, absl::Span<const KvLayerHeld> held) const;

  KvManagerOptions options_;
  std::vector<int> stage_of_layer_;  // [layer]
  std::vector<int64_t> free_;        // [stage]
  absl::flat_hash_map<uint64_t, Sequence> seqs_;
};

}  // namespace xkv

#endif  // XKV_COORDINATOR_KV_MANAGER_H_
