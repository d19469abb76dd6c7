// CudaLlamaModel's KV pool: one paged bf16 pool shared by every layer of the stage, the
// sequences' per-layer block tables, compaction into fresh blocks, and an fp32 copy for tests.
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
    // What this stage took so far (weights, scratch, cuBLAS): measured, not estimated.
    const int64_t used = budget_.free_bytes - static_cast<int64_t>(free_bytes);
    ASSIGN_OR_RETURN(num_blocks_, KvPoolBlocks(budget_, used));
    sized_from_memory_ = true;
  } else if (num_blocks_ == 0) {
    size_t free_bytes = 0, total = 0;
    CUDA_RETURN_IF_ERROR(cudaMemGetInfo(&free_bytes, &total));
    num_blocks_ =
        static_cast<int64_t>(static_cast<double>(free_bytes) * o.kv_memory_fraction) / block_bytes;
  }
  if (num_blocks_ < 1 || num_blocks_ > INT32_MAX / kBlock) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cuda engine: KV pool of ", num_blocks_, " blocks is not possible"));
  }
  const int64_t block_elems = int64_t{c.n_kv_heads} * kBlock * c.head_dim;
  cache_.num_blocks = num_blocks_;
  cache_.n_kv_heads = c.n_kv_heads;
  cache_.head_dim = c.head_dim;
  absl::Status st = Alloc(num_blocks_ * block_elems, &cache_.k);
  if (st.ok()) st = Alloc(num_blocks_ * block_elems, &cache_.v);
  if (!st.ok()) {
    return absl::ResourceExhaustedError(absl::StrCat("cuda engine: no device memory for ",
                                                     num_blocks_, " KV blocks: ", st.message()));
  }
  free_blocks_.resize(num_blocks_);
  for (int64_t b = 0; b < num_blocks_; ++b) {
    free_blocks_[b] = static_cast<int32_t>(num_blocks_ - 1 - b);
  }
  CUDA_RETURN_IF_ERROR(cudaDeviceSynchronize());
  return absl::OkStatus();
}

// ---- sequences -------------------------------------------------------------------------------

int64_t CudaLlamaModel::CacheLength(uint64_t id, int layer) const {
  auto it = sequences_.find(id);
  if (it == sequences_.end() || layer < layer_begin_ || layer >= layer_end_) return -1;
  return it->second.lengths[li(layer)];
}

int64_t CudaLlamaModel::logical_position(uint64_t id) const {
  auto it = sequences_.find(id);
  return it == sequences_.end() ? -1 : it->second.position;
}

void CudaLlamaModel::FreeBlocks(const std::vector<int32_t>& blocks) {
  free_blocks_.insert(free_blocks_.end(), blocks.begin(), blocks.end());
}

void CudaLlamaModel::ReleaseSequence(uint64_t id) {
  auto it = sequences_.find(id);
  if (it == sequences_.end()) return;
  for (const std::vector<int32_t>& blocks : it->second.blocks) FreeBlocks(blocks);
  sequences_.erase(it);
}

// ---- compaction ------------------------------------------------------------------------------

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
  const int64_t len = s.lengths[li(layer)];
  if (len != prompt_len) {
    return absl::FailedPreconditionError(absl::StrCat("cuda engine: layer ", layer, " holds ", len,
                                                      " tokens, not the prompt's ", prompt_len));
  }
  const int kvh = config_.n_kv_heads;
  if (static_cast<int>(kept.size()) != kvh) {
    return absl::InvalidArgumentError("cuda engine: one kept list per KV head");
  }
  const int64_t n_keep = kept[0].size();
  std::vector<int32_t> flat;
  flat.reserve(kvh * n_keep);
  for (const std::vector<int32_t>& k : kept) {
    if (static_cast<int64_t>(k.size()) != n_keep) {
      return absl::InvalidArgumentError("cuda engine: KV heads keep different counts");
    }
    for (size_t j = 0; j < k.size(); ++j) {
      if (k[j] < 0 || k[j] >= len || (j > 0 && k[j] <= k[j - 1])) {
        return absl::InvalidArgumentError("cuda engine: kept slots not increasing in range");
      }
    }
    flat.insert(flat.end(), k.begin(), k.end());
  }
  const int64_t need = CeilDiv(n_keep, kBlock);
  if (need > static_cast<int64_t>(free_blocks_.size())) {
    return absl::ResourceExhaustedError("cuda engine: no free blocks to compact into");
  }
  std::vector<int32_t> dst(free_blocks_.end() - need, free_blocks_.end());
  RETURN_IF_ERROR(CopySlots(s.blocks[li(layer)], flat, n_keep, dst));
  free_blocks_.resize(free_blocks_.size() - need);
  FreeBlocks(s.blocks[li(layer)]);
  s.blocks[li(layer)] = std::move(dst);
  s.lengths[li(layer)] = n_keep;
  return absl::OkStatus();
}

