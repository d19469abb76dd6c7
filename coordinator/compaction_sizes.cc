#include "coordinator/compaction_sizes.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace xkv {

absl::StatusOr<std::vector<xkv::v1::LayerSize>> CompactedLayerSizes(
    absl::Span<const xkv::v1::LayerSize> before, absl::Span<const int64_t> budgets,
    absl::Span<const std::vector<int64_t>> head_budgets, int64_t prompt_len, int window,
    int block_tokens) {
  if (before.size() != budgets.size() || block_tokens < 1 ||
      (!head_budgets.empty() && head_budgets.size() != before.size())) {
    return absl::FailedPreconditionError(
        absl::StrCat("compaction sizes: ", before.size(), " layers for ", budgets.size(),
                     " budgets and ", head_budgets.size(), " per-head rows"));
  }
  const auto blocks_for = [block_tokens](int64_t t) {
    return (t + block_tokens - 1) / block_tokens;
  };
  const int64_t P = prompt_len - std::min<int64_t>(std::max(window, 0), prompt_len);
  std::vector<xkv::v1::LayerSize> after;
  after.reserve(before.size());
  for (size_t l = 0; l < before.size(); ++l) {
    const xkv::v1::LayerSize& b = before[l];
    if (b.tokens() != prompt_len || b.blocks() < 1) {
      return absl::FailedPreconditionError(
          absl::StrCat("compaction sizes: layer ", b.layer(), " holds ", b.tokens(),
                       " tokens, not the whole ", prompt_len, "-token prompt"));
    }
    // A stage with per-head tables holds heads x ceil(t / block_tokens) blocks of one KV head.
    const int64_t whole = blocks_for(prompt_len);
    if (b.blocks() % whole != 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("compaction sizes: layer ", b.layer(), " holds ", b.blocks(),
                       " blocks, not a whole number of ", whole, "-block tables"));
    }
    const int64_t heads = b.blocks() / whole;
    xkv::v1::LayerSize& a = after.emplace_back();
    a.set_layer(b.layer());
    int64_t tokens = 0, blocks = 0;
    if (head_budgets.empty()) {
      tokens = std::clamp<int64_t>(budgets[l], 0, P) + (prompt_len - P);
      blocks = heads * blocks_for(tokens);
    } else {
      if (static_cast<int64_t>(head_budgets[l].size()) != heads || heads < 2) {
        return absl::FailedPreconditionError(absl::StrCat("compaction sizes: layer ", b.layer(),
                                                          " has ", heads, " head tables for ",
                                                          head_budgets[l].size(), " head budgets"));
      }
      for (int64_t hb : head_budgets[l]) {
        const int64_t t = std::clamp<int64_t>(hb, 0, P) + (prompt_len - P);
        a.add_head_tokens(t);
        tokens = std::max(tokens, t);
        blocks += blocks_for(t);
      }
    }
    a.set_tokens(tokens);
    a.set_blocks(blocks);
    a.set_bytes(b.bytes() / b.blocks() * blocks);
  }
  return after;
}

absl::Status CheckCompactedSizes(uint64_t seq_id, absl::Span<const xkv::v1::LayerSize> predicted,
                                 absl::Span<const xkv::v1::LayerSize> reported) {
  if (predicted.size() != reported.size()) {
    return absl::InternalError(absl::StrCat("KV ledger: the stages compacted ", reported.size(),
                                            " layers of sequence ", seq_id, ", the ledger ",
                                            predicted.size()));
  }
  for (size_t i = 0; i < predicted.size(); ++i) {
    const xkv::v1::LayerSize &p = predicted[i], &r = reported[i];
    const bool heads_differ =
        p.head_tokens_size() > 0 && !std::equal(p.head_tokens().begin(), p.head_tokens().end(),
                                                r.head_tokens().begin(), r.head_tokens().end());
    if (p.layer() != r.layer() || p.tokens() != r.tokens() || p.blocks() != r.blocks() ||
        heads_differ) {
      return absl::InternalError(absl::StrCat(
          "KV ledger: sequence ", seq_id, " layer ", r.layer(), ": the compaction left ",
          r.tokens(), " tokens in ", r.blocks(), " blocks, the ledger expected ", p.tokens(),
          " tokens in ", p.blocks(), " blocks (layer ", p.layer(), ")",
          heads_differ ? absl::StrCat("; per head ", absl::StrJoin(r.head_tokens(), ","), " vs ",
                                      absl::StrJoin(p.head_tokens(), ","))
                       : ""));
    }
  }
  return absl::OkStatus();
}

}  // namespace xkv
