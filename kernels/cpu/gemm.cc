#include "kernels/cpu/gemm.h"

#include <cblas.h>

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace xkv::cpu {
namespace {
constexpr int64_t kGemvMaxRows = 3;
}  // namespace

absl::Status LaunchGemm(const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
                        int64_t ldc, int64_t m, int64_t n, int64_t k, bool accumulate) {
  if (m < 0 || n <= 0 || k <= 0 || lda < k || ldb < k || ldc < n) {
    return absl::InvalidArgumentError(
        absl::StrCat("gemm: bad sizes m=", m, " n=", n, " k=", k, " ld=", lda, "/", ldb, "/", ldc));
  }
  if (m == 0) return absl::OkStatus();
  if (a == nullptr || b == nullptr || c == nullptr) {
    return absl::InvalidArgumentError("gemm: null pointer");
  }
  constexpr int64_t kMaxInt = 0x7fffffff;
  if (m > kMaxInt || n > kMaxInt || k > kMaxInt || lda > kMaxInt || ldb > kMaxInt ||
      ldc > kMaxInt) {
    return absl::InvalidArgumentError("gemm: size exceeds BLAS int range");
  }
  if (m <= kGemvMaxRows) {
    // Decode-sized batches: OpenBLAS 0.3.21's sgemm packs the whole weight matrix even for one
    // row, so a GEMV per row (reading the weights once each, unpacked) is several times faster.
    for (int64_t i = 0; i < m; ++i) {
      cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<int>(n), static_cast<int>(k), 1.0f, b,
                  static_cast<int>(ldb), a + i * lda, 1, accumulate ? 1.0f : 0.0f, c + i * ldc, 1);
    }
    return absl::OkStatus();
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(m), static_cast<int>(n),
              static_cast<int>(k), 1.0f, a, static_cast<int>(lda), b, static_cast<int>(ldb),
              accumulate ? 1.0f : 0.0f, c, static_cast<int>(ldc));
  return absl::OkStatus();
}

void SetGemmThreads(int num_threads) { openblas_set_num_threads(std::max(1, num_threads)); }

int GetGemmThreads() { return openblas_get_num_threads(); }

}  // namespace xkv::cpu
