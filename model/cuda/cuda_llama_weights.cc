// CudaLlamaModel's weights: device buffers per layer, uploaded from a GGUF (dequantized to bf16 on
// the device) or filled from a seed (random-weight models of real shapes).
#include <cmath>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "kernels/cpu/dequant.h"
#include "kernels/cpu/kquants.h"
#include "kernels/cpu/random_fill.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/dequant.cuh"
#include "kernels/cuda/random_fill.cuh"
#include "model/cuda/cuda_llama_model.h"

namespace xkv {
namespace {

// The tensor's info, checked to hold [rows, cols] (GGUF dims {cols, rows}, or {cols} for rows 1).
absl::StatusOr<const GgufTensorInfo*> FindMatrix(const GgufFile& file, const std::string& name,
                                                 int64_t rows, int64_t cols) {
  const GgufTensorInfo* info = file.FindTensor(name);
  if (info == nullptr) return absl::NotFoundError(absl::StrCat("cuda engine: no tensor ", name));
  const bool ok =
      info->dims.size() >= 1 && info->dims[0] == cols && info->NumElements() == rows * cols;
  if (!ok) {
    return absl::InvalidArgumentError(
        absl::StrCat("cuda engine: tensor ", name, " is not [", rows, ", ", cols, "]"));
  }
  return info;
}

}  // namespace

absl::Status CudaLlamaModel::AllocWeights() {
  const ModelConfig& c = config_;
  const int64_t h = c.hidden, q_dim = int64_t{c.n_heads} * c.head_dim;
  const int64_t kv_dim = int64_t{c.n_kv_heads} * c.head_dim, f = c.ffn, vocab = c.vocab_size;
  const int64_t qkv_dim = q_dim + 2 * kv_dim;
  layers_.resize(layer_end_ - layer_begin_);
  for (Layer& w : layers_) {
    RETURN_IF_ERROR(Alloc(h, &w.attn_norm));
    RETURN_IF_ERROR(Alloc(h, &w.ffn_norm));
    RETURN_IF_ERROR(Alloc(qkv_dim * h, &w.wqkv));
    RETURN_IF_ERROR(Alloc(h * q_dim, &w.wo));
    RETURN_IF_ERROR(Alloc(2 * f * h, &w.w_gate_up));
    RETURN_IF_ERROR(Alloc(h * f, &w.w_down));
    weight_bytes_ += 2 * (qkv_dim * h + h * q_dim + 3 * f * h) + 8 * h;
    if (c.qkv_bias) {
      RETURN_IF_ERROR(Alloc(qkv_dim, &w.qkv_bias));
      weight_bytes_ += 4 * qkv_dim;
    }
    if (c.qk_norm) {
      RETURN_IF_ERROR(Alloc(c.head_dim, &w.q_norm));
      RETURN_IF_ERROR(Alloc(c.head_dim, &w.k_norm));
      weight_bytes_ += 8 * c.head_dim;
    }
  }
  if (c.rope_freqs) {
    RETURN_IF_ERROR(Alloc(c.rope_dims / 2, &rope_freqs_));
    weight_bytes_ += 2 * c.rope_dims;
  }
  if (has_embedding_) {
    RETURN_IF_ERROR(Alloc(vocab * h, &embedding_));
    weight_bytes_ += 2 * vocab * h;
  }
  if (has_head_) {
    RETURN_IF_ERROR(Alloc(h, &output_norm_));
    weight_bytes_ += 4 * h;
    if (c.tied_embeddings && embedding_ != nullptr) {
      lm_head_ = embedding_;
    } else {
      RETURN_IF_ERROR(Alloc(vocab * h, &lm_head_));
      weight_bytes_ += 2 * vocab * h;
    }
  }
  return absl::OkStatus();
}

absl::Status CudaLlamaModel::UploadMatrix(const GgufFile& file, const std::string& name,
                                          int64_t rows, int64_t cols, __nv_bfloat16* dst) {
  ASSIGN_OR_RETURN(const GgufTensorInfo* info, FindMatrix(file, name, rows, cols));
  absl::Span<const uint8_t> bytes = file.TensorData(*info);
  if (bytes.size() != info->size_bytes) {
    return absl::DataLossError(absl::StrCat("cuda engine: tensor ", name, " outside the file"));
  }
  // K-quants are dequantized to fp32 on the host (ggml's dequantizers, kernels/cpu/kquants.h) and
  // then rounded to bf16 on the device as F32 weights are; other types go up as raw blocks.
  GgmlType type = info->type;
  std::vector<float> host;
  if (cpu::IsKQuant(type)) {
    host.resize(static_cast<size_t>(rows * cols));
    RETURN_IF_ERROR(cpu::DequantizeToF32(type, bytes.data(), rows * cols, host.data()));
    bytes = absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(host.data()),
                                host.size() * sizeof(float));
    type = GgmlType::kF32;
  }
  if (bytes.size() > staging_bytes_) {
    if (staging_ != nullptr) CUDA_RETURN_IF_ERROR(cudaFree(staging_));
    staging_ = nullptr;
    CUDA_RETURN_IF_ERROR(cudaMalloc(&staging_, bytes.size()));
    staging_bytes_ = bytes.size();
  }
  CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(staging_, bytes.data(), bytes.size(), cudaMemcpyHostToDevice, stream_));
  RETURN_IF_ERROR(cuda::DequantizeToBf16(type, staging_, rows * cols, dst, stream_));
  // The staging buffer is reused by the next tensor.
  CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  return absl::OkStatus();
}

