#include "tests/gpu/cuda_llama_model.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/decode_attention.cuh"
#include "kernels/cuda/dequant.cuh"
#include "kernels/cuda/embedding.cuh"
#include "kernels/cuda/gemm.cuh"
#include "kernels/cuda/paged_kv.cuh"
#include "kernels/cuda/prefill_attention.cuh"
#include "kernels/cuda/rms_norm.cuh"
#include "kernels/cuda/rope.cuh"
#include "kernels/cuda/sampling.cuh"
#include "kernels/cuda/swiglu.cuh"
#include "kernels/status_macros.h"

namespace xkv {
namespace {

constexpr int64_t kBlock = cuda::kKvBlockTokens;

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

cuda::RopeMode ToRopeMode(RopeStyle style) {
  return style == RopeStyle::kNeox ? cuda::RopeMode::kNeox : cuda::RopeMode::kNorm;
}

// The tensor's info, checked to hold [rows, cols] (GGUF dims {cols, rows}, or {cols} for rows 1).
absl::StatusOr<const GgufTensorInfo*> FindMatrix(const GgufFile& file, const std::string& name,
                                                 int64_t rows, int64_t cols) {
  const GgufTensorInfo* info = file.FindTensor(name);
  if (info == nullptr) return absl::NotFoundError(absl::StrCat("cuda_llama: no tensor ", name));
  const bool ok =
      info->dims.size() >= 1 && info->dims[0] == cols && info->NumElements() == rows * cols;
  if (!ok) {
    return absl::InvalidArgumentError(
        absl::StrCat("cuda_llama: tensor ", name, " is not [", rows, ", ", cols, "]"));
  }
  return info;
}

}  // namespace

CudaLlamaModel::CudaLlamaModel(const ModelConfig& config, const CudaLlamaModelOptions& options)
    : config_(config), options_(options) {}

CudaLlamaModel::~CudaLlamaModel() {
  if (stream_ != nullptr) cudaStreamSynchronize(stream_);
  cublas_.reset();
  for (void* p : allocations_) cudaFree(p);
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
}

template <typename T>
absl::Status CudaLlamaModel::Alloc(int64_t n, T** out) {
  void* p = nullptr;
  CUDA_RETURN_IF_ERROR(cudaMalloc(&p, std::max<int64_t>(n, 1) * sizeof(T)));
  allocations_.push_back(p);
  *out = static_cast<T*>(p);
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<CudaLlamaModel>> CudaLlamaModel::Load(
    const GgufFile& file, const CudaLlamaModelOptions& options) {
  ASSIGN_OR_RETURN(ModelConfig config, ReadModelConfig(file));
  if (options.max_batch < 1 || options.max_step_tokens < 1 || options.max_seq_len < 1) {
    return absl::InvalidArgumentError("cuda_llama: bad options");
  }
  std::unique_ptr<CudaLlamaModel> model(new CudaLlamaModel(config, options));
  RETURN_IF_ERROR(model->Init(file));
  return model;
}

absl::Status CudaLlamaModel::UploadMatrix(const GgufFile& file, const std::string& name,
                                          int64_t rows, int64_t cols, __nv_bfloat16* dst) {
  ASSIGN_OR_RETURN(const GgufTensorInfo* info, FindMatrix(file, name, rows, cols));
  const absl::Span<const uint8_t> bytes = file.TensorData(*info);
  if (bytes.size() != info->size_bytes) {
    return absl::DataLossError(absl::StrCat("cuda_llama: tensor ", name, " outside the file"));
  }
  if (bytes.size() > staging_bytes_) {
    if (staging_ != nullptr) CUDA_RETURN_IF_ERROR(cudaFree(staging_));
    staging_ = nullptr;
    CUDA_RETURN_IF_ERROR(cudaMalloc(&staging_, bytes.size()));
    staging_bytes_ = bytes.size();
  }
  CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(staging_, bytes.data(), bytes.size(), cudaMemcpyHostToDevice, stream_));
  RETURN_IF_ERROR(cuda::DequantizeToBf16(info->type, staging_, rows * cols, dst, stream_));
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

absl::Status CudaLlamaModel::Init(const GgufFile& file) {
  const ModelConfig& c = config_;
  const int64_t h = c.hidden, hd = c.head_dim;
  const int64_t q_dim = int64_t{c.n_heads} * hd, kv_dim = int64_t{c.n_kv_heads} * hd;
  const int64_t qkv_dim = q_dim + 2 * kv_dim, f = c.ffn, vocab = c.vocab_size;
  const int64_t max_n = options_.max_step_tokens, max_b = options_.max_batch;
  max_blocks_per_seq_ = CeilDiv(options_.max_seq_len, kBlock);
  const int64_t num_blocks =
      options_.num_kv_blocks > 0 ? options_.num_kv_blocks : max_b * max_blocks_per_seq_;

  CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  ASSIGN_OR_RETURN(cuda::CublasHandle handle, cuda::CublasHandle::Create());
  cublas_ = std::make_unique<cuda::CublasHandle>(std::move(handle));

  // Weights.
  layers_.resize(c.n_layers);
  const int64_t block_elems = int64_t{c.n_kv_heads} * kBlock * hd;
  for (int l = 0; l < c.n_layers; ++l) {
    Layer& w = layers_[l];
    const std::string p = absl::StrCat("blk.", l, ".");
    RETURN_IF_ERROR(Alloc(h, &w.attn_norm));
    RETURN_IF_ERROR(Alloc(h, &w.ffn_norm));
    RETURN_IF_ERROR(Alloc(qkv_dim * h, &w.wqkv));
    RETURN_IF_ERROR(Alloc(h * q_dim, &w.wo));
    RETURN_IF_ERROR(Alloc(2 * f * h, &w.w_gate_up));
    RETURN_IF_ERROR(Alloc(h * f, &w.w_down));
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
    weight_bytes_ += 2 * (qkv_dim * h + h * q_dim + 3 * f * h) + 8 * h;
    w.cache.num_blocks = num_blocks;
    w.cache.n_kv_heads = c.n_kv_heads;
    w.cache.head_dim = c.head_dim;
    RETURN_IF_ERROR(Alloc(num_blocks * block_elems, &w.cache.k));
    RETURN_IF_ERROR(Alloc(num_blocks * block_elems, &w.cache.v));
  }
  RETURN_IF_ERROR(Alloc(vocab * h, &embedding_));
  RETURN_IF_ERROR(UploadMatrix(file, "token_embd.weight", vocab, h, embedding_));
  weight_bytes_ += 2 * vocab * h;
  if (file.FindTensor("output.weight") == nullptr) {
    lm_head_ = embedding_;  // tied
  } else {
    RETURN_IF_ERROR(Alloc(vocab * h, &lm_head_));
    RETURN_IF_ERROR(UploadMatrix(file, "output.weight", vocab, h, lm_head_));
    weight_bytes_ += 2 * vocab * h;
  }
  RETURN_IF_ERROR(Alloc(h, &output_norm_));
  RETURN_IF_ERROR(UploadVector(file, "output_norm.weight", h, output_norm_));
  CUDA_RETURN_IF_ERROR(cudaFree(staging_));
  staging_ = nullptr;
  staging_bytes_ = 0;

  // Step inputs and scratch.
  RETURN_IF_ERROR(Alloc(max_n, &d_tokens_));
  RETURN_IF_ERROR(Alloc(max_n, &d_positions_));
  RETURN_IF_ERROR(Alloc(max_n, &d_slots_));
  RETURN_IF_ERROR(Alloc(max_b * max_blocks_per_seq_, &d_tables_));
  RETURN_IF_ERROR(Alloc(max_b, &d_kv_lens_));
  RETURN_IF_ERROR(Alloc(max_b, &d_next_));
  cuda::DeviceSamplingParams* sampling = nullptr;
  RETURN_IF_ERROR(Alloc(max_b, &sampling));
  const std::vector<cuda::DeviceSamplingParams> greedy(max_b);  // temperature 0: greedy
  CUDA_RETURN_IF_ERROR(cudaMemcpy(
      sampling, greedy.data(), max_b * sizeof(cuda::DeviceSamplingParams), cudaMemcpyHostToDevice));
  d_sampling_ = sampling;
  RETURN_IF_ERROR(Alloc(max_n * h, &hidden_));
  RETURN_IF_ERROR(Alloc(max_n * std::max({h, q_dim, f}), &norm_));
  RETURN_IF_ERROR(Alloc(max_n * qkv_dim, &qkv_));
  RETURN_IF_ERROR(Alloc(max_n * q_dim, &q_));
  RETURN_IF_ERROR(Alloc(max_n * 2 * f, &ffn_));
  RETURN_IF_ERROR(Alloc(max_n * c.rope_dims, &cos_sin_));
  RETURN_IF_ERROR(Alloc(max_b * h, &last_));
  RETURN_IF_ERROR(Alloc(max_b * vocab, &logits_));
  workspace_bytes_ =
      cuda::DecodeAttentionWorkspaceBytes(max_b, c.n_heads, c.head_dim, options_.max_seq_len);
  uint8_t* ws = nullptr;
  RETURN_IF_ERROR(Alloc(static_cast<int64_t>(workspace_bytes_), &ws));
  workspace_ = ws;

  free_blocks_.resize(num_blocks);
  for (int64_t b = 0; b < num_blocks; ++b)
    free_blocks_[b] = static_cast<int32_t>(num_blocks - 1 - b);
  CUDA_RETURN_IF_ERROR(cudaDeviceSynchronize());
  return absl::OkStatus();
}

int CudaLlamaModel::AddSequence() {
  sequences_.push_back(Sequence{true, 0, {}});
  return static_cast<int>(sequences_.size()) - 1;
}

void CudaLlamaModel::ReleaseSequence(int sequence) {
  if (sequence < 0 || sequence >= static_cast<int>(sequences_.size())) return;
  Sequence& s = sequences_[sequence];
  free_blocks_.insert(free_blocks_.end(), s.blocks.begin(), s.blocks.end());
  s = Sequence{};
}

int64_t CudaLlamaModel::length(int sequence) const {
  if (sequence < 0 || sequence >= static_cast<int>(sequences_.size())) return -1;
  return sequences_[sequence].length;
}

absl::Status CudaLlamaModel::Forward(absl::Span<const CudaSequenceStep> steps,
                                     std::vector<int32_t>* next_tokens,
                                     std::vector<float>* logits) {
  const ModelConfig& c = config_;
  const int64_t b = steps.size(), h = c.hidden, vocab = c.vocab_size;
  if (b < 1 || b > options_.max_batch) {
    return absl::InvalidArgumentError(absl::StrCat("cuda_llama: batch of ", b, " sequences"));
  }
  int64_t n = 0;
  bool all_decode = true;
  for (const CudaSequenceStep& st : steps) {
    if (st.sequence < 0 || st.sequence >= static_cast<int>(sequences_.size()) ||
        !sequences_[st.sequence].live || st.tokens.empty()) {
      return absl::InvalidArgumentError("cuda_llama: bad sequence or empty step");
    }
    if (sequences_[st.sequence].length + static_cast<int64_t>(st.tokens.size()) >
        options_.max_seq_len) {
      return absl::OutOfRangeError("cuda_llama: sequence longer than max_seq_len");
    }
    n += st.tokens.size();
    all_decode = all_decode && st.tokens.size() == 1;
  }
  for (int64_t i = 0; i < b; ++i) {
    for (int64_t j = 0; j < i; ++j) {
      if (steps[i].sequence == steps[j].sequence) {
        return absl::InvalidArgumentError("cuda_llama: a sequence appears twice in one step");
      }
    }
  }
  if (n > options_.max_step_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("cuda_llama: ", n, " tokens in one step"));
  }
  // Blocks for the new slots.
  int64_t need = 0;
  for (const CudaSequenceStep& st : steps) {
    const Sequence& s = sequences_[st.sequence];
    need += CeilDiv(s.length + st.tokens.size(), kBlock) - static_cast<int64_t>(s.blocks.size());
  }
  if (need > static_cast<int64_t>(free_blocks_.size())) {
    return absl::ResourceExhaustedError("cuda_llama: KV pool exhausted");
  }
  h_tokens_.clear();
  h_positions_.clear();
  h_slots_.clear();
  h_tables_.assign(b * max_blocks_per_seq_, 0);
  h_kv_lens_.assign(b, 0);
  int64_t max_kv_len = 0;
  for (int64_t i = 0; i < b; ++i) {
    Sequence& s = sequences_[steps[i].sequence];
    const int64_t len = s.length + steps[i].tokens.size();
    while (static_cast<int64_t>(s.blocks.size()) < CeilDiv(len, kBlock)) {
      s.blocks.push_back(free_blocks_.back());
      free_blocks_.pop_back();
    }
    for (size_t t = 0; t < steps[i].tokens.size(); ++t) {
      const int64_t pos = s.length + t;
      h_tokens_.push_back(steps[i].tokens[t]);
      h_positions_.push_back(pos);
      h_slots_.push_back(int64_t{s.blocks[pos / kBlock]} * kBlock + pos % kBlock);
    }
    std::copy(s.blocks.begin(), s.blocks.end(), h_tables_.begin() + i * max_blocks_per_seq_);
    h_kv_lens_[i] = static_cast<int32_t>(len);
    max_kv_len = std::max(max_kv_len, len);
  }
  CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(d_tokens_, h_tokens_.data(), n * sizeof(int32_t),
                                       cudaMemcpyHostToDevice, stream_));
  CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(d_positions_, h_positions_.data(), n * sizeof(int64_t),
                                       cudaMemcpyHostToDevice, stream_));
  CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(d_slots_, h_slots_.data(), n * sizeof(int64_t),
                                       cudaMemcpyHostToDevice, stream_));
  CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(d_tables_, h_tables_.data(),
                                       h_tables_.size() * sizeof(int32_t), cudaMemcpyHostToDevice,
                                       stream_));
  CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(d_kv_lens_, h_kv_lens_.data(), b * sizeof(int32_t),
                                       cudaMemcpyHostToDevice, stream_));
  RETURN_IF_ERROR(
      cuda::LaunchRopeCache(d_positions_, n, c.rope_dims, c.rope_base, cos_sin_, stream_));
  RETURN_IF_ERROR(cuda::LaunchEmbedding(embedding_, vocab, h, d_tokens_, n, hidden_, stream_));
  max_kv_len_ = max_kv_len;
  for (const Layer& w : layers_) RETURN_IF_ERROR(RunLayer(w, n, steps, all_decode));

  // Head on each step's last row.
  int64_t row = 0;
  for (int64_t i = 0; i < b; ++i) {
    row += steps[i].tokens.size();
    CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(last_ + i * h, hidden_ + (row - 1) * h, h * sizeof(float),
                                         cudaMemcpyDeviceToDevice, stream_));
  }
  RETURN_IF_ERROR(cuda::LaunchRmsNorm(last_, output_norm_, b, h, c.norm_eps, norm_, stream_));
  RETURN_IF_ERROR(cuda::LaunchGemm(*cublas_, norm_, h, lm_head_, h, logits_, vocab, b, vocab, h,
                                   false, stream_));
  RETURN_IF_ERROR(cuda::LaunchSample(logits_, vocab, b, vocab,
                                     static_cast<const cuda::DeviceSamplingParams*>(d_sampling_),
                                     d_next_, stream_));
  next_tokens->resize(b);
  CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(next_tokens->data(), d_next_, b * sizeof(int32_t),
                                       cudaMemcpyDeviceToHost, stream_));
  if (logits != nullptr) {
    logits->resize(b * vocab);
    CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(logits->data(), logits_, b * vocab * sizeof(float),
                                         cudaMemcpyDeviceToHost, stream_));
  }
  CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  for (int64_t i = 0; i < b; ++i) sequences_[steps[i].sequence].length = h_kv_lens_[i];
  return absl::OkStatus();
}

