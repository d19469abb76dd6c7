// The random-weight model of each supported architecture and hook that the architecture tests
// run: tests/parity/arch_parity_test.cc (xkv's CPU engine vs llama.cpp) and
// tests/gpu/arch_engine_test.cc (the CUDA engine vs the CPU engine).
#ifndef XKV_TESTS_PARITY_ARCH_CASES_H_
#define XKV_TESTS_PARITY_ARCH_CASES_H_

#include <string>
#include <vector>

#include "model/synthetic_model.h"

namespace xkv {

struct ArchCase {
  std::string name;
  SyntheticModelOptions options;
  // The hooks the file must switch on.
  bool qkv_bias = false, qk_norm = false, rope_freqs = false, rope_scaled = false;
  // Q8_0 llama files take kGgml's bit-exact path (kernels/cpu/ggml_exact.h): every logit equal.
  bool bit_exact = false;
};

inline SyntheticModelOptions ArchBase(const std::string& arch, GgmlType type, uint64_t seed) {
  SyntheticModelOptions o = SyntheticModelOptions::Tiny();
  o.architecture = arch;
  o.weight_type = type;
  o.weight_scale = 0.2f;  // attention far from uniform, logits well spread
  o.context_length = 1024;
  o.seed = seed;
  o.name = "xkv-synthetic-" + arch;
  return o;
}

inline std::vector<ArchCase> ArchCases() {
  std::vector<ArchCase> cases;
  {  // Llama 3.1 style: rope_freqs (and optional biases) on the bit-exact Q8_0 path, untied
    ArchCase c{"llama_rope_freqs_bias", ArchBase("llama", GgmlType::kQ8_0, 11)};
    c.options.optional_tensors = true;
    c.qkv_bias = c.rope_freqs = c.bit_exact = true;
    cases.push_back(c);
  }
  {  // linear RoPE scaling, tied head
    ArchCase c{"llama_linear_tied", ArchBase("llama", GgmlType::kQ8_0, 12)};
    c.options.rope_scaling_factor = 4.f;
    c.options.tied_embeddings = true;
    c.rope_scaled = c.bit_exact = true;
    cases.push_back(c);
  }
  {  // Qwen2: NeoX RoPE, Q/K/V biases, tied head (as Qwen2-0.5B)
    ArchCase c{"qwen2_tied", ArchBase("qwen2", GgmlType::kF32, 13)};
    c.options.tied_embeddings = true;
    c.qkv_bias = true;
    cases.push_back(c);
  }
  {  // Qwen3: NeoX RoPE, QK-norm, head_dim 32 with hidden 64 / 4 heads, untied head
    ArchCase c{"qwen3_untied", ArchBase("qwen3", GgmlType::kF32, 14)};
    c.options.key_length = 32;
    c.qk_norm = true;
    cases.push_back(c);
  }
  {  // Qwen3 with F16 matrices (activations rounded to fp16 as llama.cpp does)
    ArchCase c{"qwen3_f16", ArchBase("qwen3", GgmlType::kF16, 15)};
    c.options.key_length = 32;
    c.qk_norm = true;
    cases.push_back(c);
  }
  return cases;
}

}  // namespace xkv

#endif  // XKV_TESTS_PARITY_ARCH_CASES_H_
