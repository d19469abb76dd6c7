#include "absl/strings/str_cat.h"
#include "kernels/cuda/block_select.cuh"
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/kv_compact.cuh"

namespace xkv::cuda {
namespace {

constexpr int kSelectThreads = 1024;
constexpr int kCopyThreads = 256;

// grid = n_kv_heads. scores fp32 [heads, P]; kept int32 [heads, budget + T - P].
__global__ void __launch_bounds__(kSelectThreads)
    SelectKeptKernel(const float* __restrict__ scores, int64_t prefix, int64_t budget,
                     int64_t seq_len, int32_t* __restrict__ kept) {
  __shared__ internal::BlockSelectSmem sm;
  const int g = blockIdx.x;
  const float* row = scores + g * prefix;
  int32_t* out = kept + g * (budget + seq_len - prefix);
  auto key = [row](int64_t i) { return internal::OrderedKey(row[i]); };
  auto all = [](int64_t) { return true; };
  auto one = [](int64_t) { return 1.0f; };
  if (budget > 0) {
    float above = 0.f;
    const uint32_t thr =
        internal::RadixSelect(prefix, all, key, one, static_cast<float>(budget), &above, sm);
    const int64_t ties = budget - static_cast<int64_t>(above);  // lowest-index ties to keep
    const int64_t cut = internal::NthMatch(
        prefix, [&](int64_t i) { return key(i) == thr; }, ties, sm);
    int64_t base = 0;
    for (int64_t c0 = 0; c0 < prefix; c0 += blockDim.x) {
      const int64_t i = c0 + threadIdx.x;
      bool keep = false;
      if (i < prefix) {
        const uint32_t k = key(i);
        keep = k > thr || (k == thr && i <= cut);
      }
      int total = 0;
      const int excl = internal::BlockExclusiveCount(keep, &total, sm);
      if (keep) out[base + excl] = static_cast<int32_t>(i);
      base += total;
    }
  }
  for (int64_t t = threadIdx.x; t < seq_len - prefix; t += blockDim.x) {
    out[budget + t] = static_cast<int32_t>(prefix + t);
  }
}

// Flat over (slot, kv head, 16-byte chunk). caches bf16 [blocks, heads, 16, HD].
__global__ void CompactKernel(__nv_bfloat16* __restrict__ kc, __nv_bfloat16* __restrict__ vc,
                              int n_kv_heads, int head_dim, const int32_t* __restrict__ src_table,
                              const int32_t* __restrict__ kept, int64_t n_keep,
                              const int32_t* __restrict__ dst_table) {
  const int chunks = head_dim / 8;
  const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (idx >= n_keep * n_kv_heads * chunks) return;
  const int c = static_cast<int>(idx % chunks);
  const int g = static_cast<int>((idx / chunks) % n_kv_heads);
  const int64_t s = idx / (static_cast<int64_t>(chunks) * n_kv_heads);
  const int64_t src_slot = kept[g * n_keep + s];
  const int64_t src =
      ((static_cast<int64_t>(src_table[src_slot >> 4]) * n_kv_heads + g) * kKvBlockTokens +
       (src_slot & 15)) *
          head_dim +
      c * 8;
  const int64_t dst =
      ((static_cast<int64_t>(dst_table[s >> 4]) * n_kv_heads + g) * kKvBlockTokens + (s & 15)) *
          head_dim +
      c * 8;
  *reinterpret_cast<uint4*>(kc + dst) = *reinterpret_cast<const uint4*>(kc + src);
  *reinterpret_cast<uint4*>(vc + dst) = *reinterpret_cast<const uint4*>(vc + src);
}

}  // namespace

absl::Status LaunchSelectKeptSlots(const float* scores, int n_kv_heads, int64_t prefix_len,
                                   int64_t budget, int64_t seq_len, int32_t* kept,
                                   cudaStream_t stream) {
  if (n_kv_heads < 1 || prefix_len < 0 || budget < 0 || budget > prefix_len ||
      seq_len < prefix_len || seq_len > 0x7fffffff || prefix_len > (1LL << 24)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cuda select_kept: need 0 <= budget (", budget, ") <= prefix_len (", prefix_len,
        ") <= seq_len (", seq_len, "), prefix_len <= 2^24, n_kv_heads (", n_kv_heads, ") >= 1"));
  }
  if (budget + seq_len - prefix_len == 0) return absl::OkStatus();
  if (kept == nullptr || (budget > 0 && scores == nullptr)) {
    return absl::InvalidArgumentError("cuda select_kept: null pointer");
  }
  SelectKeptKernel<<<n_kv_heads, kSelectThreads, 0, stream>>>(scores, prefix_len, budget, seq_len,
                                                              kept);
  CUDA_RETURN_IF_LAUNCH_ERROR();
  return absl::OkStatus();
}

absl::Status LaunchCompactKv(const PagedKvLayer& cache, const int32_t* src_block_table,
                             const int32_t* kept, int64_t n_keep, const int32_t* dst_block_table,
                             cudaStream_t stream) {
  if (absl::Status st = CheckPagedKvLayer(cache, "cuda compact_kv"); !st.ok()) return st;
  if (cache.head_table_stride != 0) {
    return absl::InvalidArgumentError(
        "cuda compact_kv: per-KV-head tables: compact each head on OneHeadView(cache)");
  }
  if (n_keep < 0 || internal::CeilDiv(n_keep, kKvBlockTokens) > cache.num_blocks) {
    return absl::InvalidArgumentError(absl::StrCat("cuda compact_kv: n_keep ", n_keep,
                                                   " does not fit ", cache.num_blocks, " blocks"));
  }
  if (n_keep == 0) return absl::OkStatus();
  if (src_block_table == nullptr || kept == nullptr || dst_block_table == nullptr) {
    return absl::InvalidArgumentError("cuda compact_kv: null pointer");
  }
  const int64_t work = n_keep * cache.n_kv_heads * (cache.head_dim / 8);
  CompactKernel<<<static_cast<unsigned>(internal::CeilDiv(work, kCopyThreads)), kCopyThreads, 0,
                  stream>>>(cache.k, cache.v, cache.n_kv_heads, cache.head_dim, src_block_table,
                            kept, n_keep, dst_block_table);
  CUDA_RETURN_IF_LAUNCH_ERROR();
  return absl::OkStatus();
}

}  // namespace xkv::cuda
