// The GPU's practical limits, measured (METHOD.md "two numbers first"): device-to-device copy
// bandwidth and the cuBLAS bf16 GEMM rate, plus the event timing helper both use. Shared by
// `xkv bench gpu`; xkv_gpu_bench (bench/gpu_kernels_bench_main.cc) can use the same code.
#ifndef XKV_BENCH_CUDA_GPU_CEILINGS_H_
#define XKV_BENCH_CUDA_GPU_CEILINGS_H_

#include <cuda_runtime_api.h>

#include <cstdint>
#include <functional>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "bench/gpu_bench.h"

namespace xkv::cuda {

// Device memory freed on destruction.
class DeviceBuffer {
 public:
  static absl::StatusOr<DeviceBuffer> Create(size_t bytes);
  DeviceBuffer(DeviceBuffer&& other) noexcept : ptr_(other.ptr_) { other.ptr_ = nullptr; }
  DeviceBuffer& operator=(DeviceBuffer&&) = delete;
  DeviceBuffer(const DeviceBuffer&) = delete;
  ~DeviceBuffer();
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }

 private:
  explicit DeviceBuffer(void* ptr) : ptr_(ptr) {}
  void* ptr_ = nullptr;
};

// Median milliseconds of `iters` calls of fn (each enqueues work on `stream`) after `warmup`
// calls, each call between its own pair of events. fn's first error is returned.
absl::StatusOr<double> MedianEventMs(cudaStream_t stream, int warmup, int iters,
                                     const std::function<absl::Status()>& fn);

// (bytes read + bytes written) / time of a cudaMemcpyAsync of `bytes` device to device, GB/s.
absl::StatusOr<double> MeasureCopyBandwidth(int64_t bytes, cudaStream_t stream);
// TFLOP/s of an n x n x n bf16 GEMM on cuBLAS (fp32 accumulation) over random inputs; the output
// is bf16, or fp32 when fp32_out.
absl::StatusOr<double> MeasureGemmTflops(int64_t n, bool fp32_out, cudaStream_t stream);

// Both ceilings: 1 GiB copies, GEMM at 8192^3 (the sizes in GpuCeilings).
absl::StatusOr<GpuCeilings> MeasureCeilings(cudaStream_t stream);

}  // namespace xkv::cuda

#endif  // XKV_BENCH_CUDA_GPU_CEILINGS_H_
