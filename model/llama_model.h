// The Llama decoder on CPU, composed from the kernels/cpu launchers, batch-first: one call runs
// several sequences, each with its own new tokens (a prefill chunk or one decode token), its own
// logical start position and its own per-layer cache lengths. Token rows of all sequences are
// concatenated for the GEMMs (QKV, O, FFN, lm_head); attention runs per sequence.
//
// Stage-friendly split: Embed (first stage) → RunLayers(begin, end) (any stage, in place) →
// Logits (last stage). Not thread-safe: one call at a time per LlamaModel (scratch is reused).
#ifndef XKV_MODEL_LLAMA_MODEL_H_
#define XKV_MODEL_LLAMA_MODEL_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/cpu/parallel_for.h"
#include "model/kv_cache.h"
#include "model/llama_weights.h"

namespace xkv {

// One sequence's part of a batch step. Its new tokens are `n_new` consecutive rows of the hidden
// state, after the rows of the sequences before it.
struct SequenceStep {
  KvCache* cache = nullptr;  // this sequence's cache; must cover the layers being run
  int64_t n_new = 0;         // >= 1
  // Logical position of the first new token = prompt tokens + generated tokens before it. NEVER
  // the cache length: after eviction the cache is shorter than the position.
  int64_t position = 0;
  bool observe = false;  // call BatchStep::observer for this sequence
  // The last `replayed_decodes` of the n_new rows replay tokens this sequence first computed one
  // a step (a preempted request's recompute): each row gets the one-token attention, so the cache
  // and the logits are the decode steps' bit for bit (the batched kernels sum in another order,
  // which flips greedy near-ties). 0 <= replayed_decodes <= n_new.
  int64_t replayed_decodes = 0;
};

// What the observer sees at one layer for one sequence (pointers valid only during the call).
struct LayerObservation {
  int layer = 0;     // model layer index
  int sequence = 0;  // index into BatchStep::sequences
  int n_heads = 0, n_kv_heads = 0, head_dim = 0;
  int64_t n_new = 0;
  const float* q = nullptr;  // fp32 [n_new, n_heads, head_dim], post-RoPE, contiguous
  // fp32 [n_kv_heads][k_len][head_dim] post-RoPE keys incl. the new ones (last n_new rows);
  // heads k_head_stride elements apart.
  const float* k = nullptr;
  int64_t k_head_stride = 0;
  int64_t k_len = 0;
};
using LayerObserver = std::function<absl::Status(const LayerObservation&)>;

struct BatchStep {
  std::vector<SequenceStep> sequences;
  // Mini-prefill: no KV writes (attention uses temporary K/V), and the run stops right after the
  // observer of the model's last layer (hidden is then not meaningful).
  bool scores_only = false;
  LayerObserver observer;  // optional; errors it returns abort the step

  int64_t num_tokens() const;
  // Row index (into the concatenated new tokens) of each sequence's last new token.
  std::vector<int64_t> LastRows() const;
};

// kExact computes in fp32 from the dequantized weights. kGgml computes as llama.cpp's CPU backend
// does, so the engine produces llama.cpp's logits on the same GGUF. For Llama layers whose matrices
// are Q4_1 / Q8_0 (kept in their blocks) with head_dim % 16 == 0 and "normal" RoPE over the whole
// head, every op is bit-exact with the emulated build (kernels/cpu/ggml_exact.h): 8-bit activation
// blocks and integer block products, fp16 K/V cache, llama.cpp's own softmax, SiLU, RMSNorm and
// RoPE arithmetic and its SIMD summation orders. Other weights fall back to rounding only: the
// activations entering a quantized product are rounded to the weight type's 8-bit blocks, queries,
// keys and values to fp16 and the attention probabilities to fp16, with fp32 GEMMs in between.
// kBf16 mirrors the CUDA engine's rounding (the CPU reference of model/cuda): weights rounded to
// bf16, every GEMM input rounded to bf16, keys and values cached as bf16, and prefill attention
// (n_new > 1) rounded as the tensor-core flash kernel rounds (Q * scale * log2 e and the
// probabilities to bf16, online softmax over 64-key tiles: cpu::AttentionShape::
// emulate_bf16_flash); fp32 elsewhere (decode attention included, as on the GPU).
enum class Numerics { kExact, kGgml, kBf16 };

struct LlamaModelOptions {
  int num_threads = 1;  // OpenBLAS threads (process-wide) and the attention thread pool
  Numerics numerics = Numerics::kExact;
};

class LlamaModel {
 public:
  // Validates the weights; the model runs the layers the weights hold.
  static absl::StatusOr<std::unique_ptr<LlamaModel>> Create(
      std::shared_ptr<const LlamaWeights> weights, const LlamaModelOptions& options);

  const ModelConfig& config() const { return weights_->config; }
  const LlamaWeights& weights() const { return *weights_; }
  int layer_begin() const { return weights_->layer_begin; }
  int layer_end() const { return weights_->layer_end; }

  // A cache covering this model's layers.
  std::unique_ptr<KvCache> NewCache() const;

  // tokens: int32 [n]. Returns fp32 [n, hidden]. Needs the embedding.
  absl::StatusOr<std::vector<float>> Embed(absl::Span<const int32_t> tokens) const;

  // Runs model layers [begin, end) (within the loaded range) over the batch, in place.
  // hidden: fp32 [batch.num_tokens(), hidden].
  absl::Status RunLayers(int begin, int end, const BatchStep& batch, absl::Span<float> hidden);

