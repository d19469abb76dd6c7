// qwen3 (Qwen3 dense): NeoX RoPE, no biases, and QK-norm: RMSNorm over each head of Q and of K
// (gains attn_q_norm / attn_k_norm of head_dim) before RoPE; head_dim comes from
// attention.key_length, not hidden / heads (llama.cpp: src/models/qwen3.cpp).
#include "model/arch/arch.h"

namespace xkv {

const ArchSpec& Qwen3Arch() {
  static const ArchSpec* const spec =
      new ArchSpec{"qwen3",
                   RopeStyle::kNeox,
                   {
                       {"attn_q_norm.weight", ArchTensorShape::kHeadDim, ArchHook::kQkNorm},
                       {"attn_k_norm.weight", ArchTensorShape::kHeadDim, ArchHook::kQkNorm},
                   }};
  return *spec;
}

}  // namespace xkv
