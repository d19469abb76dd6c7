// llama (Llama 1/2/3, Mistral, SmolLM2, TinyLlama): adjacent-pair RoPE over Q/K weights the
// converter permuted; optional Q/K/V biases (llama.cpp loads them when present); optional
// rope_freqs.weight, llama 3.1's per-dimension frequency divisors (llama.cpp:
// src/models/llama.cpp).
#include "model/arch/arch.h"

namespace xkv {

const ArchSpec& LlamaArch() {
  static const ArchSpec* const spec = new ArchSpec{
      "llama",
      RopeStyle::kNorm,
      {
          {"attn_q.bias", ArchTensorShape::kQDim, ArchHook::kQkvBias, true, false},
          {"attn_k.bias", ArchTensorShape::kKvDim, ArchHook::kQkvBias, true, false},
          {"attn_v.bias", ArchTensorShape::kKvDim, ArchHook::kQkvBias, true, false},
          {"rope_freqs.weight", ArchTensorShape::kHalfRope, ArchHook::kRopeFreqs, false, false},
      }};
  return *spec;
}

}  // namespace xkv
