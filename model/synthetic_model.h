// Random-weight Llama GGUF files of any shape: the tensor names, shapes and metadata of real
// llama.cpp conversions plus a small byte-level GPT-2 tokenizer, so the whole engine can load them.
// Used for unit tests (tiny shapes) and GPU throughput/memory benchmarks (real shapes).
#ifndef XKV_MODEL_SYNTHETIC_MODEL_H_
#define XKV_MODEL_SYNTHETIC_MODEL_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/ggml_types.h"

namespace xkv {

struct SyntheticModelOptions {
  // general.architecture: "llama", "qwen2" or "qwen3" (model/arch/): its metadata prefix, RoPE
  // pairing and extra tensors (qwen2: Q/K/V biases; qwen3: QK-norm gains).
  std::string architecture = "llama";
  // Also write the architecture's optional tensors (llama: Q/K/V biases and rope_freqs.weight
  // holding llama 3.1's frequency factors for an original context of context_length / 16).
  bool optional_tensors = false;
  float rope_scaling_factor = 0;  // > 0: rope.scaling.type "linear" with this factor
  int n_layers = 2;
  int hidden = 64;     // head_dim = key_length, else hidden / n_heads
  int key_length = 0;  // > 0: attention.key_length / value_length (qwen3: != hidden / n_heads)
  int ffn = 128;
  int n_heads = 4;
  int n_kv_heads = 2;
  int vocab_size = 320;  // >= kMinSyntheticVocab; ids past the real tokens are "<unused_N>"
  int context_length = 2048;
  float rope_base = 10000.f;
  float norm_eps = 1e-5f;
  // Type of every 2-D weight (token_embd, attention, FFN, output); norms are always F32. Quantized
  // types need hidden and ffn to be multiples of their block size (32; 256 for K-quants).
  GgmlType weight_type = GgmlType::kF32;
  // Types of single 2-D weights overriding weight_type, by name or by the part after a '.' (the
  // first match wins): e.g. {"ffn_down.weight", kQ6_K} for every layer's ffn_down, as llama.cpp's
  // Q4_K_M mixes Q4_K and Q6_K ("output.weight" is the head, not attn_output).
  std::vector<std::pair<std::string, GgmlType>> type_overrides;
  uint64_t seed = 1;
  bool tied_embeddings = false;  // true: no output.weight (lm_head = token_embd)
  float weight_scale = 0.02f;    // matrices ~ N(0, scale^2); norm weights ~ 1 + N(0, 0.05^2)
  std::string name = "xkv-synthetic";

  static SyntheticModelOptions Tiny();        // 2 layers, hidden 64, 4/2 heads, ffn 128
  static SyntheticModelOptions Llama3_8B();   // 32 layers, hidden 4096, 32/8 heads, ffn 14336
  static SyntheticModelOptions Llama32_1B();  // 16 layers, hidden 2048, 32/8 heads, ffn 8192

  int head_dim() const { return key_length > 0 ? key_length : n_heads > 0 ? hidden / n_heads : 0; }
};

// Tokens every synthetic vocabulary holds: 3 control tokens (<|endoftext|> 0, <|im_start|> 1 = bos,
// <|im_end|> 2 = eos), the 256 GPT-2 byte symbols (ids 3..258), then one token per merge.
int MinSyntheticVocab();

// The tensor names and GGUF dims ({row length, rows}) the model has, in file order.
struct SyntheticTensor {
  std::string name;
  std::vector<int64_t> dims;
  GgmlType type;
};
absl::StatusOr<std::vector<SyntheticTensor>> SyntheticTensorList(const SyntheticModelOptions& o);

// Writes the model to `path`; rows are generated while writing, so even 8B shapes need little RAM.
absl::Status WriteSyntheticModel(const SyntheticModelOptions& options, const std::string& path);
// Same bytes as WriteSyntheticModel, in memory (for small shapes).
absl::StatusOr<std::vector<uint8_t>> WriteSyntheticModelToBuffer(
    const SyntheticModelOptions& options);

}  // namespace xkv

#endif  // XKV_MODEL_SYNTHETIC_MODEL_H_
