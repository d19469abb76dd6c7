#include "model/head_block_pool.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"

namespace xkv {

HeadBlockPool::HeadBlockPool(int64_t head_blocks, int layers, int kv_heads)
    : capacity_(head_blocks), layers_(layers), kv_heads_(kv_heads) {
  free_.resize(head_blocks);
  for (int64_t b = 0; b < head_blocks; ++b) free_[b] = static_cast<int32_t>(head_blocks - 1 - b);
}

HeadTables HeadBlockPool::NewTables() const {
  HeadTables t;
  t.blocks.resize(int64_t{layers_} * kv_heads_);
  t.lengths.assign(t.blocks.size(), 0);
  return t;
}

int64_t HeadBlockPool::Held(const HeadTables& t) {
  int64_t held = 0;
  for (const std::vector<int32_t>& b : t.blocks) held += static_cast<int64_t>(b.size());
  return held;
}

int64_t HeadBlockPool::MaxLength(const HeadTables& t, int64_t layer) const {
  int64_t len = 0;
  for (int g = 0; g < kv_heads_; ++g) len = std::max(len, t.lengths[Index(layer, g)]);
  return len;
}

int64_t HeadBlockPool::GrowthNeed(const HeadTables* t, int64_t n_new) const {
  int64_t need = 0;
  for (int64_t j = 0; j < int64_t{layers_} * kv_heads_; ++j) {
    const int64_t len = (t == nullptr ? 0 : t->lengths[j]) + n_new;
    const int64_t held = t == nullptr ? 0 : static_cast<int64_t>(t->blocks[j].size());
    need += std::max<int64_t>(BlocksFor(len) - held, 0);
  }
  return need;
}

int64_t HeadBlockPool::Grow(HeadTables& t, int64_t n_new) {
  int64_t taken = 0;
  for (size_t j = 0; j < t.blocks.size(); ++j) {
    std::vector<int32_t>& blocks = t.blocks[j];
    while (static_cast<int64_t>(blocks.size()) < BlocksFor(t.lengths[j] + n_new)) {
      blocks.push_back(free_.back());
      free_.pop_back();
      ++taken;
    }
  }
  return taken;
}

void HeadBlockPool::Trim(HeadTables& t) {
  for (size_t j = 0; j < t.blocks.size(); ++j) {
    std::vector<int32_t>& blocks = t.blocks[j];
    const int64_t keep = BlocksFor(t.lengths[j]);
    if (static_cast<int64_t>(blocks.size()) <= keep) continue;
    free_.insert(free_.end(), blocks.begin() + keep, blocks.end());
    blocks.resize(keep);
  }
}

absl::StatusOr<std::vector<std::vector<int32_t>>> HeadBlockPool::TakeForKept(
    const HeadTables& t, int64_t layer, absl::Span<const std::vector<int32_t>> kept) {
  if (static_cast<int>(kept.size()) != kv_heads_) {
    return absl::InvalidArgumentError(
        absl::StrCat("kv pool: compact got ", kept.size(), " head lists, want ", kv_heads_));
  }
  int64_t need = 0;
  for (int g = 0; g < kv_heads_; ++g) {
    const int64_t len = t.lengths[Index(layer, g)];
    const std::vector<int32_t>& k = kept[g];
    for (size_t i = 0; i < k.size(); ++i) {
      if (k[i] < 0 || k[i] >= len || (i > 0 && k[i] <= k[i - 1])) {
        return absl::InvalidArgumentError(absl::StrCat("kv pool: compact slot ", k[i], " of head ",
                                                       g, " not increasing or outside [0, ", len,
                                                       ")"));
      }
    }
    need += BlocksFor(static_cast<int64_t>(k.size()));
  }
  if (need > free_blocks()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("kv pool: compacting needs ", need, " head-blocks, ", free_blocks(), " free"));
  }
  std::vector<std::vector<int32_t>> fresh(kv_heads_);
  for (int g = 0; g < kv_heads_; ++g) fresh[g] = Take(BlocksFor(kept[g].size()));
  return fresh;
}

void HeadBlockPool::FinishCompact(HeadTables& t, int64_t layer,
                                  std::vector<std::vector<int32_t>> fresh,
                                  absl::Span<const std::vector<int32_t>> kept) {
  for (int g = 0; g < kv_heads_; ++g) {
    const int64_t j = Index(layer, g);
    Free(t.blocks[j]);
    t.blocks[j] = std::move(fresh[g]);
    t.lengths[j] = static_cast<int64_t>(kept[g].size());
  }
}

absl::StatusOr<HeadTables> HeadBlockPool::TakeCopyOf(const HeadTables& t) {
  const int64_t need = Held(t);
  if (need > free_blocks()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("kv pool: a copy needs ", need, " head-blocks, ", free_blocks(), " free"));
  }
  HeadTables copy;
  copy.lengths = t.lengths;
  for (const std::vector<int32_t>& b : t.blocks) copy.blocks.push_back(Take(b.size()));
  return copy;
}

std::vector<int32_t> HeadBlockPool::Take(int64_t n) {
  std::vector<int32_t> taken(free_.end() - n, free_.end());
  free_.resize(free_.size() - n);
  return taken;
}

void HeadBlockPool::Free(const std::vector<int32_t>& blocks) {
  free_.insert(free_.end(), blocks.begin(), blocks.end());
}

void HeadBlockPool::Release(HeadTables& t) {
  for (std::vector<int32_t>& b : t.blocks) {
    Free(b);
    b.clear();
  }
  std::fill(t.lengths.begin(), t.lengths.end(), 0);
}

}  // namespace xkv
