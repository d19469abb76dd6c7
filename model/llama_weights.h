// fp32 (dequantized) Llama weights for a contiguous layer range, as one pipeline stage needs them.
// GEMM weights keep the GGUF row-major [out, in] layout; Q/K/V and gate/up are fused row-wise so
// one GEMM computes each group.
#ifndef XKV_MODEL_LLAMA_WEIGHTS_H_
#define XKV_MODEL_LLAMA_WEIGHTS_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/cpu/act_quant.h"
#include "kernels/cpu/ggml_exact.h"
#include "model/gguf.h"
#include "model/model_config.h"

namespace xkv {

struct LlamaLayerWeights {
  std::vector<float> attn_norm;  // fp32 [hidden]
  // fp32 [n_heads*head_dim + 2*n_kv_heads*head_dim, hidden]: rows of attn_q, then attn_k, attn_v.
  std::vector<float> wqkv;
  std::vector<float> wo;         // fp32 [hidden, n_heads*head_dim]  (attn_output)
  std::vector<float> ffn_norm;   // fp32 [hidden]
  std::vector<float> w_gate_up;  // fp32 [2*ffn, hidden]: rows of ffn_gate, then ffn_up
  std::vector<float> w_down;     // fp32 [hidden, ffn]   (ffn_down)
  // Architecture hooks (model/arch/arch.h), empty unless the config switches them on:
  std::vector<float>
      qkv_bias;               // fp32 [n_heads*head_dim + 2*n_kv_heads*head_dim]: attn_{q,k,v}.bias
  std::vector<float> q_norm;  // fp32 [head_dim]: attn_q_norm
  std::vector<float> k_norm;  // fp32 [head_dim]: attn_k_norm
  // How llama.cpp rounds the activations multiplied with each matrix (from the GGUF tensor types;
  // fused matrices follow attn_q and ffn_gate). kNone for weights built in memory.
  cpu::ActRounding qkv_rounding = cpu::ActRounding::kNone;
  cpu::ActRounding wo_rounding = cpu::ActRounding::kNone;
  cpu::ActRounding gate_up_rounding = cpu::ActRounding::kNone;
  cpu::ActRounding down_rounding = cpu::ActRounding::kNone;
  // Q4_1 block minimums, fp32 [out, in / 32] in the row order of the matrix above (zero rows for
  // parts of another type); empty when the matrix has no Q4_1 part. See kernels/cpu/act_quant.h.
  std::vector<float> wqkv_mins, wo_mins, w_gate_up_mins, w_down_mins;
  // The same matrices in their GGUF blocks, for Numerics::kGgml's bit-exact products
  // (kernels/cpu/ggml_exact.h). Empty unless every part is Q4_1 or Q8_0 (all of one type) or a
  // K-quant of ggml_exact's (Q4_K, Q5_K, Q6_K, mixed), and LlamaWeightsOptions::keep_blocks or
  // blocks_only is set.
  cpu::ggml::QuantMatrix wqkv_q, wo_q, w_gate_up_q, w_down_q;

  // True when the matrices are held only in their blocks (LlamaWeightsOptions::blocks_only).
  bool BlocksOnly() const;
  int64_t Bytes() const;
};

struct LlamaWeightsOptions {
  int layer_begin = 0;
  int layer_end = -1;          // exclusive; -1 = n_layers
  bool load_embedding = true;  // first stage: token_embd
  bool load_head = true;       // last stage: output_norm + lm_head (output.weight or token_embd)
  bool keep_blocks = true;     // also keep exact-type matrices in their blocks (the *_q fields)
  // Keep such matrices only in their blocks, without fp32 copies, wherever kGgml's bit-exact path
  // takes them (GgmlExactShape and all four of a layer's matrices in blocks; lm_head in blocks).
  // The embedding stays fp32. Such weights serve only Numerics::kGgml.
  bool blocks_only = false;
};

struct LlamaWeights {
  ModelConfig config;
  int layer_begin = 0;
  int layer_end = 0;
  std::vector<LlamaLayerWeights> layers;  // layers[i] is model layer layer_begin + i
  // fp32 [vocab, hidden]; null unless loaded. With tied embeddings and both loaded, embedding and
  // lm_head share one buffer.
  std::shared_ptr<const std::vector<float>> embedding;
  std::shared_ptr<const std::vector<float>> lm_head;  // fp32 [vocab, hidden]
  std::vector<float> output_norm;                     // fp32 [hidden]; empty unless load_head
  std::vector<float> rope_freqs;  // fp32 [rope_dims / 2]: rope_freqs.weight; empty unless config
  cpu::ActRounding lm_head_rounding = cpu::ActRounding::kNone;
  std::vector<float> lm_head_mins;  // fp32 [vocab, hidden / 32]; empty unless Q4_1
  // lm_head in its GGUF blocks (see LlamaLayerWeights::wqkv_q); null unless kept.
  std::shared_ptr<const cpu::ggml::QuantMatrix> lm_head_q;

  const LlamaLayerWeights& layer(int model_layer) const {
    return layers[model_layer - layer_begin];
  }
  bool has_layer(int model_layer) const {
    return model_layer >= layer_begin && model_layer < layer_end;
  }
  int64_t Bytes() const;
};

// Whether a model of this shape can take kGgml's bit-exact path: head_dim % 16 == 0 and
// "normal" RoPE over the whole head (kernels/cpu/ggml_exact.h).
bool GgmlExactShape(const ModelConfig& c);

// Loads and dequantizes the requested tensors from `file` (its config must come from the same
// file). INVALID_ARGUMENT for a bad range or a tensor of the wrong shape; NOT_FOUND for a missing
// tensor.
absl::StatusOr<LlamaWeights> LoadLlamaWeights(const GgufFile& file, const ModelConfig& config,
                                              const LlamaWeightsOptions& options);

// A copy whose matrices, embedding and lm_head hold bf16-representable values (round to nearest
// even), as the CUDA engine keeps them; norm gains and Q4_1 minimums are copied unchanged.
LlamaWeights RoundWeightsToBf16(const LlamaWeights& weights);

// Checks every loaded tensor's size against `weights.config` (used after building weights in
// memory, e.g. in tests).
absl::Status ValidateLlamaWeights(const LlamaWeights& weights);

}  // namespace xkv

#endif  // XKV_MODEL_LLAMA_WEIGHTS_H_
