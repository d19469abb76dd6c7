#include "model/llama_weights.h"

#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "kernels/cpu/dequant.h"
#include "kernels/cpu/half.h"

namespace xkv {
namespace {

// Reads `name`, checking its GGUF dims are [cols, rows] (dims[0] fastest = row length).
absl::StatusOr<std::vector<float>> ReadMatrix(const GgufFile& file, const std::string& name,
                                              int64_t rows, int64_t cols) {
  const GgufTensorInfo* info = file.FindTensor(name);
  if (info == nullptr) return absl::NotFoundError(absl::StrCat("tensor ", name, " not found"));
  const bool vector_ok = rows == 1 && info->dims.size() == 1 && info->dims[0] == cols;
  const bool matrix_ok = info->dims.size() == 2 && info->dims[0] == cols && info->dims[1] == rows;
  if (!vector_ok && !matrix_ok) {
    std::string dims;
    for (int64_t d : info->dims) absl::StrAppend(&dims, dims.empty() ? "" : ",", d);
    return absl::InvalidArgumentError(
        absl::StrCat("tensor ", name, " has dims [", dims, "], want [", cols, ",", rows, "]"));
  }
  return file.ReadTensorF32(name);
}

cpu::ActRounding RoundingOf(const GgufFile& file, const std::string& name) {
  const GgufTensorInfo* info = file.FindTensor(name);
  return info == nullptr ? cpu::ActRounding::kNone : cpu::ActRoundingFor(info->type);
}

// Q4_1 block minimums of the named tensors, concatenated by rows ([rows, cols / 32] each; zeros for
// tensors of another type). Empty when none of them is Q4_1.
absl::StatusOr<std::vector<float>> Q4_1Mins(const GgufFile& file,
                                            std::initializer_list<std::string> names) {
  std::vector<float> mins;
  bool any = false;
  for (const std::string& name : names) {
    const GgufTensorInfo* info = file.FindTensor(name);
    if (info == nullptr) return absl::NotFoundError("weights: missing tensor " + name);
    const int64_t n = info->NumElements();
    const size_t at = mins.size();
    mins.resize(at + n / 32, 0.f);
    if (info->type != GgmlType::kQ4_1) continue;
    any = true;
    RETURN_IF_ERROR(cpu::ExtractQ4_1Mins(file.TensorData(*info).data(), n, mins.data() + at));
  }
  if (!any) mins.clear();
  return mins;
}

// The named tensors' rows in their GGUF blocks, concatenated. Empty (not an error) when a tensor
// is of a type the exact kernels do not take or the types differ.
absl::StatusOr<cpu::ggml::QuantMatrix> QuantBlocks(const GgufFile& file,
                                                   std::initializer_list<std::string> names) {
  cpu::ggml::QuantMatrix m;
  std::optional<GgmlType> type;
  for (const std::string& name : names) {
    const GgufTensorInfo* info = file.FindTensor(name);
    if (info == nullptr) return absl::NotFoundError("weights: missing tensor " + name);
    // One legacy type (Q4_1 or Q8_0) for every part, or K-quants of any mix.
    const bool k_mix =
        type && cpu::ggml::IsExactKQuantType(*type) && cpu::ggml::IsExactKQuantType(info->type);
    if (!cpu::ggml::IsExactQuantType(info->type) || (type && *type != info->type && !k_mix) ||
        info->dims.size() != 2) {
      return cpu::ggml::QuantMatrix();
    }
    type = info->type;
    const absl::Span<const uint8_t> data = file.TensorData(*info);
    RETURN_IF_ERROR(
        m.AppendRows(info->type, data.data(), data.size(), info->dims[1], info->dims[0]));
  }
  return m;
}

void Append(std::vector<float>& dst, const std::vector<float>& src) {
  dst.insert(dst.end(), src.begin(), src.end());
}

absl::StatusOr<LlamaLayerWeights> LoadLayer(const GgufFile& file, const ModelConfig& c, int l,
                                            const LlamaWeightsOptions& o) {
  const std::string p = absl::StrCat("blk.", l, ".");
  const int64_t q_dim = int64_t{c.n_heads} * c.head_dim,
                kv_dim = int64_t{c.n_kv_heads} * c.head_dim;
  LlamaLayerWeights w;
  ASSIGN_OR_RETURN(w.attn_norm, ReadMatrix(file, p + "attn_norm.weight", 1, c.hidden));
  ASSIGN_OR_RETURN(w.ffn_norm, ReadMatrix(file, p + "ffn_norm.weight", 1, c.hidden));
  if (c.qkv_bias) {
    for (const auto& [t, n] : {std::pair<const char*, int64_t>{"attn_q.bias", q_dim},
                               {"attn_k.bias", kv_dim},
                               {"attn_v.bias", kv_dim}}) {
      ASSIGN_OR_RETURN(std::vector<float> b, ReadMatrix(file, p + t, 1, n));
      Append(w.qkv_bias, b);
    }
  }
  if (c.qk_norm) {
    ASSIGN_OR_RETURN(w.q_norm, ReadMatrix(file, p + "attn_q_norm.weight", 1, c.head_dim));
    ASSIGN_OR_RETURN(w.k_norm, ReadMatrix(file, p + "attn_k_norm.weight", 1, c.head_dim));
  }
  if (o.keep_blocks || o.blocks_only) {
    ASSIGN_OR_RETURN(w.wqkv_q, QuantBlocks(file, {p + "attn_q.weight", p + "attn_k.weight",
                                                  p + "attn_v.weight"}));
    ASSIGN_OR_RETURN(w.wo_q, QuantBlocks(file, {p + "attn_output.weight"}));
    ASSIGN_OR_RETURN(w.w_gate_up_q,
                     QuantBlocks(file, {p + "ffn_gate.weight", p + "ffn_up.weight"}));
    ASSIGN_OR_RETURN(w.w_down_q, QuantBlocks(file, {p + "ffn_down.weight"}));
  }
  if (o.blocks_only && GgmlExactShape(c) && !w.wqkv_q.empty() && !w.wo_q.empty() &&
      !w.w_gate_up_q.empty() && !w.w_down_q.empty()) {
    return w;  // the exact path reads only the blocks
  }
  ASSIGN_OR_RETURN(std::vector<float> wq, ReadMatrix(file, p + "attn_q.weight", q_dim, c.hidden));
  ASSIGN_OR_RETURN(std::vector<float> wk, ReadMatrix(file, p + "attn_k.weight", kv_dim, c.hidden));
  ASSIGN_OR_RETURN(std::vector<float> wv, ReadMatrix(file, p + "attn_v.weight", kv_dim, c.hidden));
  w.wqkv.reserve(wq.size() + wk.size() + wv.size());
  Append(w.wqkv, wq);
  Append(w.wqkv, wk);
  Append(w.wqkv, wv);
  ASSIGN_OR_RETURN(w.wo, ReadMatrix(file, p + "attn_output.weight", c.hidden, q_dim));
  ASSIGN_OR_RETURN(std::vector<float> gate,
                   ReadMatrix(file, p + "ffn_gate.weight", c.ffn, c.hidden));
  ASSIGN_OR_RETURN(std::vector<float> up, ReadMatrix(file, p + "ffn_up.weight", c.ffn, c.hidden));
  w.w_gate_up.reserve(gate.size() + up.size());
  Append(w.w_gate_up, gate);
  Append(w.w_gate_up, up);
  ASSIGN_OR_RETURN(w.w_down, ReadMatrix(file, p + "ffn_down.weight", c.hidden, c.ffn));
  w.qkv_rounding = RoundingOf(file, p + "attn_q.weight");
  w.wo_rounding = RoundingOf(file, p + "attn_output.weight");
  w.gate_up_rounding = RoundingOf(file, p + "ffn_gate.weight");
  w.down_rounding = RoundingOf(file, p + "ffn_down.weight");
  ASSIGN_OR_RETURN(w.wqkv_mins,
                   Q4_1Mins(file, {p + "attn_q.weight", p + "attn_k.weight", p + "attn_v.weight"}));
  ASSIGN_OR_RETURN(w.wo_mins, Q4_1Mins(file, {p + "attn_output.weight"}));
  ASSIGN_OR_RETURN(w.w_gate_up_mins, Q4_1Mins(file, {p + "ffn_gate.weight", p + "ffn_up.weight"}));
  ASSIGN_OR_RETURN(w.w_down_mins, Q4_1Mins(file, {p + "ffn_down.weight"}));
  return w;
}

absl::Status CheckSize(const char* what, size_t got, int64_t want) {
  if (static_cast<int64_t>(got) != want) {
    return absl::InvalidArgumentError(
        absl::StrCat("weights: ", what, " has ", got, " elements, want ", want));
  }
  return absl::OkStatus();
}

// An empty block matrix is fine (the engine then uses the fp32 one); a kept one must match.
absl::Status CheckBlocks(const char* what, const cpu::ggml::QuantMatrix& m, int64_t rows,
                         int64_t cols) {
  if (m.empty() || (m.rows() == rows && m.cols() == cols)) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("weights: ", what, " are ", m.rows(), " x ",
                                                 m.cols(), ", want ", rows, " x ", cols));
}

}  // namespace

