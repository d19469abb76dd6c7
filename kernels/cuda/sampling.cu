#include <curand_kernel.h>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/block_select.cuh"
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/sampling.cuh"

namespace xkv::cuda {
namespace {

using internal::OrderedKey;

constexpr int kThreads = 1024;

// Block argmax, lowest index on ties. Every thread gets the winner.
__device__ int64_t BlockArgmax(const float* row, int64_t vocab, float* s_val, int64_t* s_idx) {
  float best = -INFINITY;
  int64_t idx = -1;
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
    const float v = row[i];
    if (idx < 0 || v > best) best = v, idx = i;  // i increases: ties keep the lower index
  }
  for (int off = 16; off > 0; off >>= 1) {
    const float ov = __shfl_xor_sync(internal::kFullMask, best, off);
    const int64_t oi = __shfl_xor_sync(internal::kFullMask, idx, off);
    if (oi >= 0 && (idx < 0 || ov > best || (ov == best && oi < idx))) best = ov, idx = oi;
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) s_val[warp] = best, s_idx[warp] = idx;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < (blockDim.x >> 5); ++w) {
      const float ov = s_val[w];
      const int64_t oi = s_idx[w];
      if (oi >= 0 && (idx < 0 || ov > best || (ov == best && oi < idx))) best = ov, idx = oi;
    }
    s_idx[32] = idx;
  }
  __syncthreads();
  return s_idx[32];
}

// grid = batch. logits fp32 [batch, stride]; params [batch]; out int32 [batch].
__global__ void __launch_bounds__(kThreads)
    SampleKernel(const float* __restrict__ logits, int64_t stride, int64_t vocab,
                 const DeviceSamplingParams* __restrict__ params, int32_t* __restrict__ out) {
  __shared__ internal::BlockSelectSmem sm;
  __shared__ float s_val[33];
  __shared__ int64_t s_idx[33];
  __shared__ float s_chunk[kThreads];
  __shared__ double s_u;
  const int64_t b = blockIdx.x;
  const float* row = logits + b * stride;
  const DeviceSamplingParams p = params[b];
  const int64_t best = BlockArgmax(row, vocab, s_val, s_idx);
  if (!(p.temperature > 0.f) || vocab == 1) {
    if (threadIdx.x == 0) out[b] = static_cast<int32_t>(best);
    return;
  }
  const float mx = row[best];
  auto key = [row](int64_t i) { return OrderedKey(row[i]); };

  // top-k: keys above thr_k, plus ties up to id cut_k.
  bool use_k = p.top_k > 0 && p.top_k < vocab;
  uint32_t thr_k = 0;
  int64_t cut_k = vocab;
  if (use_k) {
    float above = 0.f;
    thr_k = internal::RadixSelect(
        vocab, [](int64_t) { return true; }, key, [](int64_t) { return 1.0f; },
        static_cast<float>(p.top_k), &above, sm);
    const int64_t ties = p.top_k - static_cast<int64_t>(above);
    cut_k = internal::NthMatch(
        vocab, [&](int64_t i) { return key(i) == thr_k; }, ties, sm);
  }
  auto in_k = [&](int64_t i) {
    const uint32_t k = key(i);
    return !use_k || k > thr_k || (k == thr_k && i <= cut_k);
  };

  // top-p over the untempered probabilities of the top-k set.
  const bool use_p = p.top_p > 0.f && p.top_p < 1.f;
  uint32_t thr_p = 0;
  int64_t cut_p = vocab;
  if (use_p) {
    float z = 0.f;
    for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
      if (in_k(i)) z += expf(row[i] - mx);
    }
    z = internal::BlockSum(z, s_val);
    float above = 0.f;
    thr_p = internal::RadixSelect(
        vocab, in_k, key, [&](int64_t i) { return expf(row[i] - mx); }, p.top_p * z, &above, sm);
    // Ties at the cut enter one by one (id order) until the mass reaches top_p.
    float tie_value = -INFINITY;
    for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
      if (in_k(i) && key(i) == thr_p) tie_value = row[i];
    }
    tie_value = internal::BlockMax(tie_value, s_val);
    const float w_tie = tie_value == -INFINITY ? 1.f : expf(tie_value - mx);
    int64_t ties = static_cast<int64_t>(ceilf((p.top_p * z - above) / w_tie));
    ties = ties < 1 ? 1 : ties;
    const int64_t found = internal::NthMatch(
        vocab, [&](int64_t i) { return in_k(i) && key(i) == thr_p; }, ties, sm);
    cut_p = found < 0 ? vocab : found;  // fewer ties than asked (rounding): keep them all
  }
  // min-p: p_i >= min_p * p_max  <=>  logit_i >= max + ln(min_p) (the argmax is always kept).
  const bool use_min_p = p.min_p > 0.f && p.min_p <= 1.f;
  const float floor_min_p = use_min_p ? mx + logf(p.min_p) : -INFINITY;
  auto kept = [&](int64_t i) {
    if (!in_k(i)) return false;
    if (use_min_p && row[i] < floor_min_p) return false;
    if (!use_p) return true;
    const uint32_t k = key(i);
    return k > thr_p || (k == thr_p && i <= cut_p);
  };

  // Inverse CDF of exp((l - max) / T) over the kept set, in id order: thread t owns the id range
  // [t * chunk, (t + 1) * chunk).
  const float inv_t = 1.0f / p.temperature;
  const int64_t chunk = internal::CeilDiv(vocab, blockDim.x);
  const int64_t lo = threadIdx.x * chunk, hi = internal::Min64(vocab, lo + chunk);
  float mine = 0.f;
  for (int64_t i = lo; i < hi; ++i) {
    if (kept(i)) mine += expf((row[i] - mx) * inv_t);
  }
  s_chunk[threadIdx.x] = mine;
  if (threadIdx.x == 0) {
    curandStatePhilox4_32_10_t state;
    curand_init(p.seed, 0, p.offset, &state);
    s_u = 1.0 - curand_uniform_double(&state);  // [0, 1)
  }
  __syncthreads();
  if (threadIdx.x == 0) {  // serial scan of 1024 partial sums: cheap next to the passes above
    double total = 0.0;
    for (int t = 0; t < blockDim.x; ++t) total += s_chunk[t];
    const double target = s_u * total;
    double cum = 0.0;
    int64_t pick = best;  // fallback: the argmax is always kept
    for (int t = 0; t < blockDim.x; ++t) {
      if (cum + s_chunk[t] > target && s_chunk[t] > 0.f) {
        const int64_t a = t * chunk, e = internal::Min64(vocab, a + chunk);
        for (int64_t i = a; i < e; ++i) {
          if (!kept(i)) continue;
          pick = i;
          cum += expf((row[i] - mx) * inv_t);
          if (cum > target) break;
        }
        break;
      }
      cum += s_chunk[t];
    }
    out[b] = static_cast<int32_t>(pick);
  }
}

