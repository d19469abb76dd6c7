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
  if (options.head_tables < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("block pool: head_tables ", options.head_tables, " must be >= 1"));
  }
  if (options.capacity < 0 || options.capacity > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(absl::StrCat("block pool: capacity ", options.capacity,
                                                   " blocks out of range [0, ",
                                                   std::numeric_limits<int32_t>::max(), "]"));
  }
  return BlockPool(options);
}

BlockPool::BlockPool(const BlockPoolOptions& options)
    : options_(options), table_used_(num_tables(), 0) {
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
  if (!InRange(layer)) return 0;
  int64_t used = 0;
  for (int h = 0; h < head_tables(); ++h) used += table_used_[TableIndex(layer, h)];
  return used;
}

int64_t BlockPool::head_tokens(uint64_t seq_id, int layer, int head) const {
  auto it = tables_.find(seq_id);
  if (it == tables_.end() || !InRange(layer, head)) return 0;
  return it->second.tokens[TableIndex(layer, head)];
}

int64_t BlockPool::tokens(uint64_t seq_id, int layer) const {
  int64_t most = 0;
  for (int h = 0; h < head_tables(); ++h) most = std::max(most, head_tokens(seq_id, layer, h));
  return most;
}

int64_t BlockPool::blocks(uint64_t seq_id, int layer) const {
  int64_t n = 0;
  for (int h = 0; h < head_tables(); ++h) n += table(seq_id, layer, h).size();
  return n;
}

absl::Span<const int32_t> BlockPool::table(uint64_t seq_id, int layer, int head) const {
  auto it = tables_.find(seq_id);
  if (it == tables_.end() || !InRange(layer, head)) return {};
  return it->second.blocks[TableIndex(layer, head)];
}

absl::StatusOr<BlockPlan> BlockPool::Plan(absl::Span<const BlockChange> changes) const {
  BlockPlan plan;
  plan.version = version_;
  absl::flat_hash_set<std::pair<uint64_t, int>> seen;  // (sequence, table)
  for (const BlockChange& c : changes) {
    if (!InRange(c.layer) || c.tokens < 0 || c.head < -1 || c.head >= head_tables()) {
      return absl::InvalidArgumentError(
          absl::StrCat("block pool: sequence ", c.seq_id, " layer ", c.layer, " head ", c.head,
                       " tokens ", c.tokens, " (layers [", layer_begin(), ", ", layer_end(),
                       "), heads -1 or [0, ", head_tables(), "))"));
    }
    const int first = c.head < 0 ? 0 : c.head, last = c.head < 0 ? head_tables() : c.head + 1;
    for (int h = first; h < last; ++h) {
      if (!seen.insert({c.seq_id, TableIndex(c.layer, h)}).second) {
        return absl::InvalidArgumentError(absl::StrCat("block pool: sequence ", c.seq_id, " layer ",
                                                       c.layer, " head ", h, " twice in one plan"));
      }
      const int64_t blocks = BlocksFor(c.tokens);
      auto it = tables_.find(c.seq_id);
      const int64_t held =
          it == tables_.end() ? 0 : it->second.blocks[TableIndex(c.layer, h)].size();
      plan.delta_blocks += blocks - held;
      plan.entries.push_back({c.seq_id, c.layer, h, c.tokens, blocks});
    }
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
  table_used_[i] += blocks - static_cast<int64_t>(table.size());
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
        t.tokens.assign(num_tables(), 0);
        t.blocks.resize(num_tables());
      }
      const int i = TableIndex(e.layer, e.head);
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
  for (int i = 0; i < num_tables(); ++i) Resize(it->second, i, 0, 0);
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