bool GgmlExactShape(const ModelConfig& c) {
  return c.head_dim % 16 == 0 && c.rope_style == RopeStyle::kNorm && c.rope_dims == c.head_dim;
}

bool LlamaLayerWeights::BlocksOnly() const {
  return wqkv.empty() && wo.empty() && w_gate_up.empty() && w_down.empty() && !wqkv_q.empty() &&
         !wo_q.empty() && !w_gate_up_q.empty() && !w_down_q.empty();
}

int64_t LlamaLayerWeights::Bytes() const {
  return static_cast<int64_t>(sizeof(float)) *
             (attn_norm.size() + wqkv.size() + wo.size() + ffn_norm.size() + w_gate_up.size() +
              w_down.size() + qkv_bias.size() + q_norm.size() + k_norm.size()) +
         wqkv_q.Bytes() + wo_q.Bytes() + w_gate_up_q.Bytes() + w_down_q.Bytes();
}

int64_t LlamaWeights::Bytes() const {
  int64_t total = static_cast<int64_t>(sizeof(float)) * (output_norm.size() + rope_freqs.size());
  for (const LlamaLayerWeights& l : layers) total += l.Bytes();
  if (embedding) total += sizeof(float) * embedding->size();
  if (lm_head && lm_head != embedding) total += sizeof(float) * lm_head->size();
  if (lm_head_q) total += lm_head_q->Bytes();
  return total;
}

