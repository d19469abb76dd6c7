#include "coordinator/kv_manager.h"

#include <algorithm>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"

namespace xkv {

absl::StatusOr<KvAdmission> ParseKvAdmission(absl::string_view name) {
  if (name == "guaranteed_no_evict") return KvAdmission::kGuaranteedNoEvict;
  if (name == "max_utilization") return KvAdmission::kMaxUtilization;
  return absl::InvalidArgumentError(absl::StrCat("unknown KV admission policy '", name,
                                                 "'; use guaranteed_no_evict or max_utilization"));
}

absl::string_view KvAdmissionName(KvAdmission admission) {
  return admission == KvAdmission::kGuaranteedNoEvict ? "guaranteed_no_evict" : "max_utilization";
}

absl::StatusOr<KvManager> KvManager::Create(const KvManagerOptions& options) {
  if (options.block_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("kv manager: block_tokens ", options.block_tokens, " must be >= 1"));
  }
  int next = 0;
  for (size_t s = 0; s < options.stages.size(); ++s) {
    const KvStage& st = options.stages[s];
    if (st.layer_begin != next || st.layer_end <= st.layer_begin || st.capacity_blocks < 0 ||
        st.head_tables < 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "kv manager: stage ", s, " has layers [", st.layer_begin, ", ", st.layer_end, ") and ",
          st.capacity_blocks, " blocks in ", st.head_tables, " tables per layer; want layers from ",
          next, " on, a capacity >= 0 and >= 1 table per layer"));
    }
    next = st.layer_end;
  }
  return KvManager(options);
}

KvManager::KvManager(const KvManagerOptions& options) : options_(options) {
  for (size_t s = 0; s < options_.stages.size(); ++s) {
    const KvStage& st = options_.stages[s];
    stage_of_layer_.insert(stage_of_layer_.end(), st.layer_end - st.layer_begin,
                           static_cast<int>(s));
    free_.push_back(st.capacity_blocks);
  }
}

int64_t KvManager::BlocksFor(int64_t tokens) const {
  return tokens <= 0 ? 0 : (tokens + options_.block_tokens - 1) / options_.block_tokens;
}

int64_t KvManager::LayerBlocks(const Sequence& q, int layer, int64_t extra) const {
  if (q.head_tokens[layer].empty()) return head_tables(layer) * BlocksFor(q.tokens[layer] + extra);
  int64_t n = 0;
  for (int64_t t : q.head_tokens[layer]) n += BlocksFor(t + extra);
  return n;
}

int64_t KvManager::HeldBlocks(const KvLayerHeld& held) const {
  if (held.head_tokens.empty()) return head_tables(held.layer) * BlocksFor(held.tokens);
  int64_t n = 0;
  for (int64_t t : held.head_tokens) n += BlocksFor(t);
  return n;
}

bool KvManager::Fits(absl::Span<const int64_t> need, absl::Span<const int64_t> headroom) const {
  for (size_t s = 0; s < free_.size(); ++s) {
    const int64_t extra = s < headroom.size() ? headroom[s] : 0;
    if (need[s] + extra > free_[s]) return false;
  }
  return true;
}

absl::Status KvManager::CheckEverFits(uint64_t id, int64_t tokens) const {
  for (int s = 0; s < num_stages(); ++s) {
    const KvStage& st = options_.stages[s];
    const int64_t per_layer = st.head_tables * BlocksFor(tokens);
    const int layers = st.layer_end - st.layer_begin;
    if (per_layer > st.capacity_blocks / layers) {
      // INVALID_ARGUMENT, not RESOURCE_EXHAUSTED: retrying cannot help (HTTP 400, not 429).
      return absl::InvalidArgumentError(
          absl::StrCat("request ", id, " needs ", per_layer, " KV blocks in each of the ", layers,
                       " layers of stage ", s, " but the stage's pool holds ", st.capacity_blocks,
                       " blocks; it can never fit (shorten the prompt or max_tokens)"));
    }
  }
  return absl::OkStatus();
}