  // Final norm + lm_head for the given rows of hidden. Returns fp32 [rows.size(), vocab].
  absl::StatusOr<std::vector<float>> Logits(absl::Span<const float> hidden,
                                            absl::Span<const int64_t> rows);

  // Whole model (all layers loaded): Embed → RunLayers → Logits of each sequence's last token, or
  // of every token when `all_rows`. tokens: int32 [batch.num_tokens()].
  absl::StatusOr<std::vector<float>> Forward(absl::Span<const int32_t> tokens,
                                             const BatchStep& batch, bool all_rows = false);

 private:
  LlamaModel(std::shared_ptr<const LlamaWeights> weights, const LlamaModelOptions& options);
  absl::Status ValidateBatch(int begin, int end, const BatchStep& batch, size_t hidden_size) const;
  absl::Status RunAttention(int layer, const BatchStep& batch, bool* stop);
  absl::Status AttendSequence(int layer, int s, const SequenceStep& seq, int64_t row0,
                              const BatchStep& batch, bool* stop);
  // Attention of a layer whose KV heads hold different counts (per-head budgets): one kernel call
  // per KV head and its group of query heads, each over that head's own rows.
  absl::Status AttendRagged(int layer, const SequenceStep& seq, int64_t row0);
  // Attention of n query rows [n][heads * head_dim] (`q_stride` / `out_stride` apart) over `len`
  // keys of which the rows are the last n (row i sees the first len - n + i + 1): the rows before
  // the last `replayed` in one call of the kernel their count selects, each replayed row alone.
  absl::Status AttendRows(bool exact, int heads, int kv_heads, const float* q, int64_t q_stride,
                          int64_t n, int64_t replayed, const float* k, const float* v,
                          int64_t head_stride, int64_t len, float* out, int64_t out_stride);
  absl::Status AttendKernel(bool exact, int heads, int kv_heads, const float* q, int64_t q_stride,
                            int64_t n, const float* k, const float* v, int64_t head_stride,
                            int64_t len, float* out, int64_t out_stride);
  absl::Status RunLayer(int layer, const BatchStep& batch, float* hidden, bool* stop);
  // The architecture's steps between the QKV matmul and RoPE on qkv_'s n rows (model/arch/arch.h),
  // in llama.cpp's order: the Q/K/V bias add, then RMSNorm over each Q and K head.
  absl::Status QkvHooks(const LlamaLayerWeights& w, int64_t n);
  // kGgml's bit-exact path (see Numerics) for one layer, and whether the layer can take it.
  bool ExactLayer(const LlamaLayerWeights& w) const;
  absl::Status RunExactLayer(int layer, const BatchStep& batch, float* hidden, bool* stop);
  // c (+)= rows of `a` (m rows of k, lda apart) · wᵀ, quantizing `a` to ggml's activation blocks.
  absl::Status ExactMatmul(const float* a, int64_t lda, int64_t m, const cpu::ggml::QuantMatrix& w,
                           float* c, int64_t ldc, bool accumulate);
  // Rounds `rows` activation rows of `cols` (rows `stride` apart) in place for kGgml numerics;
  // with `min_correction` (fp32 [rows, cols / 32]) also the Q8_1 sum corrections.
  absl::Status Round(cpu::ActRounding rounding, float* x, int64_t rows, int64_t cols,
                     int64_t stride, float* min_correction = nullptr) const;
  // c[m, n] (+)= a[m, k] · w[n, k]ᵀ with kGgml rounding of `a` (in place) for weights of that
  // rounding, plus the Q4_1 minimum correction when `mins` (fp32 [n, k / 32]) is not empty.
  absl::Status Matmul(float* a, int64_t lda, const std::vector<float>& w, cpu::ActRounding rounding,
                      const std::vector<float>& mins, float* c, int64_t ldc, int64_t m, int64_t n,
                      int64_t k, bool accumulate);

  std::shared_ptr<const LlamaWeights> weights_;
  LlamaModelOptions options_;
  std::unique_ptr<cpu::ThreadPool> pool_;
  // Scratch, resized per step.
  std::vector<float> norm_;           // fp32 [n, hidden]
  std::vector<float> qkv_;            // fp32 [n, q_dim + 2 kv_dim] (K part roped in place)
  std::vector<float> q_;              // fp32 [n, q_dim] post-RoPE
  std::vector<float> attn_;           // fp32 [n, q_dim]
  std::vector<float> ffn_;            // fp32 [n, 2 ffn]
  std::vector<float> cos_sin_;        // fp32 [n, rope_dims]
  std::vector<float> tmp_k_, tmp_v_;  // scores-only K/V, [kv_heads][len][head_dim]
  std::vector<float> head_q_;         // AttendRagged: one KV head's queries, [n, group, head_dim]
  std::vector<float> min_fix_;        // fp32 [n, k / 32] Q8_1 sum corrections (kGgml)
  std::vector<cpu::ggml::ActBlock> act_blocks_;   // kGgml exact path: quantized activation rows
  std::vector<cpu::ggml::Q8KBlock> act_kblocks_;  // the same for K-quant matrices (Q8_K)
  std::vector<float> exact_rope_;  // kGgml exact path: ggml's cos/sin cache [n, dims]
};

}  // namespace xkv

#endif  // XKV_MODEL_LLAMA_MODEL_H_
