// bf16 GEMM on cuBLAS against row-major [out, in] weights (the GGUF layout): C = A · Bᵀ (+ C),
// bf16 inputs, fp32 accumulation (CUBLAS_COMPUTE_32F), fp32 or bf16 output.
#ifndef XKV_KERNELS_CUDA_GEMM_CUH_
#define XKV_KERNELS_CUDA_GEMM_CUH_

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/cuda/cublas_handle.h"

namespace xkv::cuda {

// handle: bound to `stream` by this call.
// a: device bf16 [m, k], rows `lda` apart (>= k)      — activations, one row per token.
// b: device bf16 [n, k], rows `ldb` apart (>= k)      — weights [out, in].
// c: device fp32 or bf16 [m, n], rows `ldc` apart (>= n) — c = a·bᵀ, or c += a·bᵀ when
//    `accumulate` (fused residual add). c must not overlap a or b.
// m, n, k, lda, ldb, ldc <= INT32_MAX. Leading dimensions that are multiples of 8 keep cuBLAS on
// its fastest kernels.
absl::Status LaunchGemm(const CublasHandle& handle, const __nv_bfloat16* a, int64_t lda,
                        const __nv_bfloat16* b, int64_t ldb, float* c, int64_t ldc, int64_t m,
                        int64_t n, int64_t k, bool accumulate, cudaStream_t stream);
absl::Status LaunchGemm(const CublasHandle& handle, const __nv_bfloat16* a, int64_t lda,
                        const __nv_bfloat16* b, int64_t ldb, __nv_bfloat16* c, int64_t ldc,
                        int64_t m, int64_t n, int64_t k, bool accumulate, cudaStream_t stream);

}  // namespace xkv::cuda

#endif  // XKV_KERNELS_CUDA_GEMM_CUH_
