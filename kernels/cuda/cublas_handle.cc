#include "kernels/cuda/cublas_handle.h"

#include <utility>

#include "kernels/cuda/cuda_status.h"

namespace xkv::cuda {

absl::StatusOr<CublasHandle> CublasHandle::Create(size_t workspace_bytes) {
  CublasHandle h;
  CUBLAS_RETURN_IF_ERROR(cublasCreate(&h.handle_));
  CUBLAS_RETURN_IF_ERROR(cublasSetMathMode(h.handle_, CUBLAS_TENSOR_OP_MATH));
  if (workspace_bytes > 0) {
    CUDA_RETURN_IF_ERROR(cudaMalloc(&h.workspace_, workspace_bytes));
    h.workspace_bytes_ = workspace_bytes;
  }
  return h;
}

CublasHandle::CublasHandle(CublasHandle&& other) noexcept
    : handle_(std::exchange(other.handle_, nullptr)),
      workspace_(std::exchange(other.workspace_, nullptr)),
      workspace_bytes_(std::exchange(other.workspace_bytes_, 0)) {}

CublasHandle& CublasHandle::operator=(CublasHandle&& other) noexcept {
  if (this != &other) {
    Reset();
    handle_ = std::exchange(other.handle_, nullptr);
    workspace_ = std::exchange(other.workspace_, nullptr);
    workspace_bytes_ = std::exchange(other.workspace_bytes_, 0);
  }
  return *this;
}

CublasHandle::~CublasHandle() { Reset(); }

void CublasHandle::Reset() {
  if (handle_ != nullptr) cublasDestroy(handle_);
  if (workspace_ != nullptr) cudaFree(workspace_);
  handle_ = nullptr;
  workspace_ = nullptr;
  workspace_bytes_ = 0;
}

absl::Status CublasHandle::Bind(cudaStream_t stream) const {
  if (handle_ == nullptr) return absl::FailedPreconditionError("cublas handle: moved-from");
  CUBLAS_RETURN_IF_ERROR(cublasSetStream(handle_, stream));
  // cublasSetStream resets the workspace to the default pool; set ours again.
  if (workspace_ != nullptr) {
    CUBLAS_RETURN_IF_ERROR(cublasSetWorkspace(handle_, workspace_, workspace_bytes_));
  }
  return absl::OkStatus();
}

}  // namespace xkv::cuda