absl::StatusOr<LlamaWeights> LoadLlamaWeights(const GgufFile& file, const ModelConfig& config,
                                              const LlamaWeightsOptions& options) {
  LlamaWeights w;
  w.config = config;
  w.layer_begin = options.layer_begin;
  w.layer_end = options.layer_end < 0 ? config.n_layers : options.layer_end;
  if (w.layer_begin < 0 || w.layer_begin > w.layer_end || w.layer_end > config.n_layers) {
    return absl::InvalidArgumentError(absl::StrCat("weights: bad layer range [", w.layer_begin,
                                                   ", ", w.layer_end, ") of ", config.n_layers));
  }
  if (config.rope_freqs) {
    ASSIGN_OR_RETURN(w.rope_freqs, ReadMatrix(file, "rope_freqs.weight", 1, config.rope_dims / 2));
  }
  for (int l = w.layer_begin; l < w.layer_end; ++l) {
    ASSIGN_OR_RETURN(LlamaLayerWeights layer, LoadLayer(file, config, l, options));
    w.layers.push_back(std::move(layer));
  }
  const bool tied = file.FindTensor("output.weight") == nullptr;
  const std::string head = tied ? "token_embd.weight" : "output.weight";
  if (options.load_head && (options.keep_blocks || options.blocks_only)) {
    ASSIGN_OR_RETURN(cpu::ggml::QuantMatrix q, QuantBlocks(file, {head}));
    if (!q.empty()) w.lm_head_q = std::make_shared<const cpu::ggml::QuantMatrix>(std::move(q));
  }
  // With blocks_only, an lm_head kept in blocks needs no fp32 copy (a tied one still shares the
  // embedding's buffer when the embedding is loaded).
  const bool head_fp32 = options.load_head && !(options.blocks_only && w.lm_head_q);
  if (options.load_embedding || (head_fp32 && tied)) {
    ASSIGN_OR_RETURN(std::vector<float> e,
                     ReadMatrix(file, "token_embd.weight", config.vocab_size, config.hidden));
    auto shared = std::make_shared<const std::vector<float>>(std::move(e));
    if (options.load_embedding) w.embedding = shared;
    if (options.load_head && tied) w.lm_head = shared;
  }
  if (options.load_head) {
    w.lm_head_rounding = RoundingOf(file, head);
    ASSIGN_OR_RETURN(w.lm_head_mins, Q4_1Mins(file, {head}));
    ASSIGN_OR_RETURN(w.output_norm, ReadMatrix(file, "output_norm.weight", 1, config.hidden));
    if (!tied && head_fp32) {
      ASSIGN_OR_RETURN(std::vector<float> head,
                       ReadMatrix(file, "output.weight", config.vocab_size, config.hidden));
      w.lm_head = std::make_shared<const std::vector<float>>(std::move(head));
    }
  }
  RETURN_IF_ERROR(ValidateLlamaWeights(w));
  return w;
}