absl::Status CudaLlamaModel::RunLayer(const Layer& w, int64_t n,
                                      absl::Span<const CudaSequenceStep> steps, bool all_decode) {
  const ModelConfig& c = config_;
  const int64_t h = c.hidden, hd = c.head_dim, f = c.ffn;
  const int64_t q_dim = int64_t{c.n_heads} * hd, kv_dim = int64_t{c.n_kv_heads} * hd;
  const int64_t qkv_dim = q_dim + 2 * kv_dim;
  const cuda::RopeMode mode = ToRopeMode(c.rope_style);
  const cuda::AttentionShape shape{c.n_heads, c.n_kv_heads, c.head_dim,
                                   1.0f / std::sqrt(static_cast<float>(c.head_dim)), false};
  // norm_ (bf16) carries each GEMM's input in turn: normed hidden, attention output, SwiGLU.
  RETURN_IF_ERROR(cuda::LaunchRmsNorm(hidden_, w.attn_norm, n, h, c.norm_eps, norm_, stream_));
  RETURN_IF_ERROR(cuda::LaunchGemm(*cublas_, norm_, h, w.wqkv, h, qkv_, qkv_dim, n, qkv_dim, h,
                                   false, stream_));
  RETURN_IF_ERROR(cuda::LaunchRope(qkv_, qkv_dim, n, c.n_heads, c.head_dim, c.rope_dims, mode,
                                   cos_sin_, q_, q_dim, stream_));
  float* k_new = qkv_ + q_dim;  // roped in place, rows qkv_dim apart
  RETURN_IF_ERROR(cuda::LaunchRope(k_new, qkv_dim, n, c.n_kv_heads, c.head_dim, c.rope_dims, mode,
                                   cos_sin_, k_new, qkv_dim, stream_));
  RETURN_IF_ERROR(cuda::LaunchKvCacheWrite(k_new, qkv_dim, k_new + kv_dim, qkv_dim, n, d_slots_,
                                           w.cache, stream_));
  if (all_decode) {
    RETURN_IF_ERROR(cuda::LaunchDecodeAttention(
        shape, q_, static_cast<int64_t>(steps.size()), w.cache, d_tables_, max_blocks_per_seq_,
        d_kv_lens_, max_kv_len_, norm_, q_dim, workspace_, workspace_bytes_, stream_));
  } else {
    int64_t row0 = 0;
    for (size_t i = 0; i < steps.size(); ++i) {
      const int64_t n_new = steps[i].tokens.size();
      const int64_t kv_len = h_kv_lens_[i];
      const int32_t* table = d_tables_ + i * max_blocks_per_seq_;
      if (n_new == 1) {
        RETURN_IF_ERROR(cuda::LaunchDecodeAttention(
            shape, q_ + row0 * q_dim, 1, w.cache, table, max_blocks_per_seq_, d_kv_lens_ + i,
            kv_len, norm_ + row0 * q_dim, q_dim, workspace_, workspace_bytes_, stream_));
      } else {
        RETURN_IF_ERROR(cuda::LaunchPrefillAttention(shape, q_ + row0 * q_dim, n_new, w.cache,
                                                     table, kv_len, norm_ + row0 * q_dim, q_dim,
                                                     stream_));
      }
      row0 += n_new;
    }
  }
  // hidden += attn · Woᵀ
  RETURN_IF_ERROR(cuda::LaunchGemm(*cublas_, norm_, q_dim, w.wo, q_dim, hidden_, h, n, h, q_dim,
                                   true, stream_));
  RETURN_IF_ERROR(cuda::LaunchRmsNorm(hidden_, w.ffn_norm, n, h, c.norm_eps, norm_, stream_));
  RETURN_IF_ERROR(cuda::LaunchGemm(*cublas_, norm_, h, w.w_gate_up, h, ffn_, 2 * f, n, 2 * f, h,
                                   false, stream_));
  RETURN_IF_ERROR(cuda::LaunchSwiGlu(ffn_, 2 * f, ffn_ + f, 2 * f, n, f, norm_, f, stream_));
  // hidden += silu(gate)·up · W_downᵀ
  return cuda::LaunchGemm(*cublas_, norm_, f, w.w_down, f, hidden_, h, n, h, f, true, stream_);
}

}  // namespace xkv
