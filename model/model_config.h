// Llama-family model hyper-parameters read from GGUF metadata.
#ifndef XKV_MODEL_MODEL_CONFIG_H_
#define XKV_MODEL_MODEL_CONFIG_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "model/gguf.h"

namespace xkv {

// How RoPE pairs dimensions: kNorm rotates adjacent pairs (2i, 2i+1) — GGUF "llama" files, whose
// Q/K weights were permuted at conversion; kNeox rotates (i, i + d/2).
enum class RopeStyle { kNorm, kNeox };

struct ModelConfig {
  std::string architecture;   // general.architecture: "llama", "qwen2" or "qwen3" (model/arch/)
  std::string name;           // general.name
  int n_layers = 0;           // <arch>.block_count
  int hidden = 0;             // <arch>.embedding_length
  int ffn = 0;                // <arch>.feed_forward_length
  int n_heads = 0;            // <arch>.attention.head_count
  int n_kv_heads = 0;         // <arch>.attention.head_count_kv (defaults to n_heads)
  int head_dim = 0;           // <arch>.attention.key_length, else hidden / n_heads
  int rope_dims = 0;          // <arch>.rope.dimension_count, else head_dim
  float rope_base = 10000.f;  // <arch>.rope.freq_base
  // <arch>.rope.scaling.type "linear" (llama.cpp's default when absent): 1 / rope.scaling.factor
  // (or the old rope.scale_linear), 1 without a factor; "none": 1. Multiplies every RoPE angle.
  float rope_freq_scale = 1.f;
  RopeStyle rope_style = RopeStyle::kNorm;  // the architecture's (model/arch/)
  // Hooks of the shared block the architecture's tensors switch on (model/arch/arch.h).
  bool qkv_bias = false;    // blk.N.attn_{q,k,v}.bias added after the QKV matmul (qwen2)
  bool qk_norm = false;     // blk.N.attn_{q,k}_norm.weight: RMSNorm per head before RoPE (qwen3)
  bool rope_freqs = false;  // rope_freqs.weight divides each RoPE frequency (llama 3.1)
  float norm_eps = 1e-5f;   // <arch>.attention.layer_norm_rms_epsilon
  int context_length = 0;   // <arch>.context_length
  int vocab_size = 0;       // <arch>.vocab_size, else the token list length
  bool tied_embeddings = false;  // true when output.weight is absent (lm_head = token_embd)
  int bos_token = -1;
  int eos_token = -1;

  // KV bytes per token per layer at `bytes_per_element` (K and V together).
  int64_t KvBytesPerTokenPerLayer(int bytes_per_element) const {
    return 2LL * n_kv_heads * head_dim * bytes_per_element;
  }
};

// Reads and validates the config (every count positive, heads divisible by KV heads, within sane
// limits) and which architecture hooks the file's tensors switch on. INVALID_ARGUMENT naming the
// key on a missing or bad value, or the tensor (model/arch/arch.h: ReadArchTensors).
absl::StatusOr<ModelConfig> ReadModelConfig(const GgufFile& file);

}  // namespace xkv

#endif  // XKV_MODEL_MODEL_CONFIG_H_
