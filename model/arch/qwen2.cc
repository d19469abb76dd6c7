// qwen2 (Qwen1.5, Qwen2, Qwen2.5): NeoX RoPE (HF layout, halves rotated together) and a bias on
// each of Q, K and V, added right after their matmul (llama.cpp: src/models/qwen2.cpp).
#include "model/arch/arch.h"

namespace xkv {

const ArchSpec& Qwen2Arch() {
  static const ArchSpec* const spec =
      new ArchSpec{"qwen2",
                   RopeStyle::kNeox,
                   {
                       {"attn_q.bias", ArchTensorShape::kQDim, ArchHook::kQkvBias},
                       {"attn_k.bias", ArchTensorShape::kKvDim, ArchHook::kQkvBias},
                       {"attn_v.bias", ArchTensorShape::kKvDim, ArchHook::kQkvBias},
                   }};
  return *spec;
}

}  // namespace xkv
