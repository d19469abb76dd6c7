// Token sampling on the device, one CTA per sequence, in llama.cpp's (and model/sampler.h's)
// order: top-k -> top-p (nucleus over the untempered probabilities of the top-k set) -> min-p
// (logit >= max logit + ln(min_p)) -> temperature -> sample. Presence/frequency penalties are
// applied to the logits before, by LaunchApplyPenalties.
//
// Exactness: greedy (temperature <= 0 or NaN) is the argmax with the lowest index on ties —
// bit-identical to xkv::Argmax. The kept set after top-k / top-p equals SamplingDistribution's
// set (ties at the cut: lower ids first), up to float rounding of the top-p mass at the boundary
// (masses are fp32 sums in nondeterministic order here, double sums in the CPU sampler).
// Random numbers do not match the CPU's std::mt19937_64: one uniform u in [0, 1) per row from
// curand's Philox4x32-10 (curand_init(seed, subsequence 0, offset)), and the token is found by
// inverse CDF over the kept set in token-id order (the CPU walks it in sorted order). So seeded
// runs are reproducible on the device, and the distribution is the same, but samples differ
// from the CPU sampler's.
#ifndef XKV_KERNELS_CUDA_SAMPLING_CUH_
#define XKV_KERNELS_CUDA_SAMPLING_CUH_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"

namespace xkv::cuda {

// Per-row parameters (POD, lives in device memory).
struct DeviceSamplingParams {
  float temperature = 0.f;  // <= 0 or NaN: greedy
  int32_t top_k = 0;        // <= 0 or >= vocab: disabled
  float top_p = 1.f;        // (0, 1); >= 1 (or <= 0, NaN): disabled
  float min_p = 0.f;        // (0, 1]: keep logits >= max + ln(min_p); <= 0 (or NaN): disabled
  uint64_t seed = 0;        // Philox key
  uint64_t offset = 0;  // Philox offset: tokens already sampled for this request (one draw each)
};

// logits: device fp32 [batch, vocab], rows `logits_stride` apart (>= vocab).
// params: device DeviceSamplingParams [batch].
// out:    device int32 [batch]: sampled token ids.
absl::Status LaunchSample(const float* logits, int64_t logits_stride, int64_t batch, int64_t vocab,
                          const DeviceSamplingParams* params, int32_t* out, cudaStream_t stream);

// logits[rows[i] * logits_stride + ids[i]] -= deltas[i] for i < n (each (row, id) at most once).
// rows, ids: device int32 [n]; deltas: device fp32 [n]; ids must be in [0, vocab).
absl::Status LaunchApplyPenalties(float* logits, int64_t logits_stride, int64_t vocab,
                                  const int32_t* rows, const int32_t* ids, const float* deltas,
                                  int64_t n, cudaStream_t stream);

}  // namespace xkv::cuda

#endif  // XKV_KERNELS_CUDA_SAMPLING_CUH_
