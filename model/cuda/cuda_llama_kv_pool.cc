// CudaLlamaModel's KV pool: one paged bf16 pool shared by every layer of the stage, handed out in
// head-blocks (16 rows of one KV head), the sequences' per-(layer, KV head) tables, compaction into
// fresh head-blocks (each head its own count), and an fp32 copy for tests.
#include <algorithm>
#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "kernels/cpu/half.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/kv_compact.cuh"
#include "model/cuda/cuda_llama_model.h"

namespace xkv {

absl::Status CudaLlamaModel::InitPool() {
  const ModelConfig& c = config_;
  const CudaEngineOptions& o = options_;
  const int64_t block_bytes = 2 * int64_t{c.n_kv_heads} * kBlock * c.head_dim * 2;  // K + V bf16
  num_blocks_ = o.num_kv_blocks;
  if (num_blocks_ == 0 && o.gpu_memory_utilization > 0) {
    size_t free_bytes = 0, total = 0;
    CUDA_RETURN_IF_ERROR(cudaMemGetInfo(&free_bytes, &total));
    // What this stage took so far (weights, scratch, cuBLAS): measured, within what it allocated
    // itself (a neighbour loading on the same device meanwhile is not this stage's).
    const int64_t used = StageUsedBytes(
        budget_.free_bytes - static_cast<int64_t>(free_bytes),
        allocated_bytes_ + static_cast<int64_t>(staging_bytes_ + cublas_->workspace_bytes()));
    ASSIGN_OR_RETURN(num_blocks_, KvPoolBlocks(budget_, used));
    sized_from_memory_ = true;
  } else if (num_blocks_ == 0) {
    size_t free_bytes = 0, total = 0;
    CUDA_RETURN_IF_ERROR(cudaMemGetInfo(&free_bytes, &total));
    num_blocks_ =
        static_cast<int64_t>(static_cast<double>(free_bytes) * o.kv_memory_fraction) / block_bytes;
  }
  if (num_blocks_ < 1 || num_blocks_ > INT32_MAX / kBlock / c.n_kv_heads) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cuda engine: KV pool of ", num_blocks_, " blocks is not possible"));
  }
  const int64_t block_elems = int64_t{c.n_kv_heads} * kBlock * c.head_dim;
  cache_.num_blocks = num_blocks_;
  cache_.n_kv_heads = c.n_kv_heads;
  cache_.head_dim = c.head_dim;
  cache_.head_table_stride = max_blocks_per_seq_;
  absl::Status st = Alloc(num_blocks_ * block_elems, &cache_.k);
  if (st.ok()) st = Alloc(num_blocks_ * block_elems, &cache_.v);
  if (!st.ok()) {
    return absl::ResourceExhaustedError(absl::StrCat("cuda engine: no device memory for ",
                                                     num_blocks_, " KV blocks: ", st.message()));
  }
  pool_ = HeadBlockPool(num_blocks_ * c.n_kv_heads, layer_end_ - layer_begin_, c.n_kv_heads);
  CUDA_RETURN_IF_ERROR(cudaDeviceSynchronize());
  return absl::OkStatus();
}

// ---- sequences -------------------------------------------------------------------------------

int64_t CudaLlamaModel::CacheLength(uint64_t id, int layer) const {
  auto it = sequences_.find(id);
  if (it == sequences_.end() || layer < layer_begin_ || layer >= layer_end_) return -1;
  // The longest KV head (every head's length without per-head budgets).
  return pool_.MaxLength(it->second.kv, li(layer));
}

int64_t CudaLlamaModel::HeadCacheLength(uint64_t id, int layer, int head) const {
  auto it = sequences_.find(id);
  if (it == sequences_.end() || layer < layer_begin_ || layer >= layer_end_ || head < 0 ||
      head >= config_.n_kv_heads || it->second.kv.lengths.empty()) {
    return -1;
  }
  return it->second.kv.lengths[pool_.Index(li(layer), head)];
}

int64_t CudaLlamaModel::logical_position(uint64_t id) const {
  auto it = sequences_.find(id);
  return it == sequences_.end() ? -1 : it->second.position;
}

void CudaLlamaModel::ReleaseSequence(uint64_t id) {
  auto it = sequences_.find(id);
  if (it == sequences_.end()) return;
  pool_.Release(it->second.kv);
  sequences_.erase(it);
}

// ---- compaction ------------------------------------------------------------------------------