bool KvManager::CanAllocate(int64_t tokens, absl::Span<const int64_t> headroom) const {
  std::vector<int64_t> need(num_stages(), 0);
  for (int l = 0; l < num_layers(); ++l) {
    need[stage_of_layer_[l]] += head_tables(l) * BlocksFor(tokens);
  }
  return Fits(need, headroom);
}

absl::Status KvManager::Allocate(uint64_t id, int64_t tokens) {
  if (seqs_.contains(id)) {
    return absl::AlreadyExistsError(absl::StrCat("kv manager: sequence ", id, " already holds KV"));
  }
  if (!CanAllocate(tokens)) {
    return absl::ResourceExhaustedError(absl::StrCat("kv manager: no free blocks for ", tokens,
                                                     " tokens in every layer of sequence ", id));
  }
  Sequence& q = seqs_[id];
  q.tokens.assign(num_layers(), 0);
  q.head_tokens.assign(num_layers(), {});
  q.blocks.resize(num_layers());
  for (int l = 0; l < num_layers(); ++l) q.blocks[l] = head_tables(l) * BlocksFor(tokens);
  for (int l = 0; l < num_layers(); ++l) free_[stage_of_layer_[l]] -= q.blocks[l];
  return absl::OkStatus();
}

std::vector<int64_t> KvManager::GrowthBlocks(uint64_t id, int64_t n) const {
  std::vector<int64_t> need(num_stages(), 0);
  auto it = seqs_.find(id);
  if (it == seqs_.end()) return need;
  const Sequence& q = it->second;
  for (int l = 0; l < num_layers(); ++l) {
    need[stage_of_layer_[l]] += std::max<int64_t>(0, LayerBlocks(q, l, n) - q.blocks[l]);
  }
  return need;
}

absl::Status KvManager::Grow(uint64_t id, int64_t n) {
  auto it = seqs_.find(id);
  if (it == seqs_.end()) {
    return absl::NotFoundError(absl::StrCat("kv manager: sequence ", id, " is unknown"));
  }
  if (!Fits(GrowthBlocks(id, n))) {
    return absl::ResourceExhaustedError(absl::StrCat("kv manager: sequence ", id, " needs ",
                                                     "blocks for ", n,
                                                     " more tokens; a stage "
                                                     "has too few free"));
  }
  Sequence& q = it->second;
  for (int l = 0; l < num_layers(); ++l) {
    q.tokens[l] += n;
    for (int64_t& t : q.head_tokens[l]) t += n;  // every head grows
    const int64_t extra = std::max<int64_t>(0, LayerBlocks(q, l, 0) - q.blocks[l]);
    q.blocks[l] += extra;
    free_[stage_of_layer_[l]] -= extra;
  }
  return absl::OkStatus();
}

absl::Status KvManager::CheckReport(uint64_t id, absl::Span<const KvLayerHeld> held) const {
  if (static_cast<int>(held.size()) != num_layers()) {
    return absl::InternalError(absl::StrCat("KV ledger: the stages report ", held.size(),
                                            " layers of sequence ", id, "; the model has ",
                                            num_layers()));
  }
  for (int l = 0; l < num_layers(); ++l) {
    if (held[l].layer != l) {
      return absl::InternalError(absl::StrCat("KV ledger: the stages' report of sequence ", id,
                                              " names layer ", held[l].layer, " in place of ", l));
    }
    const size_t heads = held[l].head_tokens.size();
    int64_t most = 0, least = 0;
    for (int64_t t : held[l].head_tokens) {
      most = std::max(most, t);
      least = std::min(least, t);
    }
    if (heads != 0 &&
        (static_cast<int>(heads) != head_tables(l) || most != held[l].tokens || least < 0)) {
      return absl::InternalError(
          absl::StrCat("KV ledger: the stages report ", heads, " head counts (largest ", most,
                       ") of sequence ", id, " layer ", l, " holding ", held[l].tokens,
                       " tokens; the stage keeps ", head_tables(l), " tables per layer"));
    }
  }
  return absl::OkStatus();
}

