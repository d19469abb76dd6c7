// The architecture hooks between the fused QKV matmul and RoPE (model/arch/arch.h), in llama.cpp's
// order: the Q/K/V bias add (qwen2; build_qkv), then RMSNorm over each Q and each K head (qwen3).
#ifndef XKV_KERNELS_CPU_QKV_HOOKS_H_
#define XKV_KERNELS_CPU_QKV_HOOKS_H_

#include <cstdint>

#include "absl/status/status.h"

namespace xkv::cpu {

struct QkvHookShape {
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  float eps = 1e-6f;  // RMSNorm epsilon (the model's)
};

// qkv:    fp32 [n_tokens, n_heads*head_dim + 2*n_kv_heads*head_dim] (Q, K, V), rows `stride`
//         elements apart, changed in place.
// bias:   fp32 [n_heads*head_dim + 2*n_kv_heads*head_dim] or null (no bias).
// q_norm, k_norm: fp32 [head_dim] gains, both or neither null (no QK-norm). The norm is
//         cpu::LaunchRmsNorm's (Σx² in double, as ggml).
absl::Status LaunchQkvHooks(const QkvHookShape& shape, float* qkv, int64_t stride, int64_t n_tokens,
                            const float* bias, const float* q_norm, const float* k_norm);

}  // namespace xkv::cpu

#endif  // XKV_KERNELS_CPU_QKV_HOOKS_H_