absl::Status CudaLlamaModel::UndoDecode(absl::Span<const uint64_t> ids) {
  for (uint64_t id : ids) {  // all checked first: nothing changes on error
    auto it = sequences_.find(id);
    bool empty = it == sequences_.end() || it->second.position < 1 || it->second.kv.lengths.empty();
    for (size_t j = 0; !empty && j < it->second.kv.lengths.size(); ++j) {
      empty = it->second.kv.lengths[j] < 1;
    }
    if (empty) {
      return absl::InvalidArgumentError(
          absl::StrCat("cuda engine: sequence ", id, " has no decoded token to undo"));
    }
  }
  for (uint64_t id : ids) {
    Sequence& s = sequences_.at(id);
    for (int64_t& len : s.kv.lengths) --len;
    --s.position;
    pool_.Trim(s.kv);         // a head-block the undone slot opened goes back
    s.epoch = ++next_epoch_;  // the step slots' tables are refilled
  }
  return absl::OkStatus();
}

absl::Status CudaLlamaModel::CompactLayer(uint64_t id, int layer, int64_t prompt_len,
                                          absl::Span<const std::vector<int32_t>> kept) {
  auto it = sequences_.find(id);
  if (it == sequences_.end()) {
    return absl::NotFoundError(absl::StrCat("cuda engine: sequence ", id, " is unknown"));
  }
  if (layer < layer_begin_ || layer >= layer_end_) {
    return absl::InvalidArgumentError(absl::StrCat("cuda engine: layer ", layer, " not here"));
  }
  Sequence& s = it->second;
  const int64_t len = CacheLength(id, layer);
  if (len != prompt_len) {
    return absl::FailedPreconditionError(absl::StrCat("cuda engine: layer ", layer, " holds ", len,
                                                      " tokens, not the prompt's ", prompt_len));
  }
  // Each KV head keeps its own count (per-head budgets) in ceil(count / 16) fresh head-blocks.
  const int64_t l = li(layer);
  ASSIGN_OR_RETURN(std::vector<std::vector<int32_t>> fresh, pool_.TakeForKept(s.kv, l, kept));
  std::vector<std::vector<int32_t>> src(config_.n_kv_heads);
  for (int g = 0; g < config_.n_kv_heads; ++g) src[g] = s.kv.blocks[pool_.Index(l, g)];
  if (absl::Status st = CopyHeadSlots(src, kept, fresh); !st.ok()) {
    for (const std::vector<int32_t>& b : fresh) pool_.Free(b);
    return st;
  }
  pool_.FinishCompact(s.kv, l, std::move(fresh), kept);
  s.epoch = ++next_epoch_;  // new head-blocks: the step slots' tables are stale
  return absl::OkStatus();
}

absl::Status CudaLlamaModel::CopyHeadSlots(absl::Span<const std::vector<int32_t>> src,
                                           absl::Span<const std::vector<int32_t>> kept,
                                           absl::Span<const std::vector<int32_t>> dst) {
  CUDA_RETURN_IF_ERROR(cudaSetDevice(options_.device));
  const int kvh = config_.n_kv_heads;
  const int64_t mb = max_blocks_per_seq_;
  // Pageable sources: each copy returns once its bytes are staged.
  for (int g = 0; g < kvh; ++g) {
    if (kept[g].empty()) continue;
    CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(kept_ + g * options_.max_seq_len, kept[g].data(),
                                         kept[g].size() * sizeof(int32_t), cudaMemcpyHostToDevice,
                                         stream_));
    CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(compact_tables_ + g * mb, src[g].data(),
                                         src[g].size() * sizeof(int32_t), cudaMemcpyHostToDevice,
                                         stream_));
    CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(compact_tables_ + (kvh + g) * mb, dst[g].data(),
                                         dst[g].size() * sizeof(int32_t), cudaMemcpyHostToDevice,
                                         stream_));
  }
  // Per-KV-head tables are ordinary block tables of the one-head view (paged_kv.cuh).
  const cuda::PagedKvLayer one_head = cuda::OneHeadView(cache_);
  for (int g = 0; g < kvh; ++g) {
    if (kept[g].empty()) continue;
    RETURN_IF_ERROR(cuda::LaunchCompactKv(
        one_head, compact_tables_ + g * mb, kept_ + g * options_.max_seq_len,
        static_cast<int64_t>(kept[g].size()), compact_tables_ + (kvh + g) * mb, stream_));
  }
  CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  return absl::OkStatus();
}

