#include "model/llama_model.h"

#include <cmath>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/embedding.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/ggml_exact.h"
#include "kernels/cpu/qkv_hooks.h"
#include "kernels/cpu/rms_norm.h"
#include "kernels/cpu/rope.h"
#include "kernels/cpu/swiglu.h"
#include "model/step_rows.h"

namespace xkv {
namespace {

cpu::RopeMode ToRopeMode(RopeStyle style) {
  return style == RopeStyle::kNeox ? cpu::RopeMode::kNeox : cpu::RopeMode::kNorm;
}

}  // namespace

int64_t BatchStep::num_tokens() const { return StepRows(sequences); }

std::vector<int64_t> BatchStep::LastRows() const { return StepLastRows(sequences); }

LlamaModel::LlamaModel(std::shared_ptr<const LlamaWeights> weights,
                       const LlamaModelOptions& options)
    : weights_(std::move(weights)), options_(options) {
  options_.num_threads = std::max(1, options_.num_threads);
  pool_ = std::make_unique<cpu::ThreadPool>(options_.num_threads);
  cpu::SetGemmThreads(options_.num_threads);
}

absl::StatusOr<std::unique_ptr<LlamaModel>> LlamaModel::Create(
    std::shared_ptr<const LlamaWeights> weights, const LlamaModelOptions& options) {
  if (weights == nullptr) return absl::InvalidArgumentError("llama_model: null weights");
  RETURN_IF_ERROR(ValidateLlamaWeights(*weights));
  // Weights held only in ggml blocks (LlamaWeightsOptions::blocks_only) serve only kGgml's exact
  // products: any lm_head, layers only of a GgmlExactShape (a NeoX-RoPE model keeps fp32 layers
  // and a head in blocks).
  bool layers_blocks_only = false;
  for (const LlamaLayerWeights& l : weights->layers) layers_blocks_only |= l.BlocksOnly();
  const bool head_blocks_only = weights->lm_head == nullptr && weights->lm_head_q != nullptr;
  if ((head_blocks_only && options.numerics != Numerics::kGgml) ||
      (layers_blocks_only &&
       (options.numerics != Numerics::kGgml || !GgmlExactShape(weights->config)))) {
    return absl::InvalidArgumentError(
        "llama_model: weights held only in ggml blocks need kGgml numerics (load them with "
        "blocks_only = false for other numerics)");
  }
  if (options.numerics == Numerics::kBf16) {
    weights = std::make_shared<const LlamaWeights>(RoundWeightsToBf16(*weights));
  }
  return std::unique_ptr<LlamaModel>(new LlamaModel(std::move(weights), options));
}

std::unique_ptr<KvCache> LlamaModel::NewCache() const {
  return std::make_unique<KvCache>(layer_begin(), layer_end(), config().n_kv_heads,
                                   config().head_dim);
}

absl::StatusOr<std::vector<float>> LlamaModel::Embed(absl::Span<const int32_t> tokens) const {
  if (!weights_->embedding) return absl::FailedPreconditionError("llama_model: no embedding");
  const ModelConfig& c = config();
  std::vector<float> out(tokens.size() * c.hidden);
  RETURN_IF_ERROR(cpu::LaunchEmbedding(weights_->embedding->data(), c.vocab_size, c.hidden,
                                       tokens.data(), tokens.size(), out.data()));
  return out;
}

absl::Status LlamaModel::ValidateBatch(int begin, int end, const BatchStep& batch,
                                       size_t hidden_size) const {
  if (begin < layer_begin() || end > layer_end() || begin > end) {
    return absl::InvalidArgumentError(absl::StrCat("llama_model: layers [", begin, ", ", end,
                                                   ") outside loaded [", layer_begin(), ", ",
                                                   layer_end(), ")"));
  }
  if (batch.sequences.empty()) return absl::InvalidArgumentError("llama_model: empty batch");
  for (size_t i = 0; i < batch.sequences.size(); ++i) {
    const SequenceStep& s = batch.sequences[i];
    if (s.n_new < 1 || s.position < 0 || s.cache == nullptr || s.replayed_decodes < 0 ||
        s.replayed_decodes > s.n_new) {
      return absl::InvalidArgumentError(absl::StrCat(
          "llama_model: sequence ", i,
          " needs n_new >= 1, position >= 0, a cache, 0 <= replayed_decodes <= n_new"));
    }
    if (s.cache->n_kv_heads() != config().n_kv_heads || s.cache->head_dim() != config().head_dim ||
        s.cache->layer_begin() > begin || s.cache->layer_end() < end) {
      return absl::InvalidArgumentError(
          absl::StrCat("llama_model: sequence ", i, " cache does not cover the layers"));
    }
    for (int l = begin; l < end; ++l) {
      if (s.cache->length(l) > s.position) {  // the cache only holds earlier tokens
        return absl::InvalidArgumentError(absl::StrCat("llama_model: sequence ", i, " layer ", l,
                                                       " caches ", s.cache->length(l),
                                                       " tokens but its position is ", s.position));
      }
    }
  }
  if (hidden_size != static_cast<size_t>(batch.num_tokens() * config().hidden)) {
    return absl::InvalidArgumentError(absl::StrCat("llama_model: hidden has ", hidden_size,
                                                   " floats, want ", batch.num_tokens(), " x ",
                                                   config().hidden));
  }
  return absl::OkStatus();
}

absl::Status LlamaModel::RunLayers(int begin, int end, const BatchStep& batch,
                                   absl::Span<float> hidden) {
  RETURN_IF_ERROR(ValidateBatch(begin, end, batch, hidden.size()));
  const ModelConfig& c = config();
  const int64_t n = batch.num_tokens();
  const int64_t q_dim = int64_t{c.n_heads} * c.head_dim;
  const int64_t kv_dim = int64_t{c.n_kv_heads} * c.head_dim;
  norm_.resize(n * c.hidden);
  qkv_.resize(n * (q_dim + 2 * kv_dim));
  q_.resize(n * q_dim);
  attn_.resize(n * q_dim);
  ffn_.resize(n * 2 * c.ffn);
  std::vector<int64_t> positions;
  positions.reserve(n);
  for (const SequenceStep& s : batch.sequences) {
    for (int64_t i = 0; i < s.n_new; ++i) positions.push_back(s.position + i);
  }
  // Each path's cos/sin cache, built only when one of the layers takes that path.
  bool any_exact = false, any_other = false;
  for (int layer = begin; layer < end; ++layer) {
    (ExactLayer(weights_->layer(layer)) ? any_exact : any_other) = true;
  }
  const float* freq_factors = weights_->rope_freqs.empty() ? nullptr : weights_->rope_freqs.data();
  if (any_other) {
    cos_sin_.resize(n * c.rope_dims);
    RETURN_IF_ERROR(cpu::LaunchRopeCache(positions.data(), n, c.rope_dims, c.rope_base,
                                         cos_sin_.data(), {c.rope_freq_scale, freq_factors}));
  }
  if (any_exact) {
    exact_rope_.resize(n * c.rope_dims);
    RETURN_IF_ERROR(cpu::ggml::RopeCache(positions.data(), n, c.rope_dims, c.rope_base,
                                         exact_rope_.data(), c.rope_freq_scale, freq_factors));
  }
  for (int layer = begin; layer < end; ++layer) {
    bool stop = false;
    RETURN_IF_ERROR(RunLayer(layer, batch, hidden.data(), &stop));
    if (stop) break;
  }
  return absl::OkStatus();
}

bool LlamaModel::ExactLayer(const LlamaLayerWeights& w) const {
  const ModelConfig& c = config();
  return options_.numerics == Numerics::kGgml && !w.wqkv_q.empty() && !w.wo_q.empty() &&
         !w.w_gate_up_q.empty() && !w.w_down_q.empty() && GgmlExactShape(c);
}

absl::Status LlamaModel::ExactMatmul(const float* a, int64_t lda, int64_t m,
                                     const cpu::ggml::QuantMatrix& w, float* c, int64_t ldc,
                                     bool accumulate) {
  const int64_t k = w.cols();
  if (w.is_kquant()) {  // K-quants take Q8_K activations
    const int64_t nbk = k / cpu::ggml::kKBlock;
    act_kblocks_.resize(m * nbk);
    for (int64_t i = 0; i < m; ++i) {
      cpu::ggml::QuantizeRowQ8K(a + i * lda, k, &act_kblocks_[i * nbk]);
    }
    return cpu::ggml::LaunchKQuantMatmul(w, act_kblocks_.data(), m, c, ldc, accumulate,
                                         pool_.get());
  }
  const int64_t nb = k / cpu::ggml::kQBlock;
  act_blocks_.resize(m * nb);
  for (int64_t i = 0; i < m; ++i) cpu::ggml::QuantizeRow(a + i * lda, k, &act_blocks_[i * nb]);
  return cpu::ggml::LaunchQuantMatmul(w, act_blocks_.data(), m, c, ldc, accumulate, pool_.get());
}

// One layer as llama.cpp's graph computes it (llama.cpp: src/models/llama.cpp).
absl::Status LlamaModel::RunExactLayer(int layer, const BatchStep& batch, float* hidden,
                                       bool* stop) {
  const ModelConfig& c = config();
  const LlamaLayerWeights& w = weights_->layer(layer);
  const int64_t n = batch.num_tokens();
  const int64_t q_dim = int64_t{c.n_heads} * c.head_dim;
  const int64_t qkv_dim = q_dim + 2 * int64_t{c.n_kv_heads} * c.head_dim;
  RETURN_IF_ERROR(
      cpu::LaunchRmsNorm(hidden, w.attn_norm.data(), n, c.hidden, c.norm_eps, norm_.data()));
  RETURN_IF_ERROR(ExactMatmul(norm_.data(), c.hidden, n, w.wqkv_q, qkv_.data(), qkv_dim, false));
  RETURN_IF_ERROR(QkvHooks(w, n));
  RETURN_IF_ERROR(cpu::ggml::LaunchRope(qkv_.data(), qkv_dim, n, c.n_heads, c.head_dim,
                                        exact_rope_.data(), q_.data(), q_dim));
  float* k_new = qkv_.data() + q_dim;
  RETURN_IF_ERROR(cpu::ggml::LaunchRope(k_new, qkv_dim, n, c.n_kv_heads, c.head_dim,
                                        exact_rope_.data(), k_new, qkv_dim));
  // fp16 K/V cache; Q is rounded to fp16 for the K·Q product.
  RETURN_IF_ERROR(Round(cpu::ActRounding::kF16, q_.data(), n, q_dim, q_dim));
  RETURN_IF_ERROR(Round(cpu::ActRounding::kF16, k_new, n, qkv_dim - q_dim, qkv_dim));
  RETURN_IF_ERROR(RunAttention(layer, batch, stop));
  if (*stop) return absl::OkStatus();
  RETURN_IF_ERROR(ExactMatmul(attn_.data(), q_dim, n, w.wo_q, hidden, c.hidden, true));
  RETURN_IF_ERROR(
      cpu::LaunchRmsNorm(hidden, w.ffn_norm.data(), n, c.hidden, c.norm_eps, norm_.data()));
  const int64_t f = c.ffn;
  RETURN_IF_ERROR(ExactMatmul(norm_.data(), c.hidden, n, w.w_gate_up_q, ffn_.data(), 2 * f, false));
  RETURN_IF_ERROR(cpu::ggml::LaunchSwiGlu(ffn_.data(), 2 * f, ffn_.data() + f, 2 * f, n, f,
                                          ffn_.data(), 2 * f));
  return ExactMatmul(ffn_.data(), 2 * f, n, w.w_down_q, hidden, c.hidden, true);
}

absl::Status LlamaModel::RunLayer(int layer, const BatchStep& batch, float* hidden, bool* stop) {
  const ModelConfig& c = config();
  const LlamaLayerWeights& w = weights_->layer(layer);
  if (ExactLayer(w)) return RunExactLayer(layer, batch, hidden, stop);
  const int64_t n = batch.num_tokens();
  const int64_t q_dim = int64_t{c.n_heads} * c.head_dim;
  const int64_t qkv_dim = q_dim + 2 * int64_t{c.n_kv_heads} * c.head_dim;
  const cpu::RopeMode mode = ToRopeMode(c.rope_style);
  RETURN_IF_ERROR(
      cpu::LaunchRmsNorm(hidden, w.attn_norm.data(), n, c.hidden, c.norm_eps, norm_.data()));
  RETURN_IF_ERROR(Matmul(norm_.data(), c.hidden, w.wqkv, w.qkv_rounding, w.wqkv_mins, qkv_.data(),
                         qkv_dim, n, qkv_dim, c.hidden, false));
  RETURN_IF_ERROR(QkvHooks(w, n));
  RETURN_IF_ERROR(cpu::LaunchRope(qkv_.data(), qkv_dim, n, c.n_heads, c.head_dim, c.rope_dims, mode,
                                  cos_sin_.data(), q_.data(), q_dim));
  float* k_new = qkv_.data() + q_dim;  // roped in place, rows qkv_dim apart
  RETURN_IF_ERROR(cpu::LaunchRope(k_new, qkv_dim, n, c.n_kv_heads, c.head_dim, c.rope_dims, mode,
                                  cos_sin_.data(), k_new, qkv_dim));
  if (options_.numerics == Numerics::kGgml) {
    // llama.cpp: fp16 K/V cache; Q is rounded to fp16 for the K·Q product.
    RETURN_IF_ERROR(Round(cpu::ActRounding::kF16, q_.data(), n, q_dim, q_dim));
    RETURN_IF_ERROR(Round(cpu::ActRounding::kF16, k_new, n, qkv_dim - q_dim, qkv_dim));
  } else if (options_.numerics == Numerics::kBf16) {  // the CUDA engine's bf16 K/V cache
    RETURN_IF_ERROR(Round(cpu::ActRounding::kBf16, k_new, n, qkv_dim - q_dim, qkv_dim));
  }
  RETURN_IF_ERROR(RunAttention(layer, batch, stop));
  if (*stop) return absl::OkStatus();
  // hidden += attn · Woᵀ
  RETURN_IF_ERROR(Matmul(attn_.data(), q_dim, w.wo, w.wo_rounding, w.wo_mins, hidden, c.hidden, n,
                         c.hidden, q_dim, true));
  RETURN_IF_ERROR(
      cpu::LaunchRmsNorm(hidden, w.ffn_norm.data(), n, c.hidden, c.norm_eps, norm_.data()));
  const int64_t f = c.ffn;
  RETURN_IF_ERROR(Matmul(norm_.data(), c.hidden, w.w_gate_up, w.gate_up_rounding, w.w_gate_up_mins,
                         ffn_.data(), 2 * f, n, 2 * f, c.hidden, false));
  RETURN_IF_ERROR(
      cpu::LaunchSwiGlu(ffn_.data(), 2 * f, ffn_.data() + f, 2 * f, n, f, ffn_.data(), 2 * f));
  // hidden += silu(gate)*up · W_downᵀ
  return Matmul(ffn_.data(), 2 * f, w.w_down, w.down_rounding, w.w_down_mins, hidden, c.hidden, n,
                c.hidden, f, true);
}

absl::Status LlamaModel::QkvHooks(const LlamaLayerWeights& w, int64_t n) {
  const ModelConfig& c = config();
  const int64_t qkv_dim = int64_t{c.n_heads + 2 * c.n_kv_heads} * c.head_dim;
  const auto data = [](const std::vector<float>& v) { return v.empty() ? nullptr : v.data(); };
  return cpu::LaunchQkvHooks({c.n_heads, c.n_kv_heads, c.head_dim, c.norm_eps}, qkv_.data(),
                             qkv_dim, n, data(w.qkv_bias), data(w.q_norm), data(w.k_norm));
}

absl::Status LlamaModel::Round(cpu::ActRounding rounding, float* x, int64_t rows, int64_t cols,
                               int64_t stride, float* min_correction) const {
  if (options_.numerics == Numerics::kExact || rounding == cpu::ActRounding::kNone) {
    return absl::OkStatus();
  }
  if (stride == cols) {
    return cpu::LaunchRoundActivations(rounding, x, rows, cols, x, min_correction);
  }
  for (int64_t r = 0; r < rows; ++r) {
    float* fix = min_correction == nullptr ? nullptr : min_correction + r * (cols / 32);
    RETURN_IF_ERROR(
        cpu::LaunchRoundActivations(rounding, x + r * stride, 1, cols, x + r * stride, fix));
  }
  return absl::OkStatus();
}

absl::Status LlamaModel::Matmul(float* a, int64_t lda, const std::vector<float>& w,
                                cpu::ActRounding rounding, const std::vector<float>& mins, float* c,
                                int64_t ldc, int64_t m, int64_t n, int64_t k, bool accumulate) {
  if (options_.numerics == Numerics::kBf16) rounding = cpu::ActRounding::kBf16;
  const bool fix = options_.numerics == Numerics::kGgml && !mins.empty() &&
                   rounding == cpu::ActRounding::kQ8Blocks;
  if (fix) min_fix_.resize(m * (k / 32));
  RETURN_IF_ERROR(Round(rounding, a, m, k, lda, fix ? min_fix_.data() : nullptr));
  RETURN_IF_ERROR(cpu::LaunchGemm(a, lda, w.data(), k, c, ldc, m, n, k, accumulate));
  if (!fix) return absl::OkStatus();
  return cpu::LaunchGemm(min_fix_.data(), k / 32, mins.data(), k / 32, c, ldc, m, n, k / 32, true);
}

absl::Status LlamaModel::RunAttention(int layer, const BatchStep& batch, bool* stop) {
  int64_t row0 = 0;
  for (size_t s = 0; s < batch.sequences.size(); ++s) {
    RETURN_IF_ERROR(
        AttendSequence(layer, static_cast<int>(s), batch.sequences[s], row0, batch, stop));
    row0 += batch.sequences[s].n_new;
  }
  *stop = batch.scores_only && layer == config().n_layers - 1;
  return absl::OkStatus();
}

absl::Status LlamaModel::AttendSequence(int layer, int s, const SequenceStep& seq, int64_t row0,
                                        const BatchStep& batch, bool* stop) {
  const ModelConfig& c = config();
  const int64_t hd = c.head_dim, q_dim = int64_t{c.n_heads} * hd;
  const int64_t qkv_dim = q_dim + 2 * int64_t{c.n_kv_heads} * hd;
  const float* k_new = qkv_.data() + row0 * qkv_dim + q_dim;
  const float* v_new = k_new + int64_t{c.n_kv_heads} * hd;
  const float *k, *v;
  int64_t head_stride, len;
  if (!batch.scores_only) {
    RETURN_IF_ERROR(seq.cache->Append(layer, k_new, v_new, seq.n_new, qkv_dim));
    if (!seq.cache->uniform(layer)) {
      if (seq.observe && batch.observer) {
        return absl::FailedPreconditionError(absl::StrCat(
            "llama_model: layer ", layer, " holds different counts per KV head (per-head budgets)",
            "; its importance cannot be observed again"));
      }
      return AttendRagged(layer, seq, row0);
    }
    k = seq.cache->k(layer);
    v = seq.cache->v(layer);
    head_stride = seq.cache->head_stride(layer);
    len = seq.cache->length(layer);
  } else {  // temporary [kv_heads][past + n_new][hd]: cached rows, then the new ones
    if (!seq.cache->uniform(layer)) {
      return absl::FailedPreconditionError(
          absl::StrCat("llama_model: scores-only step over layer ", layer,
                       ", which holds different counts per KV head (per-head budgets)"));
    }
    const int64_t past = seq.cache->length(layer);
    len = past + seq.n_new;
    head_stride = len * hd;
    tmp_k_.resize(c.n_kv_heads * head_stride);
    tmp_v_.resize(tmp_k_.size());
    for (int g = 0; g < c.n_kv_heads; ++g) {
      const int64_t src = g * seq.cache->head_stride(layer), dst = g * head_stride;
      if (past > 0) {  // an empty cache may have no buffer (memcpy from null is undefined)
        std::memcpy(&tmp_k_[dst], seq.cache->k(layer) + src, past * hd * sizeof(float));
        std::memcpy(&tmp_v_[dst], seq.cache->v(layer) + src, past * hd * sizeof(float));
      }
      for (int64_t t = 0; t < seq.n_new; ++t) {
        std::memcpy(&tmp_k_[dst + (past + t) * hd], k_new + t * qkv_dim + g * hd, hd * 4);
        std::memcpy(&tmp_v_[dst + (past + t) * hd], v_new + t * qkv_dim + g * hd, hd * 4);
      }
    }
    k = tmp_k_.data();
    v = tmp_v_.data();
  }
  const float* q = q_.data() + row0 * q_dim;
  if (seq.observe && batch.observer) {
    LayerObservation obs{layer,     s, c.n_heads, c.n_kv_heads, c.head_dim,
                         seq.n_new, q, k,         head_stride,  len};
    RETURN_IF_ERROR(batch.observer(obs));
  }
  if (batch.scores_only && layer == c.n_layers - 1) return absl::OkStatus();
  return AttendRows(ExactLayer(weights_->layer(layer)), c.n_heads, c.n_kv_heads, q, q_dim,
                    seq.n_new, seq.replayed_decodes, k, v, head_stride, len,
                    attn_.data() + row0 * q_dim, q_dim);
}

absl::Status LlamaModel::AttendRagged(int layer, const SequenceStep& seq, int64_t row0) {
  const ModelConfig& c = config();
  const int group = c.n_heads / c.n_kv_heads;
  const int64_t hd = c.head_dim, q_dim = int64_t{c.n_heads} * hd;
  const bool exact = ExactLayer(weights_->layer(layer));
  for (int g = 0; g < c.n_kv_heads; ++g) {
    const int64_t len = seq.cache->head_length(layer, g);
    RETURN_IF_ERROR(AttendRows(exact, group, 1, q_.data() + row0 * q_dim + g * group * hd, q_dim,
                               seq.n_new, seq.replayed_decodes, seq.cache->k_head(layer, g),
                               seq.cache->v_head(layer, g), len * hd, len,
                               attn_.data() + row0 * q_dim + g * group * hd, q_dim));
  }
  return absl::OkStatus();
}

absl::Status LlamaModel::AttendRows(bool exact, int heads, int kv_heads, const float* q,
                                    int64_t q_stride, int64_t n, int64_t replayed, const float* k,
                                    const float* v, int64_t head_stride, int64_t len, float* out,
                                    int64_t out_stride) {
  const int64_t batched = n - replayed;
  if (batched > 0) {
    RETURN_IF_ERROR(AttendKernel(exact, heads, kv_heads, q, q_stride, batched, k, v, head_stride,
                                 len - replayed, out, out_stride));
  }
  for (int64_t i = batched; i < n; ++i) {
    RETURN_IF_ERROR(AttendKernel(exact, heads, kv_heads, q + i * q_stride, q_stride, 1, k, v,
                                 head_stride, len - n + i + 1, out + i * out_stride, out_stride));
  }
  return absl::OkStatus();
}

absl::Status LlamaModel::AttendKernel(bool exact, int heads, int kv_heads, const float* q,
                                      int64_t q_stride, int64_t n, const float* k, const float* v,
                                      int64_t head_stride, int64_t len, float* out,
                                      int64_t out_stride) {
  const int64_t hd = config().head_dim;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  if (exact) {
    const cpu::ggml::AttentionShape e{heads, kv_heads, static_cast<int>(hd), scale};
    return cpu::ggml::LaunchAttention(e, q, q_stride, n, k, v, head_stride, len, out, out_stride,
                                      pool_.get());
  }
  cpu::AttentionShape shape{heads, kv_heads, static_cast<int>(hd), scale};
  shape.round_probs_f16 = options_.numerics == Numerics::kGgml;
  // kBf16: the CUDA engine's kernels (model/cuda/cuda_llama_step.cc): one new token goes to the
  // fp32 decode kernel, more to the tensor-core flash prefill, whose rounding the CPU emulates.
  shape.emulate_bf16_flash = options_.numerics == Numerics::kBf16;
  if (n == 1) return cpu::LaunchDecodeAttention(shape, q, k, v, head_stride, len, out, pool_.get());
  const int64_t row = int64_t{heads} * hd;
  if (q_stride != row) {  // the prefill kernel takes contiguous [n, heads, hd] queries
    head_q_.resize(n * row);
    for (int64_t t = 0; t < n; ++t) {
      std::memcpy(&head_q_[t * row], q + t * q_stride, row * sizeof(float));
    }
    q = head_q_.data();
  }
  return cpu::LaunchPrefillAttention(shape, q, n, k, v, head_stride, len, out, out_stride,
                                     pool_.get());
}

absl::StatusOr<std::vector<float>> LlamaModel::Logits(absl::Span<const float> hidden,
                                                      absl::Span<const int64_t> rows) {
  if (!weights_->lm_head && !weights_->lm_head_q) {
    return absl::FailedPreconditionError("llama_model: no lm_head");
  }
  const ModelConfig& c = config();
  const int64_t n_rows = hidden.size() / c.hidden;
  const int64_t r = rows.size();
  norm_.resize(r * c.hidden);
  for (int64_t i = 0; i < r; ++i) {
    if (rows[i] < 0 || rows[i] >= n_rows) {
      return absl::InvalidArgumentError(
          absl::StrCat("llama_model: logits row ", rows[i], " outside [0, ", n_rows, ")"));
    }
    std::memcpy(norm_.data() + i * c.hidden, hidden.data() + rows[i] * c.hidden,
                c.hidden * sizeof(float));
  }
  RETURN_IF_ERROR(cpu::LaunchRmsNorm(norm_.data(), weights_->output_norm.data(), r, c.hidden,
                                     c.norm_eps, norm_.data()));
  std::vector<float> logits(r * c.vocab_size);
  if (options_.numerics == Numerics::kGgml && weights_->lm_head_q) {
    RETURN_IF_ERROR(ExactMatmul(norm_.data(), c.hidden, r, *weights_->lm_head_q, logits.data(),
                                c.vocab_size, false));
    return logits;
  }
  RETURN_IF_ERROR(Matmul(norm_.data(), c.hidden, *weights_->lm_head, weights_->lm_head_rounding,
                         weights_->lm_head_mins, logits.data(), c.vocab_size, r, c.vocab_size,
                         c.hidden, false));
  return logits;
}

absl::StatusOr<std::vector<float>> LlamaModel::Forward(absl::Span<const int32_t> tokens,
                                                       const BatchStep& batch, bool all_rows) {
  if (static_cast<int64_t>(tokens.size()) != batch.num_tokens()) {
    return absl::InvalidArgumentError(absl::StrCat("llama_model: ", tokens.size(),
                                                   " tokens for a batch of ", batch.num_tokens()));
  }
  ASSIGN_OR_RETURN(std::vector<float> hidden, Embed(tokens));
  RETURN_IF_ERROR(RunLayers(layer_begin(), layer_end(), batch, absl::MakeSpan(hidden)));
  if (batch.scores_only) return std::vector<float>();
  std::vector<int64_t> rows = batch.LastRows();
  if (all_rows) {
    rows.resize(tokens.size());
    for (size_t i = 0; i < rows.size(); ++i) rows[i] = i;
  }
  return Logits(hidden, rows);
}

}  // namespace xkv