absl::Status ValidateLlamaWeights(const LlamaWeights& w) {
  const ModelConfig& c = w.config;
  if (c.hidden <= 0 || c.n_heads <= 0 || c.n_kv_heads <= 0 || c.head_dim <= 0 || c.ffn <= 0 ||
      c.vocab_size <= 0 || c.n_heads % c.n_kv_heads != 0 || c.rope_dims <= 0 ||
      c.rope_dims > c.head_dim || c.rope_dims % 2 != 0) {
    return absl::InvalidArgumentError("weights: invalid model config");
  }
  if (static_cast<int>(w.layers.size()) != w.layer_end - w.layer_begin) {
    return absl::InvalidArgumentError("weights: layer count does not match the range");
  }
  const int64_t h = c.hidden, q_dim = int64_t{c.n_heads} * c.head_dim,
                kv_dim = int64_t{c.n_kv_heads} * c.head_dim;
  for (const LlamaLayerWeights& l : w.layers) {
    RETURN_IF_ERROR(CheckSize("attn_norm", l.attn_norm.size(), h));
    RETURN_IF_ERROR(CheckSize("ffn_norm", l.ffn_norm.size(), h));
    RETURN_IF_ERROR(CheckSize("qkv_bias", l.qkv_bias.size(), c.qkv_bias ? q_dim + 2 * kv_dim : 0));
    RETURN_IF_ERROR(CheckSize("q_norm", l.q_norm.size(), c.qk_norm ? c.head_dim : 0));
    RETURN_IF_ERROR(CheckSize("k_norm", l.k_norm.size(), c.qk_norm ? c.head_dim : 0));
    if (!l.BlocksOnly()) {
      RETURN_IF_ERROR(CheckSize("wqkv", l.wqkv.size(), (q_dim + 2 * kv_dim) * h));
      RETURN_IF_ERROR(CheckSize("wo", l.wo.size(), h * q_dim));
      RETURN_IF_ERROR(CheckSize("w_gate_up", l.w_gate_up.size(), 2 * c.ffn * h));
      RETURN_IF_ERROR(CheckSize("w_down", l.w_down.size(), h * c.ffn));
    }
    RETURN_IF_ERROR(CheckBlocks("wqkv blocks", l.wqkv_q, q_dim + 2 * kv_dim, h));
    RETURN_IF_ERROR(CheckBlocks("wo blocks", l.wo_q, h, q_dim));
    RETURN_IF_ERROR(CheckBlocks("w_gate_up blocks", l.w_gate_up_q, 2 * c.ffn, h));
    RETURN_IF_ERROR(CheckBlocks("w_down blocks", l.w_down_q, h, c.ffn));
  }
  RETURN_IF_ERROR(CheckSize("rope_freqs", w.rope_freqs.size(), c.rope_freqs ? c.rope_dims / 2 : 0));
  if (w.embedding) RETURN_IF_ERROR(CheckSize("embedding", w.embedding->size(), c.vocab_size * h));
  if (w.lm_head) RETURN_IF_ERROR(CheckSize("lm_head", w.lm_head->size(), c.vocab_size * h));
  if (w.lm_head || w.lm_head_q) {
    RETURN_IF_ERROR(CheckSize("output_norm", w.output_norm.size(), h));
  }
  if (w.lm_head_q) RETURN_IF_ERROR(CheckBlocks("lm_head blocks", *w.lm_head_q, c.vocab_size, h));
  return absl::OkStatus();
}

namespace {

std::vector<float> Bf16Rounded(const std::vector<float>& x) {
  std::vector<float> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = cpu::Bf16ToF32(cpu::F32ToBf16(x[i]));
  return out;
}

}  // namespace

LlamaWeights RoundWeightsToBf16(const LlamaWeights& weights) {
  LlamaWeights out = weights;
  for (LlamaLayerWeights& l : out.layers) {
    for (std::vector<float>* m : {&l.wqkv, &l.wo, &l.w_gate_up, &l.w_down}) *m = Bf16Rounded(*m);
    // The ggml blocks serve only Numerics::kGgml.
    for (cpu::ggml::QuantMatrix* m : {&l.wqkv_q, &l.wo_q, &l.w_gate_up_q, &l.w_down_q}) {
      *m = cpu::ggml::QuantMatrix();
    }
  }
  out.lm_head_q = nullptr;
  if (weights.embedding) {
    out.embedding = std::make_shared<const std::vector<float>>(Bf16Rounded(*weights.embedding));
  }
  if (weights.lm_head) {
    out.lm_head = weights.lm_head == weights.embedding
                      ? out.embedding
                      : std::make_shared<const std::vector<float>>(Bf16Rounded(*weights.lm_head));
  }
  return out;
}

}  // namespace xkv