absl::Status CudaLlamaModel::CopySequence(uint64_t from, uint64_t to) {
  auto it = sequences_.find(from);
  if (it == sequences_.end()) {
    return absl::NotFoundError(absl::StrCat("cuda engine: sequence ", from, " is unknown"));
  }
  if (sequences_.contains(to)) {
    return absl::AlreadyExistsError(absl::StrCat("cuda engine: sequence ", to, " exists"));
  }
  const HeadTables& src = it->second.kv;
  Sequence copy;
  copy.position = it->second.position;
  copy.epoch = ++next_epoch_;
  ASSIGN_OR_RETURN(copy.kv, pool_.TakeCopyOf(src));
  const int kvh = config_.n_kv_heads;
  for (int64_t l = 0; l < layer_end_ - layer_begin_; ++l) {
    std::vector<std::vector<int32_t>> heads_src(kvh), identity(kvh), heads_dst(kvh);
    for (int g = 0; g < kvh; ++g) {
      const int64_t j = pool_.Index(l, g);
      heads_src[g] = src.blocks[j];
      heads_dst[g] = copy.kv.blocks[j];
      identity[g].resize(src.lengths[j]);  // every slot of the head, in place
      for (size_t t = 0; t < identity[g].size(); ++t) identity[g][t] = static_cast<int32_t>(t);
    }
    if (absl::Status st = CopyHeadSlots(heads_src, identity, heads_dst); !st.ok()) {
      pool_.Release(copy.kv);
      return st;
    }
  }
  sequences_.emplace(to, std::move(copy));
  return absl::OkStatus();
}

std::unique_ptr<KvCache> CudaLlamaModel::CacheCopy(uint64_t id) const {
  auto it = sequences_.find(id);
  if (it == sequences_.end()) return nullptr;
  const int kvh = config_.n_kv_heads, hd = config_.head_dim;
  const int64_t run = kBlock * hd;  // elements of one head-block
  auto copy = std::make_unique<KvCache>(layer_begin_, layer_end_, kvh, hd);
  cudaSetDevice(options_.device);
  // The copies below run on the legacy stream, which does not wait for stream_ (a resident step
  // returns before its layers have run).
  if (cudaStreamSynchronize(stream_) != cudaSuccess) return nullptr;
  for (int l = layer_begin_; l < layer_end_; ++l) {
    const int64_t len = CacheLength(id, l);
    // fp32 [slot][head][hd]; rows of a head past its own length stay zero and are dropped below.
    std::vector<float> k(len * kvh * hd, 0.f), v(k.size(), 0.f);
    std::vector<std::vector<int32_t>> rows(kvh);
    bool ragged = false;
    for (int g = 0; g < kvh; ++g) {
      const int64_t head_len = it->second.kv.lengths[pool_.Index(li(l), g)];
      const std::vector<int32_t>& blocks = it->second.kv.blocks[pool_.Index(li(l), g)];
      std::vector<uint16_t> kb(blocks.size() * run), vb(kb.size());
      for (size_t j = 0, e = 0; j < blocks.size(); j = e) {  // one copy per run of consecutive ids
        for (e = j + 1; e < blocks.size() && blocks[e] == blocks[e - 1] + 1;) ++e;
        const int64_t off = int64_t{blocks[j]} * run, bytes = (e - j) * run * 2;
        if (cudaMemcpy(kb.data() + j * run, cache_.k + off, bytes, cudaMemcpyDeviceToHost) !=
                cudaSuccess ||
            cudaMemcpy(vb.data() + j * run, cache_.v + off, bytes, cudaMemcpyDeviceToHost) !=
                cudaSuccess) {
          return nullptr;
        }
      }
      for (int64_t s = 0; s < head_len; ++s) {
        for (int d = 0; d < hd; ++d) {
          k[(s * kvh + g) * hd + d] = cpu::Bf16ToF32(kb[s * hd + d]);
          v[(s * kvh + g) * hd + d] = cpu::Bf16ToF32(vb[s * hd + d]);
        }
      }
      rows[g].resize(head_len);
      for (int64_t s = 0; s < head_len; ++s) rows[g][s] = static_cast<int32_t>(s);
      ragged = ragged || head_len != len;
    }
    if (!copy->Append(l, k.data(), v.data(), len, int64_t{kvh} * hd).ok()) return nullptr;
    // Per-head counts: each head keeps its own rows (KvCache frees the padding).
    if (ragged && !copy->Compact(l, rows).ok()) return nullptr;
  }
  return copy;
}

}  // namespace xkv
