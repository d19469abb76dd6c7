// Block-wide selection helpers (device-only, internal to kernels/cuda): radix select over
// order-preserving float keys with weights, and ordered stream compaction. Every function must
// be called by all threads of the block (blockDim.x a multiple of 32, <= 1024).
#ifndef XKV_KERNELS_CUDA_BLOCK_SELECT_CUH_
#define XKV_KERNELS_CUDA_BLOCK_SELECT_CUH_

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/cuda_common.cuh"

namespace xkv::cuda::internal {

struct BlockSelectSmem {
  float hist[256];
  int warp_counts[32];
  uint32_t prefix;
  float above;
  int total;
  int64_t found;
};

// Exclusive prefix count of `flag` over the block's threads in thread order; returns it and sets
// *total to the block's count. Ends synchronised.
__device__ inline int BlockExclusiveCount(bool flag, int* total, BlockSelectSmem& sm) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  const unsigned ballot = __ballot_sync(kFullMask, flag);
  const int in_warp = __popc(ballot & ((1u << lane) - 1u));
  __syncthreads();
  if (lane == 0) sm.warp_counts[warp] = __popc(ballot);
  __syncthreads();
  if (threadIdx.x == 0) {
    int run = 0;
    for (int w = 0; w < warps; ++w) {
      const int c = sm.warp_counts[w];
      sm.warp_counts[w] = run;
      run += c;
    }
    sm.total = run;
  }
  __syncthreads();
  *total = sm.total;
  return sm.warp_counts[warp] + in_warp;
}

// Among i in [0, n) with member(i), with weights weight(i) >= 0 and keys key(i) (OrderedKey),
// finds the largest key K with  sum_{key_i >= K} weight_i >= target  (target > 0). Returns K and
// sets *above = sum_{key_i > K} weight_i. If rounding leaves the target unreached, K is the
// smallest member key (everything is kept). Weights of 1 make it an exact top-k count select.
template <typename Member, typename Key, typename Weight>
__device__ uint32_t RadixSelect(int64_t n, Member member, Key key, Weight weight, float target,
                                float* above, BlockSelectSmem& sm) {
  uint32_t prefix = 0, mask = 0;
  float taken = 0.f;  // weight strictly above the current prefix range
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = threadIdx.x; i < 256; i += blockDim.x) sm.hist[i] = 0.f;
    __syncthreads();
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
      if (!member(i)) continue;
      const uint32_t k = key(i);
      if ((k & mask) == prefix) atomicAdd(&sm.hist[(k >> shift) & 255u], weight(i));
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      const float need = target - taken;
      float cum = 0.f;
      int digit = -1, lowest_nonzero = 0;
      for (int d = 255; d >= 0; --d) {
        if (sm.hist[d] > 0.f) lowest_nonzero = d;
        if (digit < 0 && cum + sm.hist[d] >= need && sm.hist[d] > 0.f) {
          digit = d;
          break;
        }
        cum += sm.hist[d];
      }
      if (digit < 0) {  // rounding: keep everything down to the smallest present digit
        digit = lowest_nonzero;
        cum = 0.f;
        for (int d = 255; d > digit; --d) cum += sm.hist[d];
      }
      sm.prefix = prefix | (static_cast<uint32_t>(digit) << shift);
      sm.above = taken + cum;
    }
    __syncthreads();
    prefix = sm.prefix;
    taken = sm.above;
    mask |= 255u << shift;
    __syncthreads();
  }
  *above = taken;
  return prefix;
}

// The index of the nth (1-based) i in [0, n) with match(i), in index order; -1 if fewer match.
template <typename Match>
__device__ int64_t NthMatch(int64_t n, Match match, int64_t nth, BlockSelectSmem& sm) {
  int64_t seen = 0;
  if (threadIdx.x == 0) sm.found = -1;
  for (int64_t c0 = 0; c0 < n; c0 += blockDim.x) {
    const int64_t i = c0 + threadIdx.x;
    const bool f = i < n && match(i);
    int total = 0;
    const int excl = BlockExclusiveCount(f, &total, sm);
    if (f && seen + excl + 1 == nth) sm.found = i;
    seen += total;
    if (seen >= nth) break;  // uniform: every thread sees the same totals
  }
  __syncthreads();
  return sm.found;
}

}  // namespace xkv::cuda::internal

#endif  // XKV_KERNELS_CUDA_BLOCK_SELECT_CUH_
