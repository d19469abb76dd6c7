// Embedding gather on the device: rows of a bf16 table into the fp32 residual stream.
#ifndef XKV_KERNELS_CUDA_EMBEDDING_CUH_
#define XKV_KERNELS_CUDA_EMBEDDING_CUH_

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"

namespace xkv::cuda {

// table:  device bf16 [vocab, dim] row-major (the dequantized token_embd weight).
// tokens: device int32 [n_tokens]. They are not read by the host, so range errors cannot be
//         returned: a token outside [0, vocab) yields a row of NaN (loud downstream, no fault).
// out:    device fp32 [n_tokens, dim] row-major.
absl::Status LaunchEmbedding(const __nv_bfloat16* table, int64_t vocab, int64_t dim,
                             const int32_t* tokens, int64_t n_tokens, float* out,
                             cudaStream_t stream);

}  // namespace xkv::cuda

#endif  // XKV_KERNELS_CUDA_EMBEDDING_CUH_