__global__ void ApplyPenaltiesKernel(float* __restrict__ logits, int64_t stride,
                                     const int32_t* __restrict__ rows,
                                     const int32_t* __restrict__ ids,
                                     const float* __restrict__ deltas, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) logits[rows[i] * stride + ids[i]] -= deltas[i];
}

}  // namespace

absl::Status LaunchApplyPenalties(float* logits, int64_t logits_stride, int64_t vocab,
                                  const int32_t* rows, const int32_t* ids, const float* deltas,
                                  int64_t n, cudaStream_t stream) {
  if (n < 0 || vocab < 1 || logits_stride < vocab) {
    return absl::InvalidArgumentError(absl::StrCat("cuda penalties: bad sizes n=", n,
                                                   " vocab=", vocab, " stride=", logits_stride));
  }
  if (n == 0) return absl::OkStatus();
  if (logits == nullptr || rows == nullptr || ids == nullptr || deltas == nullptr) {
    return absl::InvalidArgumentError("cuda penalties: null pointer");
  }
  constexpr int kBlock = 256;
  ApplyPenaltiesKernel<<<static_cast<unsigned>((n + kBlock - 1) / kBlock), kBlock, 0, stream>>>(
      logits, logits_stride, rows, ids, deltas, n);
  CUDA_RETURN_IF_LAUNCH_ERROR();
  return absl::OkStatus();
}

absl::Status LaunchSample(const float* logits, int64_t logits_stride, int64_t batch, int64_t vocab,
                          const DeviceSamplingParams* params, int32_t* out, cudaStream_t stream) {
  if (batch < 0 || batch > 0x7fffffff || vocab < 1 || vocab > (1LL << 24) ||
      logits_stride < vocab) {
    return absl::InvalidArgumentError(absl::StrCat("cuda sample: bad sizes batch=", batch,
                                                   " vocab=", vocab,
                                                   " (<= 2^24) stride=", logits_stride));
  }
  if (batch == 0) return absl::OkStatus();
  if (logits == nullptr || params == nullptr || out == nullptr) {
    return absl::InvalidArgumentError("cuda sample: null pointer");
  }
  SampleKernel<<<static_cast<unsigned>(batch), kThreads, 0, stream>>>(logits, logits_stride, vocab,
                                                                      params, out);
  CUDA_RETURN_IF_LAUNCH_ERROR();
  return absl::OkStatus();
}

}  // namespace xkv::cuda
