// The architecture hooks between the QKV GEMM and RoPE on the device (see kernels/cpu/qkv_hooks.h,
// the CPU reference with the same arguments): the Q/K/V bias add, then RMSNorm over each Q and K
// head. The head's sum of squares is accumulated in fp32 (the reference: double).
#ifndef XKV_KERNELS_CUDA_QKV_HOOKS_CUH_
#define XKV_KERNELS_CUDA_QKV_HOOKS_CUH_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/cpu/qkv_hooks.h"

namespace xkv::cuda {

using QkvHookShape = ::xkv::cpu::QkvHookShape;

// qkv: device fp32 [n_tokens, q_dim + 2 kv_dim] rows `stride` apart, in place; bias: device fp32
// [q_dim + 2 kv_dim] or null; q_norm, k_norm: device fp32 [head_dim], both or neither null.
absl::Status LaunchQkvHooks(const QkvHookShape& shape, float* qkv, int64_t stride, int64_t n_tokens,
                            const float* bias, const float* q_norm, const float* k_norm,
                            cudaStream_t stream);

}  // namespace xkv::cuda

#endif  // XKV_KERNELS_CUDA_QKV_HOOKS_CUH_
