#include "worker/block_pool.h"

#include <algorithm>
#include <limits>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"

namespace xkv {

absl::StatusOr<BlockPool> BlockPool::Create(const BlockPoolOptions& options) {
  if (options.capacity_blocks.empty()) {
    return absl::InvalidArgumentError("block pool: no layers");
  }
  if (options.block_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("block pool: block_tokens ", options.block_tokens, " must be >= 1"));
  }
  for (size_t i = 0; i < options.capacity_blocks.size(); ++i) {
    const int64_t c = options.capacity_blocks[i];
    if (c < 0 || c > std::numeric_limits<int32_t>::max()) {
      return absl::InvalidArgumentError(absl::StrCat("block pool: layer ", options.layer_begin + i,
                                                     " capacity ", c, " blocks out of range"));
    }
  }
  return BlockPool(options);
}

BlockPool::BlockPool(const BlockPoolOptions& options) : options_(options) {
  free_lists_.resize(options_.capacity_blocks.size());
  for (size_t i = 0; i < free_lists_.size(); ++i) {
    std::vector<int32_t>& f = free_lists_[i];
    f.resize(options_.capacity_blocks[i]);
    // A stack: the lowest ids are handed out first.
    for (size_t b = 0; b < f.size(); ++b) f[b] = static_cast<int32_t>(f.size() - 1 - b);
  }
}

int64_t BlockPool::BlocksFor(int64_t tokens) const {
  return tokens <= 0 ? 0 : (tokens + options_.block_tokens - 1) / options_.block_tokens;
}

int64_t BlockPool::capacity(int layer) const {
  return InRange(layer) ? options_.capacity_blocks[layer - layer_begin()] : 0;
}

int64_t BlockPool::used(int layer) const {
  if (!InRange(layer)) return 0;
  const int i = layer - layer_begin();
  return options_.capacity_blocks[i] - static_cast<int64_t>(free_lists_[i].size());
}

int64_t BlockPool::total_capacity() const {
  int64_t n = 0;
  for (int64_t c : options_.capacity_blocks) n += c;
  return n;
}

int64_t BlockPool::total_used() const {
  int64_t n = 0;
  for (int l = layer_begin(); l < layer_end(); ++l) n += used(l);
  return n;
}

int64_t BlockPool::tokens(uint64_t seq_id, int layer) const {
  auto it = tables_.find(seq_id);
  if (it == tables_.end() || !InRange(layer)) return 0;
  return it->second.tokens[layer - layer_begin()];
}

absl::Span<const int32_t> BlockPool::table(uint64_t seq_id, int layer) const {
  auto it = tables_.find(seq_id);
  if (it == tables_.end() || !InRange(layer)) return {};
  return it->second.blocks[layer - layer_begin()];
}

absl::StatusOr<BlockPlan> BlockPool::Plan(absl::Span<const BlockChange> changes) const {
  BlockPlan plan;
  plan.version = version_;
  plan.delta_blocks.assign(num_layers(), 0);
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
    const int64_t held =
        it == tables_.end() ? 0 : it->second.blocks[c.layer - layer_begin()].size();
    plan.delta_blocks[c.layer - layer_begin()] += blocks - held;
    plan.entries.push_back({c.seq_id, c.layer, c.tokens, blocks});
  }
  for (int i = 0; i < num_layers(); ++i) {
    const int64_t free_blocks = static_cast<int64_t>(free_lists_[i].size());
    if (plan.delta_blocks[i] > free_blocks) {
      return absl::ResourceExhaustedError(
          absl::StrCat("block pool: layer ", layer_begin() + i, " needs ", plan.delta_blocks[i],
                       " more blocks of ", options_.block_tokens, " tokens but has ", free_blocks,
                       " free of ", options_.capacity_blocks[i]));
    }
  }
  return plan;
}

void BlockPool::Resize(SequenceTables& t, int i, int64_t tokens, int64_t blocks) {
  std::vector<int32_t>& table = t.blocks[i];
  std::vector<int32_t>& free_list = free_lists_[i];
  while (static_cast<int64_t>(table.size()) > blocks) {
    free_list.push_back(table.back());
    table.pop_back();
  }
  while (static_cast<int64_t>(table.size()) < blocks) {
    table.push_back(free_list.back());
    free_list.pop_back();
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
      const int i = e.layer - layer_begin();
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
