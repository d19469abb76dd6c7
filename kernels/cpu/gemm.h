// fp32 GEMM against row-major [out, in] weights (the GGUF layout): C = A · Bᵀ (+ C).
// Runs on OpenBLAS (cblas_sgemm) with its own threads; set their count with SetGemmThreads.
#ifndef XKV_KERNELS_CPU_GEMM_H_
#define XKV_KERNELS_CPU_GEMM_H_

#include <cstdint>

#include "absl/status/status.h"

namespace xkv::cpu {

// a: fp32 [m, k], rows `lda` apart (>= k)        — activations, one row per token.
// b: fp32 [n, k], rows `ldb` apart (>= k)        — weights [out, in].
// c: fp32 [m, n], rows `ldc` apart (>= n)        — output; c = a·bᵀ, or c += a·bᵀ when
//    `accumulate` (a fused residual add). c must not overlap a or b.
absl::Status LaunchGemm(const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
                        int64_t ldc, int64_t m, int64_t n, int64_t k, bool accumulate);

// Contiguous convenience: a [m, k], b [n, k], c [m, n].
inline absl::Status LaunchGemm(const float* a, const float* b, float* c, int64_t m, int64_t n,
                               int64_t k, bool accumulate = false) {
  return LaunchGemm(a, k, b, k, c, n, m, n, k, accumulate);
}

// Sets OpenBLAS's thread count (process-wide); values < 1 are treated as 1.
void SetGemmThreads(int num_threads);
int GetGemmThreads();

}  // namespace xkv::cpu

#endif  // XKV_KERNELS_CPU_GEMM_H_
