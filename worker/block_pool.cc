#include "worker/block_pool.h"

#include <algorithm>
#include <limits>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"

namespace xkv {

absl::StatusOr<BlockPool> BlockPool::Create(const BlockPoolOptions& options) {
  if (options.num_layers < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("block pool: ", options.num_layers, " layers; a stage has >= 1"));
  }
  if (options.block_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("block pool: block_tokens ", options.block_tokens, " must be >= 1"));
  }
  if (options.capacity < 0 || options.capacity > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(absl::StrCat("block pool: capacity ", options.capacity,
                                                   " blocks out of range [0, ",
                                                   std::numeric_limits<int32_t>::max(), "]"));
  }
  return BlockPool(options);
}

BlockPool::BlockPool(const BlockPoolOptions& options)
    : options_(options), layer_used_(options.num_layers, 0) {
  free_list_.resize(options_.capacity);
  // A stack: the lowest ids are handed out first.
  for (size_t b = 0; b < free_list_.size(); ++b) {
    free_list_[b] = static_cast<int32_t>(free_list_.size() - 1 - b);
  }
}

int64_t BlockPool::BlocksFor(int64_t tokens) const {
  return tokens <= 0 ? 0 : (tokens + options_.block_tokens - 1) / options_.block_tokens;
}

int64_t BlockPool::layer_used(int layer) const {
  return InRange(layer) ? layer_used_[TableIndex(layer)] : 0;
}

int64_t BlockPool::tokens(uint64_t seq_id, int layer) const {
  auto it = tables_.find(seq_id);
  if (it == tables_.end() || !InRange(layer)) return 0;
  return it->second.tokens[TableIndex(layer)];
}

absl::Span<const int32_t> BlockPool::table(uint64_t seq_id, int layer) const {
  auto it = tables_.find(seq_id);
  if (it == tables_.end() || !InRange(layer)) return {};
  return it->second.blocks[TableIndex(layer)];
}

absl::StatusOr<BlockPlan> BlockPool::Plan(absl::Span<const BlockChange> changes) const {
  BlockPlan plan;
  plan.version = version_;
  absl::flat_hash_set<std::pair<uint64_t, int>> seen;
  for (const BlockChange& c : changes) {
    if (!InRange(c.layer) || c.tokens < 0) {
      return absl::InvalidArgumentError(absl::StrCat("block pool: sequence ", c.seq_id, " layer ",
                                                     c.layer, " tokens ", c.tokens, " (layers [",
                                                     layer_begin(), ", ", layer_end(), "))"));
    }
    if (!seen.insert({c.seq_id, c.layer}).second) {
      return absl::InvalidArgumentError(absl::StrCat("block pool: sequence ", c.seq_id, " layer ",
                                                     c.layer, " twice in one plan"));
    }
    const int64_t blocks = BlocksFor(c.tokens);
    auto it = tables_.find(c.seq_id);
    const int64_t held = it == tables_.end() ? 0 : it->second.blocks[TableIndex(c.layer)].size();
    plan.delta_blocks += blocks - held;
    plan.entries.push_back({c.seq_id, c.layer, c.tokens, blocks});
  }
  if (plan.delta_blocks > free()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("block pool: layers [", layer_begin(), ", ", layer_end(), ") need ",
                     plan.delta_blocks, " more blocks of ", options_.block_tokens,
                     " tokens but the stage has ", free(), " free of ", capacity()));
  }
  return plan;
}

void BlockPool::Resize(SequenceTables& t, int i, int64_t tokens, int64_t blocks) {
  std::vector<int32_t>& table = t.blocks[i];
  layer_used_[i] += blocks - static_cast<int64_t>(table.size());
  while (static_cast<int64_t>(table.size()) > blocks) {
    free_list_.push_back(table.back());
    table.pop_back();
  }
  while (static_cast<int64_t>(table.size()) < blocks) {
    table.push_back(free_list_.back());
    free_list_.pop_back();
  }
  t.tokens[i] = tokens;
}

absl::Status BlockPool::Commit(const BlockPlan& plan) {
  if (plan.version != version_) {
    return absl::FailedPreconditionError(absl::StrCat("block pool: plan made against version ",
                                                      plan.version, ", pool is at ", version_));
  }
  // Shrinks first, then growths: the plan's net delta fits, so every growth finds free blocks.
  for (int pass = 0; pass < 2; ++pass) {
    for (const BlockPlan::Entry& e : plan.entries) {
      SequenceTables& t = tables_[e.seq_id];
      if (t.tokens.empty()) {
        t.tokens.assign(num_layers(), 0);
        t.blocks.resize(num_layers());
      }
      const int i = TableIndex(e.layer);
      const bool shrink = e.blocks <= static_cast<int64_t>(t.blocks[i].size());
      if (shrink == (pass == 0)) Resize(t, i, e.tokens, e.blocks);
    }
  }
  ++version_;
  return absl::OkStatus();
}

absl::Status BlockPool::Apply(absl::Span<const BlockChange> changes) {
  auto plan = Plan(changes);
  if (!plan.ok()) return plan.status();
  return Commit(*plan);
}

bool BlockPool::Release(uint64_t seq_id) {
  auto it = tables_.find(seq_id);
  if (it == tables_.end()) return false;
  for (int i = 0; i < num_layers(); ++i) Resize(it->second, i, 0, 0);
  tables_.erase(it);
  ++version_;
  return true;
}

void BlockPool::ReleaseAll() {
  std::vector<uint64_t> ids;
  for (const auto& [id, t] : tables_) ids.push_back(id);
  for (uint64_t id : ids) Release(id);
}

}  // namespace xkv
