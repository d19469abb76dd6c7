#include "kernels/cuda/gemm.cuh"

#include <limits>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"

namespace xkv::cuda {
namespace {

absl::Status Gemm(const CublasHandle& handle, const void* a, int64_t lda, const void* b,
                  int64_t ldb, void* c, cudaDataType_t c_type, int64_t ldc, int64_t m, int64_t n,
                  int64_t k, bool accumulate, cudaStream_t stream) {
  constexpr int64_t kMax = std::numeric_limits<int>::max();
  if (m < 0 || n < 0 || k < 0 || m > kMax || n > kMax || k > kMax || lda < k || ldb < k ||
      ldc < n || lda > kMax || ldb > kMax || ldc > kMax || lda < 1 || ldb < 1 || ldc < 1) {
    return absl::InvalidArgumentError(absl::StrCat("cuda gemm: bad sizes m=", m, " n=", n, " k=", k,
                                                   " ld=", lda, "/", ldb, "/", ldc));
  }
  if (m == 0 || n == 0) return absl::OkStatus();
  if (a == nullptr || b == nullptr || c == nullptr) {
    return absl::InvalidArgumentError("cuda gemm: null pointer");
  }
  if (absl::Status st = handle.Bind(stream); !st.ok()) return st;
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  // Row-major C[m,n] = A[m,k] · B[n,k]ᵀ is column-major Cᵀ[n,m] = B · Aᵀ: B is a column-major
  // [k, n] matrix (ldb) used transposed, A a column-major [k, m] matrix (lda) used as is.
  CUBLAS_RETURN_IF_ERROR(
      cublasGemmEx(handle.get(), CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(m),
                   static_cast<int>(k), &alpha, b, CUDA_R_16BF, static_cast<int>(ldb), a,
                   CUDA_R_16BF, static_cast<int>(lda), &beta, c, c_type, static_cast<int>(ldc),
                   CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  return absl::OkStatus();
}

}  // namespace

absl::Status LaunchGemm(const CublasHandle& handle, const __nv_bfloat16* a, int64_t lda,
                        const __nv_bfloat16* b, int64_t ldb, float* c, int64_t ldc, int64_t m,
                        int64_t n, int64_t k, bool accumulate, cudaStream_t stream) {
  return Gemm(handle, a, lda, b, ldb, c, CUDA_R_32F, ldc, m, n, k, accumulate, stream);
}

absl::Status LaunchGemm(const CublasHandle& handle, const __nv_bfloat16* a, int64_t lda,
                        const __nv_bfloat16* b, int64_t ldb, __nv_bfloat16* c, int64_t ldc,
                        int64_t m, int64_t n, int64_t k, bool accumulate, cudaStream_t stream) {
  return Gemm(handle, a, lda, b, ldb, c, CUDA_R_16BF, ldc, m, n, k, accumulate, stream);
}

}  // namespace xkv::cuda
