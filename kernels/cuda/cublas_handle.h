// Owner of one cuBLAS handle and its workspace. Not thread-safe: use one handle per host thread
// (each launch binds the handle to the caller's stream).
#ifndef XKV_KERNELS_CUDA_CUBLAS_HANDLE_H_
#define XKV_KERNELS_CUDA_CUBLAS_HANDLE_H_

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstddef>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace xkv::cuda {

class CublasHandle {
 public:
  // Workspace recommended by NVIDIA for Hopper (cuBLAS docs, cublasSetWorkspace).
  static constexpr size_t kDefaultWorkspaceBytes = 32u << 20;

  // Creates the handle on the current device, allocates `workspace_bytes` of device memory for
  // it and enables tensor-op math. INTERNAL on CUDA/cuBLAS failures (e.g. no device).
  static absl::StatusOr<CublasHandle> Create(size_t workspace_bytes = kDefaultWorkspaceBytes);

  CublasHandle(CublasHandle&& other) noexcept;
  CublasHandle& operator=(CublasHandle&& other) noexcept;
  CublasHandle(const CublasHandle&) = delete;
  CublasHandle& operator=(const CublasHandle&) = delete;
  ~CublasHandle();

  // Binds the handle (and its workspace) to `stream`; call before each use on that stream.
  absl::Status Bind(cudaStream_t stream) const;

  cublasHandle_t get() const { return handle_; }
  size_t workspace_bytes() const { return workspace_bytes_; }

 private:
  CublasHandle() = default;
  void Reset();

  cublasHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;  // device bytes [workspace_bytes_]
  size_t workspace_bytes_ = 0;
};

}  // namespace xkv::cuda

#endif  // XKV_KERNELS_CUDA_CUBLAS_HANDLE_H_