absl::Status CudaLlamaModel::CopySlots(const std::vector<int32_t>& src,
                                       absl::Span<const int32_t> kept, int64_t n_keep,
                                       const std::vector<int32_t>& dst) {
  CUDA_RETURN_IF_ERROR(cudaSetDevice(options_.device));
  if (n_keep == 0) return absl::OkStatus();
  CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(kept_, kept.data(), kept.size() * sizeof(int32_t),
                                       cudaMemcpyHostToDevice, stream_));
  CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(compact_tables_, src.data(), src.size() * sizeof(int32_t),
                                       cudaMemcpyHostToDevice, stream_));
  CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(compact_tables_ + max_blocks_per_seq_, dst.data(),
                                       dst.size() * sizeof(int32_t), cudaMemcpyHostToDevice,
                                       stream_));
  RETURN_IF_ERROR(cuda::LaunchCompactKv(cache_, compact_tables_, kept_, n_keep,
                                        compact_tables_ + max_blocks_per_seq_, stream_));
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
  const Sequence& src = it->second;
  int64_t need = 0;
  for (const std::vector<int32_t>& blocks : src.blocks) need += blocks.size();
  if (need > static_cast<int64_t>(free_blocks_.size())) {
    return absl::ResourceExhaustedError(absl::StrCat("cuda engine: copying sequence ", from,
                                                     " needs ", need, " KV blocks, ",
                                                     free_blocks_.size(), " free"));
  }
  Sequence copy;
  copy.position = src.position;
  copy.lengths = src.lengths;
  const int kvh = config_.n_kv_heads;
  for (size_t l = 0; l < src.blocks.size(); ++l) {
    const int64_t len = src.lengths[l];
    std::vector<int32_t> dst(free_blocks_.end() - src.blocks[l].size(), free_blocks_.end());
    free_blocks_.resize(free_blocks_.size() - dst.size());
    std::vector<int32_t> identity(kvh * len);  // every slot of every head, in place
    for (int g = 0; g < kvh; ++g) {
      for (int64_t t = 0; t < len; ++t) identity[g * len + t] = static_cast<int32_t>(t);
    }
    absl::Status st = CopySlots(src.blocks[l], identity, len, dst);
    copy.blocks.push_back(std::move(dst));
    if (!st.ok()) {
      for (const std::vector<int32_t>& b : copy.blocks) FreeBlocks(b);
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
  const int64_t block_elems = int64_t{kvh} * kBlock * hd;
  auto copy = std::make_unique<KvCache>(layer_begin_, layer_end_, kvh, hd);
  cudaSetDevice(options_.device);
  // The copies below run on the legacy stream, which does not wait for stream_ (a resident step
  // returns before its layers have run).
  if (cudaStreamSynchronize(stream_) != cudaSuccess) return nullptr;
  for (int l = layer_begin_; l < layer_end_; ++l) {
    const int64_t len = it->second.lengths[li(l)];
    const std::vector<int32_t>& blocks = it->second.blocks[li(l)];
    std::vector<uint16_t> kb(blocks.size() * block_elems), vb(kb.size());
    for (size_t j = 0; j < blocks.size(); ++j) {
      const int64_t off = int64_t{blocks[j]} * block_elems;
      if (cudaMemcpy(kb.data() + j * block_elems, cache_.k + off, block_elems * 2,
                     cudaMemcpyDeviceToHost) != cudaSuccess ||
          cudaMemcpy(vb.data() + j * block_elems, cache_.v + off, block_elems * 2,
                     cudaMemcpyDeviceToHost) != cudaSuccess) {
        return nullptr;
      }
    }
    // bf16 [block][head][16][hd] → fp32 [slot][head][hd]
    std::vector<float> k(len * kvh * hd), v(k.size());
    for (int64_t s = 0; s < len; ++s) {
      for (int g = 0; g < kvh; ++g) {
        const int64_t src = (s / kBlock) * block_elems + (int64_t{g} * kBlock + s % kBlock) * hd;
        for (int d = 0; d < hd; ++d) {
          k[(s * kvh + g) * hd + d] = cpu::Bf16ToF32(kb[src + d]);
          v[(s * kvh + g) * hd + d] = cpu::Bf16ToF32(vb[src + d]);
        }
      }
    }
    if (!copy->Append(l, k.data(), v.data(), len, int64_t{kvh} * hd).ok()) return nullptr;
  }
  return copy;
}

}  // namespace xkv