absl::Status CudaLlamaModel::UploadVector(const GgufFile& file, const std::string& name, int64_t n,
                                          float* dst) {
  RETURN_IF_ERROR(FindMatrix(file, name, 1, n).status());
  ASSIGN_OR_RETURN(std::vector<float> host, file.ReadTensorF32(name));
  CUDA_RETURN_IF_ERROR(
      cudaMemcpy(dst, host.data(), host.size() * sizeof(float), cudaMemcpyHostToDevice));
  return absl::OkStatus();
}

absl::Status CudaLlamaModel::LoadWeights(const GgufFile& file) {
  const ModelConfig& c = config_;
  const int64_t h = c.hidden, q_dim = int64_t{c.n_heads} * c.head_dim;
  const int64_t kv_dim = int64_t{c.n_kv_heads} * c.head_dim, f = c.ffn, vocab = c.vocab_size;
  for (int l = layer_begin_; l < layer_end_; ++l) {
    Layer& w = layers_[li(l)];
    const std::string p = absl::StrCat("blk.", l, ".");
    RETURN_IF_ERROR(UploadVector(file, p + "attn_norm.weight", h, w.attn_norm));
    RETURN_IF_ERROR(UploadVector(file, p + "ffn_norm.weight", h, w.ffn_norm));
    RETURN_IF_ERROR(UploadMatrix(file, p + "attn_q.weight", q_dim, h, w.wqkv));
    RETURN_IF_ERROR(UploadMatrix(file, p + "attn_k.weight", kv_dim, h, w.wqkv + q_dim * h));
    RETURN_IF_ERROR(
        UploadMatrix(file, p + "attn_v.weight", kv_dim, h, w.wqkv + (q_dim + kv_dim) * h));
    RETURN_IF_ERROR(UploadMatrix(file, p + "attn_output.weight", h, q_dim, w.wo));
    RETURN_IF_ERROR(UploadMatrix(file, p + "ffn_gate.weight", f, h, w.w_gate_up));
    RETURN_IF_ERROR(UploadMatrix(file, p + "ffn_up.weight", f, h, w.w_gate_up + f * h));
    RETURN_IF_ERROR(UploadMatrix(file, p + "ffn_down.weight", h, f, w.w_down));
    if (c.qkv_bias) {
      RETURN_IF_ERROR(UploadVector(file, p + "attn_q.bias", q_dim, w.qkv_bias));
      RETURN_IF_ERROR(UploadVector(file, p + "attn_k.bias", kv_dim, w.qkv_bias + q_dim));
      RETURN_IF_ERROR(UploadVector(file, p + "attn_v.bias", kv_dim, w.qkv_bias + q_dim + kv_dim));
    }
    if (c.qk_norm) {
      RETURN_IF_ERROR(UploadVector(file, p + "attn_q_norm.weight", c.head_dim, w.q_norm));
      RETURN_IF_ERROR(UploadVector(file, p + "attn_k_norm.weight", c.head_dim, w.k_norm));
    }
  }
  if (c.rope_freqs) {
    RETURN_IF_ERROR(UploadVector(file, "rope_freqs.weight", c.rope_dims / 2, rope_freqs_));
  }
  if (has_embedding_) {
    RETURN_IF_ERROR(UploadMatrix(file, "token_embd.weight", vocab, h, embedding_));
  }
  if (has_head_) {
    RETURN_IF_ERROR(UploadVector(file, "output_norm.weight", h, output_norm_));
    const bool tied = file.FindTensor("output.weight") == nullptr;
    if (tied && lm_head_ != embedding_) {
      RETURN_IF_ERROR(UploadMatrix(file, "token_embd.weight", vocab, h, lm_head_));
    } else if (!tied) {
      if (lm_head_ == embedding_) {  // config said tied, the file has a head: give it its own
        RETURN_IF_ERROR(Alloc(vocab * h, &lm_head_));
        weight_bytes_ += 2 * vocab * h;
      }
      RETURN_IF_ERROR(UploadMatrix(file, "output.weight", vocab, h, lm_head_));
    }
  }
  if (staging_ != nullptr) CUDA_RETURN_IF_ERROR(cudaFree(staging_));
  staging_ = nullptr;
  staging_bytes_ = 0;
  return absl::OkStatus();
}

