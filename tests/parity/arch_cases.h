// The random-weight model of each supported architecture and hook that the architecture tests
// run: tests/parity/arch_parity_test.cc (xkv's CPU engine vs llama.cpp) and
// tests/gpu/arch_engine_test.cc (the CUDA engine vs the CPU engine).
#ifndef XKV_TESTS_PARITY_ARCH_CASES_H_
#define XKV_TESTS_PARITY_ARCH_CASES_H_

#include <stdlib.h>

#include <string>
#include <vector>

#include "gtest/gtest.h"
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

struct LayerShape {
  int hidden, n_heads, n_kv_heads, head_dim, ffn;
};

// One layer of a real model's shape (RoPE base 1e6 and RMS eps 1e-6 as Qwen; tied head).
inline SyntheticModelOptions RealLayer(const std::string& arch, GgmlType type, uint64_t seed,
                                       const LayerShape& s) {
  SyntheticModelOptions o = ArchBase(arch, type, seed);
  o.n_layers = 1;
  o.hidden = s.hidden;
  o.n_heads = s.n_heads;
  o.n_kv_heads = s.n_kv_heads;
  o.key_length = s.head_dim;
  o.ffn = s.ffn;
  o.rope_base = 1e6f;
  o.norm_eps = 1e-6f;
  o.weight_scale = 0.05f;
  o.tied_embeddings = true;
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
  {  // Qwen2 with Q8_0 matrices, untied: NeoX RoPE keeps the layers off the bit-exact path, the
     // Q8_0 head stays on it
    ArchCase c{"qwen2_q8_0", ArchBase("qwen2", GgmlType::kQ8_0, 19)};
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
  // One layer of real shapes (tied heads, as these models): the kernels at real widths.
  {  // Qwen2.5-0.5B: 14 / 2 heads x 64, hidden 896, FFN 4864
    ArchCase c{"qwen2_0_5b_layer", RealLayer("qwen2", GgmlType::kF16, 16, {896, 14, 2, 64, 4864})};
    c.qkv_bias = true;
    cases.push_back(c);
  }
  {  // Qwen3-0.6B: 16 / 8 heads x 128 (q_dim 2048 != hidden 1024), FFN 3072
    ArchCase c{"qwen3_0_6b_layer",
               RealLayer("qwen3", GgmlType::kF16, 17, {1024, 16, 8, 128, 3072})};
    c.qk_norm = true;
    cases.push_back(c);
  }
  {  // Llama-3.2-1B: 32 / 8 heads x 64, hidden 2048, FFN 8192, with its rope_freqs (original
     // context 8192 = 131072 / 16) and Q/K/V biases; Q8_0: the bit-exact path at a real width
    ArchCase c{"llama32_1b_layer",
               RealLayer("llama", GgmlType::kQ8_0, 18, {2048, 32, 8, 64, 8192})};
    c.options.rope_base = 5e5f;
    c.options.norm_eps = 1e-5f;
    c.options.context_length = 131072;
    c.options.optional_tensors = true;
    c.qkv_bias = c.rope_freqs = c.bit_exact = true;
    cases.push_back(c);
  }
  return cases;
}

// A fresh directory under the test temp dir for one test's files (runs on one machine may overlap).
inline std::string UniqueTestDir() {
  std::string pattern = ::testing::TempDir() + "xkv_arch_XXXXXX";
  if (mkdtemp(pattern.data()) == nullptr) return ::testing::TempDir();
  return pattern + "/";
}

}  // namespace xkv

#endif  // XKV_TESTS_PARITY_ARCH_CASES_H_