absl::Status KvManager::Shrink(uint64_t id, absl::Span<const KvLayerHeld> held,
                               int64_t headroom_tokens) {
  auto it = seqs_.find(id);
  if (it == seqs_.end()) {
    return absl::NotFoundError(absl::StrCat("kv manager: sequence ", id, " is unknown"));
  }
  if (absl::Status s = CheckReport(id, held); !s.ok()) return s;
  Sequence& q = it->second;
  for (int l = 0; l < num_layers(); ++l) {
    if (held[l].tokens < 0 || held[l].tokens > q.tokens[l] ||
        held[l].blocks != HeldBlocks(held[l])) {
      return absl::InternalError(absl::StrCat(
          "KV ledger: sequence ", id, " layer ", l, ": after compaction the stage holds ",
          held[l].tokens, " tokens in ", held[l].blocks, " blocks; the ledger had ", q.tokens[l],
          " tokens in ", LayerBlocks(q, l, 0), " blocks (a compaction only shrinks)"));
    }
  }
  for (int l = 0; l < num_layers(); ++l) {
    const std::vector<int64_t>& heads = held[l].head_tokens;
    const bool uniform =
        std::all_of(heads.begin(), heads.end(), [&](int64_t t) { return t == held[l].tokens; });
    q.tokens[l] = held[l].tokens;
    q.head_tokens[l] = uniform ? std::vector<int64_t>() : heads;
    const int64_t blocks =
        std::min(q.blocks[l], LayerBlocks(q, l, std::max<int64_t>(headroom_tokens, 0)));
    free_[stage_of_layer_[l]] += q.blocks[l] - blocks;
    q.blocks[l] = blocks;
  }
  return absl::OkStatus();
}

absl::Status KvManager::Verify(uint64_t id, absl::Span<const KvLayerHeld> held) const {
  auto it = seqs_.find(id);
  if (it == seqs_.end()) return absl::OkStatus();
  if (absl::Status s = CheckReport(id, held); !s.ok()) return s;
  const Sequence& q = it->second;
  for (int l = 0; l < num_layers(); ++l) {
    const int64_t want = LayerBlocks(q, l, 0);
    bool heads_agree = true;
    for (size_t h = 0; h < held[l].head_tokens.size(); ++h) {
      const int64_t mine = q.head_tokens[l].empty() ? q.tokens[l] : q.head_tokens[l][h];
      heads_agree = heads_agree && held[l].head_tokens[h] == mine;
    }
    if (held[l].tokens != q.tokens[l] || held[l].blocks != want || !heads_agree) {
      return absl::InternalError(absl::StrCat("KV ledger: sequence ", id, " layer ", l,
                                              ": the stage holds ", held[l].tokens, " tokens in ",
                                              held[l].blocks, " blocks, the coordinator's ledger ",
                                              q.tokens[l], " tokens in ", want, " blocks"));
    }
  }
  return absl::OkStatus();
}

bool KvManager::Free(uint64_t id) {
  auto it = seqs_.find(id);
  if (it == seqs_.end()) return false;
  for (int l = 0; l < num_layers(); ++l) free_[stage_of_layer_[l]] += it->second.blocks[l];
  seqs_.erase(it);
  return true;
}

int64_t KvManager::tokens(uint64_t id, int layer) const {
  auto it = seqs_.find(id);
  if (it == seqs_.end() || layer < 0 || layer >= num_layers()) return 0;
  return it->second.tokens[layer];
}

int64_t KvManager::reserved(uint64_t id, int layer) const {
  auto it = seqs_.find(id);
  if (it == seqs_.end() || layer < 0 || layer >= num_layers()) return 0;
  return it->second.blocks[layer];
}

}  // namespace xkv
