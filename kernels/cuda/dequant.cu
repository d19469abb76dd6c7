#include <cuda_fp16.h>

#include <string>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/kquants.h"
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/dequant.cuh"

namespace xkv::cuda {
namespace {

using internal::FromFloat;

constexpr int kThreads = 256;

__device__ __forceinline__ float HalfBits(const uint8_t* p) {
  const uint16_t bits = static_cast<uint16_t>(p[0]) | (static_cast<uint16_t>(p[1]) << 8);
  return __half2float(__ushort_as_half(bits));
}

// One thread per 32-element block.
// src: bytes [blocks * block_bytes]; dst: [blocks * 32].
template <typename OutT>
__global__ void DequantQ8_0Kernel(const uint8_t* __restrict__ src, int64_t blocks,
                                  OutT* __restrict__ dst) {
  const int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (b >= blocks) return;
  const uint8_t* p = src + b * 34;
  const float d = HalfBits(p);
  OutT* o = dst + b * 32;
#pragma unroll
  for (int j = 0; j < 32; ++j) o[j] = FromFloat<OutT>(static_cast<int8_t>(p[2 + j]) * d);
}

template <typename OutT>
__global__ void DequantQ4_0Kernel(const uint8_t* __restrict__ src, int64_t blocks,
                                  OutT* __restrict__ dst) {
  const int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (b >= blocks) return;
  const uint8_t* p = src + b * 18;
  const float d = HalfBits(p);
  OutT* o = dst + b * 32;
#pragma unroll
  for (int j = 0; j < 16; ++j) {
    const uint8_t q = p[2 + j];
    o[j] = FromFloat<OutT>(static_cast<float>((q & 0x0f) - 8) * d);
    o[j + 16] = FromFloat<OutT>(static_cast<float>((q >> 4) - 8) * d);
  }
}

template <typename OutT>
__global__ void DequantQ4_1Kernel(const uint8_t* __restrict__ src, int64_t blocks,
                                  OutT* __restrict__ dst) {
  const int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (b >= blocks) return;
  const uint8_t* p = src + b * 20;
  const float d = HalfBits(p);
  const float m = HalfBits(p + 2);
  OutT* o = dst + b * 32;
#pragma unroll
  for (int j = 0; j < 16; ++j) {
    const uint8_t q = p[4 + j];
    o[j] = FromFloat<OutT>(static_cast<float>(q & 0x0f) * d + m);
    o[j + 16] = FromFloat<OutT>(static_cast<float>(q >> 4) * d + m);
  }
}

// Plain element types, one thread per element. src: [n] elements of 2 or 4 bytes, read bytewise
// (GGUF data may be unaligned in a mapped file).
template <typename OutT>
__global__ void DequantPlainKernel(const uint8_t* __restrict__ src, int64_t n, GgmlType type,
                                   OutT* __restrict__ dst) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  float v;
  if (type == GgmlType::kF32) {
    const uint8_t* p = src + i * 4;
    const uint32_t bits = static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
                          (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24);
    v = __uint_as_float(bits);
  } else if (type == GgmlType::kF16) {
    v = HalfBits(src + i * 2);
  } else {  // kBF16
    const uint8_t* p = src + i * 2;
    v = __uint_as_float((static_cast<uint32_t>(p[0]) << 16) | (static_cast<uint32_t>(p[1]) << 24));
  }
  dst[i] = FromFloat<OutT>(v);
}

template <typename OutT>
absl::Status Dequantize(GgmlType type, const void* src, int64_t n, OutT* dst, cudaStream_t stream) {
  const auto traits = GetGgmlTypeTraits(static_cast<uint32_t>(type));
  if (!traits) {
    return absl::InvalidArgumentError(
        absl::StrCat("cuda dequant: unsupported ggml type ", static_cast<uint32_t>(type)));
  }
  if (n < 0 || n % traits->block_elements != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cuda dequant: element count ", n, " is not a multiple of ", traits->block_elements));
  }
  if (n == 0) return absl::OkStatus();
  if (src == nullptr || dst == nullptr) {
    return absl::InvalidArgumentError("cuda dequant: null pointer");
  }
  if (cpu::IsKQuant(type)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cuda dequant: ", std::string(traits->name),
        " has no device kernel: dequantize K-quants on the host (cpu::DequantizeToF32)"));
  }
  const auto* in = static_cast<const uint8_t*>(src);
  const int64_t blocks = n / traits->block_elements;
  const unsigned grid = static_cast<unsigned>(internal::CeilDiv(blocks, kThreads));
  switch (type) {
    case GgmlType::kQ8_0:
      DequantQ8_0Kernel<<<grid, kThreads, 0, stream>>>(in, blocks, dst);
      break;
    case GgmlType::kQ4_0:
      DequantQ4_0Kernel<<<grid, kThreads, 0, stream>>>(in, blocks, dst);
      break;
    case GgmlType::kQ4_1:
      DequantQ4_1Kernel<<<grid, kThreads, 0, stream>>>(in, blocks, dst);
      break;
    default:
      DequantPlainKernel<<<grid, kThreads, 0, stream>>>(in, n, type, dst);
      break;
  }
  CUDA_RETURN_IF_LAUNCH_ERROR();
  return absl::OkStatus();
}

}  // namespace

absl::Status DequantizeToBf16(GgmlType type, const void* src, int64_t n, __nv_bfloat16* dst,
                              cudaStream_t stream) {
  return Dequantize(type, src, n, dst, stream);
}

absl::Status DequantizeToF32(GgmlType type, const void* src, int64_t n, float* dst,
                             cudaStream_t stream) {
  return Dequantize(type, src, n, dst, stream);
}

}  // namespace xkv::cuda