absl::Status CudaLlamaModel::RandomWeights(uint64_t seed) {
  const ModelConfig& c = config_;
  const int64_t h = c.hidden, q_dim = int64_t{c.n_heads} * c.head_dim;
  const int64_t kv_dim = int64_t{c.n_kv_heads} * c.head_dim, f = c.ffn, vocab = c.vocab_size;
  uint64_t tensor = 0;
  auto fill = [&](__nv_bfloat16* p, int64_t n, int64_t fan_in) {
    const float scale = 1.0f / std::sqrt(static_cast<float>(fan_in));
    return cuda::LaunchRandomFill(seed * 1000003u + tensor++, n, RandomFillStep(scale), p, stream_);
  };
  for (int l = layer_begin_; l < layer_end_; ++l) {
    Layer& w = layers_[li(l)];
    tensor =
        16 * static_cast<uint64_t>(l) + 16;  // the same layer gets the same weights in any stage
    RETURN_IF_ERROR(cuda::LaunchFillConstant(1.0f, h, w.attn_norm, stream_));
    RETURN_IF_ERROR(cuda::LaunchFillConstant(1.0f, h, w.ffn_norm, stream_));
    RETURN_IF_ERROR(fill(w.wqkv, (q_dim + 2 * kv_dim) * h, h));
    RETURN_IF_ERROR(fill(w.wo, h * q_dim, q_dim));
    RETURN_IF_ERROR(fill(w.w_gate_up, 2 * f * h, h));
    RETURN_IF_ERROR(fill(w.w_down, h * f, f));
    // Hooks of a random model: no bias, unit QK-norm gains.
    if (w.qkv_bias) {
      RETURN_IF_ERROR(cuda::LaunchFillConstant(0.0f, q_dim + 2 * kv_dim, w.qkv_bias, stream_));
    }
    if (w.q_norm) RETURN_IF_ERROR(cuda::LaunchFillConstant(1.0f, c.head_dim, w.q_norm, stream_));
    if (w.k_norm) RETURN_IF_ERROR(cuda::LaunchFillConstant(1.0f, c.head_dim, w.k_norm, stream_));
  }
  if (rope_freqs_ != nullptr) {
    RETURN_IF_ERROR(cuda::LaunchFillConstant(1.0f, c.rope_dims / 2, rope_freqs_, stream_));
  }
  tensor = 1;
  if (has_embedding_) RETURN_IF_ERROR(fill(embedding_, vocab * h, 1));
  tensor = 2;
  if (has_head_) {
    RETURN_IF_ERROR(cuda::LaunchFillConstant(1.0f, h, output_norm_, stream_));
    if (lm_head_ != embedding_) RETURN_IF_ERROR(fill(lm_head_, vocab * h, h));
  }
  CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  return absl::OkStatus();
}

}  // namespace xkv
