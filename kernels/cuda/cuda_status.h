// CUDA / cuBLAS errors as absl::Status (architecture.md §8.4): every failing runtime call
// becomes INTERNAL carrying the expression, the error name and the file:line it came from.
#ifndef XKV_KERNELS_CUDA_CUDA_STATUS_H_
#define XKV_KERNELS_CUDA_CUDA_STATUS_H_

#include <cublas_api.h>
#include <cuda_runtime_api.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace xkv::cuda {

// INTERNAL "<file>:<line>: <expr>: <cudaErrorName>: <message>", or OK for cudaSuccess.
inline absl::Status CudaStatus(cudaError_t err, const char* expr, const char* file, int line) {
  if (err == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(file, ":", line, ": ", expr, ": ", cudaGetErrorName(err),
                                          ": ", cudaGetErrorString(err)));
}

inline absl::Status CublasStatus(cublasStatus_t st, const char* expr, const char* file, int line) {
  if (st == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  return absl::InternalError(
      absl::StrCat(file, ":", line, ": ", expr, ": cuBLAS status ", static_cast<int>(st)));
}

}  // namespace xkv::cuda

// Returns INTERNAL (with file and line) from the enclosing function when a CUDA runtime call fails.
#define CUDA_RETURN_IF_ERROR(expr)                                              \
  do {                                                                          \
    const cudaError_t xkv_cuda_err_ = (expr);                                   \
    if (xkv_cuda_err_ != cudaSuccess) {                                         \
      return ::xkv::cuda::CudaStatus(xkv_cuda_err_, #expr, __FILE__, __LINE__); \
    }                                                                           \
  } while (0)

// Same for cuBLAS / cuBLASLt calls.
#define CUBLAS_RETURN_IF_ERROR(expr)                                               \
  do {                                                                             \
    const cublasStatus_t xkv_cublas_st_ = (expr);                                  \
    if (xkv_cublas_st_ != CUBLAS_STATUS_SUCCESS) {                                 \
      return ::xkv::cuda::CublasStatus(xkv_cublas_st_, #expr, __FILE__, __LINE__); \
    }                                                                              \
  } while (0)

// After a <<<>>> launch: reports launch-configuration errors (not asynchronous faults).
#define CUDA_RETURN_IF_LAUNCH_ERROR() CUDA_RETURN_IF_ERROR(cudaGetLastError())

#endif  // XKV_KERNELS_CUDA_CUDA_STATUS_H_
