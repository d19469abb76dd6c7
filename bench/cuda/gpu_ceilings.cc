#include "bench/cuda/gpu_ceilings.h"

#include <cuda_bf16.h>

#include <algorithm>
#include <vector>

#include "base/status_macros.h"
#include "kernels/cpu/random_fill.h"
#include "kernels/cuda/cublas_handle.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/gemm.cuh"
#include "kernels/cuda/random_fill.cuh"

namespace xkv::cuda {

absl::StatusOr<DeviceBuffer> DeviceBuffer::Create(size_t bytes) {
  void* p = nullptr;
  CUDA_RETURN_IF_ERROR(cudaMalloc(&p, std::max<size_t>(bytes, 1)));
  return DeviceBuffer(p);
}

DeviceBuffer::~DeviceBuffer() {
  if (ptr_ != nullptr) cudaFree(ptr_);
}

absl::StatusOr<double> MedianEventMs(cudaStream_t stream, int warmup, int iters,
                                     const std::function<absl::Status()>& fn) {
  for (int i = 0; i < warmup; ++i) RETURN_IF_ERROR(fn());
  std::vector<cudaEvent_t> ev(iters + 1, nullptr);
  absl::Status st;
  for (cudaEvent_t& e : ev) {
    if (st.ok()) st = CudaStatus(cudaEventCreate(&e), "cudaEventCreate", __FILE__, __LINE__);
  }
  if (st.ok()) st = CudaStatus(cudaEventRecord(ev[0], stream), "record", __FILE__, __LINE__);
  for (int i = 0; st.ok() && i < iters; ++i) {
    st = fn();
    if (st.ok()) st = CudaStatus(cudaEventRecord(ev[i + 1], stream), "record", __FILE__, __LINE__);
  }
  if (st.ok()) st = CudaStatus(cudaEventSynchronize(ev[iters]), "sync", __FILE__, __LINE__);
  std::vector<float> ms(iters, 0.f);
  for (int i = 0; st.ok() && i < iters; ++i) {
    st = CudaStatus(cudaEventElapsedTime(&ms[i], ev[i], ev[i + 1]), "elapsed", __FILE__, __LINE__);
  }
  for (cudaEvent_t e : ev) {
    if (e != nullptr) cudaEventDestroy(e);
  }
  RETURN_IF_ERROR(st);
  std::nth_element(ms.begin(), ms.begin() + iters / 2, ms.end());
  return static_cast<double>(ms[iters / 2]);
}

absl::StatusOr<double> MeasureCopyBandwidth(int64_t bytes, cudaStream_t stream) {
  ASSIGN_OR_RETURN(DeviceBuffer src, DeviceBuffer::Create(bytes));
  ASSIGN_OR_RETURN(DeviceBuffer dst, DeviceBuffer::Create(bytes));
  RETURN_IF_ERROR(
      LaunchRandomFill(7, bytes / 2, RandomFillStep(1.0f), src.as<__nv_bfloat16>(), stream));
  auto copy = [&]() -> absl::Status {
    CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(dst.as<void>(), src.as<void>(), bytes, cudaMemcpyDeviceToDevice, stream));
    return absl::OkStatus();
  };
  ASSIGN_OR_RETURN(double ms, MedianEventMs(stream, 3, 20, copy));
  return 2.0 * bytes / (ms * 1e-3) / 1e9;
}

absl::StatusOr<double> MeasureGemmTflops(int64_t n, bool fp32_out, cudaStream_t stream) {
  const size_t elems = static_cast<size_t>(n) * n;
  ASSIGN_OR_RETURN(DeviceBuffer a, DeviceBuffer::Create(elems * 2));
  ASSIGN_OR_RETURN(DeviceBuffer b, DeviceBuffer::Create(elems * 2));
  ASSIGN_OR_RETURN(DeviceBuffer c, DeviceBuffer::Create(elems * (fp32_out ? 4 : 2)));
  const float step = RandomFillStep(1.0f);
  RETURN_IF_ERROR(LaunchRandomFill(11, elems, step, a.as<__nv_bfloat16>(), stream));
  RETURN_IF_ERROR(LaunchRandomFill(12, elems, step, b.as<__nv_bfloat16>(), stream));
  ASSIGN_OR_RETURN(CublasHandle handle, CublasHandle::Create());
  auto gemm = [&]() -> absl::Status {
    if (fp32_out) {
      return LaunchGemm(handle, a.as<__nv_bfloat16>(), n, b.as<__nv_bfloat16>(), n, c.as<float>(),
                        n, n, n, n, false, stream);
    }
    return LaunchGemm(handle, a.as<__nv_bfloat16>(), n, b.as<__nv_bfloat16>(), n,
                      c.as<__nv_bfloat16>(), n, n, n, n, false, stream);
  };
  ASSIGN_OR_RETURN(double ms, MedianEventMs(stream, 3, 20, gemm));
  CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
  return 2.0 * n * n * n / (ms * 1e-3) / 1e12;
}

absl::StatusOr<GpuCeilings> MeasureCeilings(cudaStream_t stream) {
  GpuCeilings c;
  c.copy_bytes = static_cast<double>(int64_t{1} << 30);
  ASSIGN_OR_RETURN(c.copy_gbs, MeasureCopyBandwidth(int64_t{1} << 30, stream));
  ASSIGN_OR_RETURN(c.gemm_tflops, MeasureGemmTflops(c.gemm_n, false, stream));
  ASSIGN_OR_RETURN(c.gemm_fp32_out_tflops, MeasureGemmTflops(c.gemm_n, true, stream));
  return c;
}

}  // namespace xkv::cuda
