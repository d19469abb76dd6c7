// CudaLlamaModel: construction (GGUF or random weights), device memory, sequences, compaction and
// the host-facing Embed / Logits / CacheCopy. The step itself is in cuda_llama_step.cc.
#include "model/cuda/cuda_llama_model.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "kernels/cpu/dequant.h"
#include "kernels/cpu/half.h"
#include "kernels/cpu/kquants.h"
#include "kernels/cpu/random_fill.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/decode_attention.cuh"
#include "kernels/cuda/dequant.cuh"
#include "kernels/cuda/embedding.cuh"
#include "kernels/cuda/gemm.cuh"
#include "kernels/cuda/gemv.cuh"
#include "kernels/cuda/importance.cuh"
#include "kernels/cuda/kv_compact.cuh"
#include "kernels/cuda/random_fill.cuh"
#include "kernels/cuda/rms_norm.cuh"
#include "kernels/cuda/sampling.cuh"

namespace xkv {
namespace {

constexpr int64_t kBlock = cuda::kKvBlockTokens;

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

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

CudaLlamaModel::CudaLlamaModel(const ModelConfig& config, const CudaEngineOptions& options)
    : config_(config), options_(options) {
  layer_begin_ = options.layer_begin;
  layer_end_ = options.layer_end < 0 ? config.n_layers : options.layer_end;
  has_embedding_ = layer_begin_ == 0;
  has_head_ = layer_end_ == config.n_layers;
}

void CudaLlamaModel::SetDecodeKernels(bool small_batch_kernels, bool pdl) {
  cudaSetDevice(options_.device);
  cudaStreamSynchronize(stream_);
  for (auto& [key, graph] : graphs_) cudaGraphExecDestroy(graph);
  graphs_.clear();
  options_.small_batch_kernels = small_batch_kernels;
  options_.pdl = pdl;
}

CudaLlamaModel::~CudaLlamaModel() {
  if (stream_ == nullptr) {  // never reached the device (bad options or no such device)
    cudaGetLastError();
    return;
  }
  cudaSetDevice(options_.device);
  cudaStreamSynchronize(stream_);
  for (auto& [key, graph] : graphs_) cudaGraphExecDestroy(graph);
  cublas_.reset();
  for (void* p : allocations_) cudaFree(p);
  for (void* p : {static_cast<void*>(h_tokens_), static_cast<void*>(h_positions_),
                  static_cast<void*>(h_slots_), static_cast<void*>(h_tables_),
                  static_cast<void*>(h_kv_lens_)}) {
    if (p != nullptr) cudaFreeHost(p);
  }
  if (staging_ != nullptr) cudaFree(staging_);
  if (score_ws_ != nullptr) cudaFree(score_ws_);
  if (score_start_ != nullptr) cudaEventDestroy(score_start_);
  if (score_stop_ != nullptr) cudaEventDestroy(score_stop_);
  cudaStreamDestroy(stream_);
  cudaGetLastError();  // a failure here must not surface in the next caller's launch check
}

std::string CudaLlamaModel::device() const { return absl::StrCat("cuda:", options_.device); }

template <typename T>
absl::Status CudaLlamaModel::Alloc(int64_t n, T** out) {
  void* p = nullptr;
  CUDA_RETURN_IF_ERROR(cudaMalloc(&p, std::max<int64_t>(n, 1) * sizeof(T)));
  allocations_.push_back(p);
  *out = static_cast<T*>(p);
  return absl::OkStatus();
}

absl::Status CudaLlamaModel::InitCommon() {
  const CudaEngineOptions& o = options_;
  if (o.max_batch < 1 || o.max_step_tokens < 1 || o.max_seq_len < 1 || o.num_kv_blocks < 0 ||
      o.kv_memory_fraction <= 0 || o.kv_memory_fraction > 1 || o.device < 0) {
    return absl::InvalidArgumentError("cuda engine: bad options");
  }
  if (layer_begin_ < 0 || layer_end_ > config_.n_layers || layer_begin_ >= layer_end_) {
    return absl::InvalidArgumentError(
        absl::StrCat("cuda engine: bad layer range [", layer_begin_, ", ", layer_end_, ")"));
  }
  int count = 0;
  if (const cudaError_t err = cudaGetDeviceCount(&count); err != cudaSuccess || count == 0) {
    cudaGetLastError();
    return absl::FailedPreconditionError(
        absl::StrCat("cuda engine: no usable CUDA device for cuda:", o.device, " (",
                     err == cudaSuccess ? "none found" : cudaGetErrorString(err), ")"));
  }
  if (o.device >= count) {
    return absl::InvalidArgumentError(
        absl::StrCat("cuda engine: device cuda:", o.device, " but ", count, " device(s) found"));
  }
  CUDA_RETURN_IF_ERROR(cudaSetDevice(o.device));
  CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  CUDA_RETURN_IF_ERROR(cudaEventCreate(&score_start_));
  CUDA_RETURN_IF_ERROR(cudaEventCreate(&score_stop_));
  ASSIGN_OR_RETURN(cuda::CublasHandle handle, cuda::CublasHandle::Create());
  cublas_ = std::make_unique<cuda::CublasHandle>(std::move(handle));
  max_blocks_per_seq_ = CeilDiv(o.max_seq_len, kBlock);
  return AllocWeights();
}

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

absl::StatusOr<std::unique_ptr<CudaLlamaModel>> CudaLlamaModel::Load(
    const GgufFile& file, const CudaEngineOptions& options) {
  ASSIGN_OR_RETURN(ModelConfig config, ReadModelConfig(file));
  std::unique_ptr<CudaLlamaModel> model(new CudaLlamaModel(config, options));
  RETURN_IF_ERROR(model->InitCommon());
  RETURN_IF_ERROR(model->LoadWeights(file));
  RETURN_IF_ERROR(model->InitCache());
  return model;
}

absl::StatusOr<std::unique_ptr<CudaLlamaModel>> CudaLlamaModel::CreateRandom(
    const ModelConfig& config, uint64_t seed, const CudaEngineOptions& options) {
  if (config.n_layers < 1 || config.hidden < 1 || config.n_heads < 1 || config.n_kv_heads < 1 ||
      config.n_heads % config.n_kv_heads != 0 || config.head_dim < 1 || config.ffn < 1 ||
      config.vocab_size < 1 || config.rope_dims < 2 || config.rope_dims > config.head_dim) {
    return absl::InvalidArgumentError("cuda engine: bad random-model config");
  }
  std::unique_ptr<CudaLlamaModel> model(new CudaLlamaModel(config, options));
  RETURN_IF_ERROR(model->InitCommon());
  RETURN_IF_ERROR(model->RandomWeights(seed));
  RETURN_IF_ERROR(model->InitCache());
  return model;
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

absl::Status CudaLlamaModel::InitCache() {
  const ModelConfig& c = config_;
  const CudaEngineOptions& o = options_;
  const int64_t h = c.hidden, q_dim = int64_t{c.n_heads} * c.head_dim;
  const int64_t kv_dim = int64_t{c.n_kv_heads} * c.head_dim, f = c.ffn, vocab = c.vocab_size;
  const int64_t qkv_dim = q_dim + 2 * kv_dim, max_n = o.max_step_tokens, max_b = o.max_batch;
  const int64_t L = layer_end_ - layer_begin_;
  // Step inputs and scratch.
  RETURN_IF_ERROR(Alloc(max_n, &d_tokens_));
  RETURN_IF_ERROR(Alloc(max_n, &d_positions_));
  RETURN_IF_ERROR(Alloc(L * max_n, &d_slots_));
  RETURN_IF_ERROR(Alloc(L * max_b * max_blocks_per_seq_, &d_tables_));
  RETURN_IF_ERROR(Alloc(L * max_b, &d_kv_lens_));
  RETURN_IF_ERROR(Alloc(max_b, &d_next_));
  CUDA_RETURN_IF_ERROR(
      cudaMallocHost(reinterpret_cast<void**>(&h_tokens_), max_n * sizeof(int32_t)));
  CUDA_RETURN_IF_ERROR(
      cudaMallocHost(reinterpret_cast<void**>(&h_positions_), max_n * sizeof(int64_t)));
  CUDA_RETURN_IF_ERROR(
      cudaMallocHost(reinterpret_cast<void**>(&h_slots_), L * max_n * sizeof(int64_t)));
  CUDA_RETURN_IF_ERROR(cudaMallocHost(reinterpret_cast<void**>(&h_tables_),
                                      L * max_b * max_blocks_per_seq_ * sizeof(int32_t)));
  CUDA_RETURN_IF_ERROR(
      cudaMallocHost(reinterpret_cast<void**>(&h_kv_lens_), L * max_b * sizeof(int32_t)));
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
  RETURN_IF_ERROR(Alloc(cuda::kGemvMaxRows * f, &glu_));
  RETURN_IF_ERROR(Alloc(max_n * c.rope_dims, &cos_sin_));
  RETURN_IF_ERROR(Alloc(max_b * h, &last_));
  if (has_head_) RETURN_IF_ERROR(Alloc(max_b * vocab, &logits_));
  workspace_bytes_ =
      cuda::DecodeAttentionWorkspaceBytes(max_b, c.n_heads, c.head_dim, o.max_seq_len);
  uint8_t* ws = nullptr;
  RETURN_IF_ERROR(Alloc(static_cast<int64_t>(workspace_bytes_), &ws));
  workspace_ = ws;
  RETURN_IF_ERROR(Alloc(int64_t{c.n_heads} * o.max_seq_len, &scores_));
  RETURN_IF_ERROR(Alloc(int64_t{c.n_kv_heads} * o.max_seq_len, &kept_));
  RETURN_IF_ERROR(Alloc(2 * max_blocks_per_seq_, &compact_tables_));

  return InitPool();
}

absl::Status CudaLlamaModel::InitPool() {
  const ModelConfig& c = config_;
  const CudaEngineOptions& o = options_;
  const int64_t block_bytes = 2 * int64_t{c.n_kv_heads} * kBlock * c.head_dim * 2;  // K + V bf16
  num_blocks_ = o.num_kv_blocks;
  if (num_blocks_ == 0) {
    size_t free_bytes = 0, total = 0;
    CUDA_RETURN_IF_ERROR(cudaMemGetInfo(&free_bytes, &total));
    num_blocks_ =
        static_cast<int64_t>(static_cast<double>(free_bytes) * o.kv_memory_fraction) / block_bytes;
  }
  if (num_blocks_ < 1 || num_blocks_ > INT32_MAX / kBlock) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cuda engine: KV pool of ", num_blocks_, " blocks is not possible"));
  }
  const int64_t block_elems = int64_t{c.n_kv_heads} * kBlock * c.head_dim;
  cache_.num_blocks = num_blocks_;
  cache_.n_kv_heads = c.n_kv_heads;
  cache_.head_dim = c.head_dim;
  absl::Status st = Alloc(num_blocks_ * block_elems, &cache_.k);
  if (st.ok()) st = Alloc(num_blocks_ * block_elems, &cache_.v);
  if (!st.ok()) {
    return absl::ResourceExhaustedError(absl::StrCat("cuda engine: no device memory for ",
                                                     num_blocks_, " KV blocks: ", st.message()));
  }
  free_blocks_.resize(num_blocks_);
  for (int64_t b = 0; b < num_blocks_; ++b) {
    free_blocks_[b] = static_cast<int32_t>(num_blocks_ - 1 - b);
  }
  CUDA_RETURN_IF_ERROR(cudaDeviceSynchronize());
  return absl::OkStatus();
}

// ---- sequences -------------------------------------------------------------------------------

int64_t CudaLlamaModel::CacheLength(uint64_t id, int layer) const {
  auto it = sequences_.find(id);
  if (it == sequences_.end() || layer < layer_begin_ || layer >= layer_end_) return -1;
  return it->second.lengths[li(layer)];
}

int64_t CudaLlamaModel::logical_position(uint64_t id) const {
  auto it = sequences_.find(id);
  return it == sequences_.end() ? -1 : it->second.position;
}

void CudaLlamaModel::FreeBlocks(const std::vector<int32_t>& blocks) {
  free_blocks_.insert(free_blocks_.end(), blocks.begin(), blocks.end());
}

void CudaLlamaModel::ReleaseSequence(uint64_t id) {
  auto it = sequences_.find(id);
  if (it == sequences_.end()) return;
  for (const std::vector<int32_t>& blocks : it->second.blocks) FreeBlocks(blocks);
  sequences_.erase(it);
}

// ---- host-facing embedding and head ----------------------------------------------------------

absl::Status CudaLlamaModel::EmbedOnDevice(absl::Span<const int32_t> tokens) {
  const int64_t n = tokens.size();
  resident_rows_ = 0;
  if (!has_embedding_) return absl::FailedPreconditionError("cuda engine: no embedding here");
  if (n < 1 || n > options_.max_step_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("cuda engine: embed of ", n, " tokens"));
  }
  for (int32_t t : tokens) {
    if (t < 0 || t >= config_.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("cuda engine: token ", t, " outside vocab"));
    }
  }
  CUDA_RETURN_IF_ERROR(cudaSetDevice(options_.device));
  CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(d_tokens_, tokens.data(), n * sizeof(int32_t),
                                       cudaMemcpyHostToDevice, stream_));
  return cuda::LaunchEmbedding(embedding_, config_.vocab_size, config_.hidden, d_tokens_, n,
                               hidden_, stream_);
}

absl::StatusOr<std::vector<float>> CudaLlamaModel::Embed(absl::Span<const int32_t> tokens) {
  RETURN_IF_ERROR(EmbedOnDevice(tokens));
  std::vector<float> out(tokens.size() * config_.hidden);
  CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(out.data(), hidden_, out.size() * sizeof(float),
                                       cudaMemcpyDeviceToHost, stream_));
  CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  return out;
}

// No sync: the layers that follow on the same stream wait for the embedding, and
// RunLayersResident's sync reports any fault (the token copy is staged before the call returns).
absl::Status CudaLlamaModel::EmbedResident(absl::Span<const int32_t> tokens) {
  RETURN_IF_ERROR(EmbedOnDevice(tokens));
  resident_rows_ = static_cast<int64_t>(tokens.size());
  return absl::OkStatus();
}

absl::StatusOr<std::vector<float>> CudaLlamaModel::Logits(absl::Span<const float> hidden,
                                                          absl::Span<const int64_t> rows) {
  const int64_t h = config_.hidden;
  if (hidden.size() % h != 0) return absl::InvalidArgumentError("cuda engine: bad logits request");
  RETURN_IF_ERROR(CheckLogitRows(rows, static_cast<int64_t>(hidden.size()) / h));
  CUDA_RETURN_IF_ERROR(cudaSetDevice(options_.device));
  for (size_t i = 0; i < rows.size(); ++i) {
    CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(last_ + i * h, hidden.data() + rows[i] * h,
                                         h * sizeof(float), cudaMemcpyHostToDevice, stream_));
  }
  return HeadLogits(rows.size());
}

absl::StatusOr<std::vector<float>> CudaLlamaModel::LogitsResident(absl::Span<const int64_t> rows) {
  const int64_t h = config_.hidden;
  RETURN_IF_ERROR(CheckLogitRows(rows, resident_rows_));
  CUDA_RETURN_IF_ERROR(cudaSetDevice(options_.device));
  for (size_t i = 0; i < rows.size(); ++i) {
    CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(last_ + i * h, hidden_ + rows[i] * h, h * sizeof(float),
                                         cudaMemcpyDeviceToDevice, stream_));
  }
  return HeadLogits(rows.size());
}

absl::Status CudaLlamaModel::CheckLogitRows(absl::Span<const int64_t> rows, int64_t n) const {
  if (!has_head_) return absl::FailedPreconditionError("cuda engine: no lm_head here");
  if (static_cast<int64_t>(rows.size()) > options_.max_batch) {
    return absl::InvalidArgumentError(absl::StrCat("cuda engine: logits of ", rows.size(),
                                                   " rows (max ", options_.max_batch, ")"));
  }
  for (int64_t r : rows) {
    if (r < 0 || r >= n) {
      return absl::InvalidArgumentError(
          absl::StrCat("cuda engine: logits row ", r, " outside the ", n, " hidden rows"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<float>> CudaLlamaModel::HeadLogits(int64_t b) {
  const int64_t h = config_.hidden, vocab = config_.vocab_size;
  std::vector<float> out(b * vocab);
  if (b == 0) return out;
  RETURN_IF_ERROR(cuda::LaunchRmsNorm(last_, output_norm_, b, h, config_.norm_eps, norm_, stream_));
  RETURN_IF_ERROR(Project(norm_, h, lm_head_, vocab, h, logits_, vocab, b, false, SmallStep(b)));
  CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(out.data(), logits_, out.size() * sizeof(float),
                                       cudaMemcpyDeviceToHost, stream_));
  CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  return out;
}

// ---- compaction ------------------------------------------------------------------------------

absl::Status CudaLlamaModel::CompactLayer(uint64_t id, int layer, int64_t prompt_len,
                                          absl::Span<const std::vector<int32_t>> kept) {
  auto it = sequences_.find(id);
  if (it == sequences_.end()) {
    return absl::NotFoundError(absl::StrCat("cuda engine: sequence ", id, " is unknown"));
  }
  if (layer < layer_begin_ || layer >= layer_end_) {
    return absl::InvalidArgumentError(absl::StrCat("cuda engine: layer ", layer, " not here"));
  }
  Sequence& s = it->second;
  const int64_t len = s.lengths[li(layer)];
  if (len != prompt_len) {
    return absl::FailedPreconditionError(absl::StrCat("cuda engine: layer ", layer, " holds ", len,
                                                      " tokens, not the prompt's ", prompt_len));
  }
  const int kvh = config_.n_kv_heads;
  if (static_cast<int>(kept.size()) != kvh) {
    return absl::InvalidArgumentError("cuda engine: one kept list per KV head");
  }
  const int64_t n_keep = kept[0].size();
  std::vector<int32_t> flat;
  flat.reserve(kvh * n_keep);
  for (const std::vector<int32_t>& k : kept) {
    if (static_cast<int64_t>(k.size()) != n_keep) {
      return absl::InvalidArgumentError("cuda engine: KV heads keep different counts");
    }
    for (size_t j = 0; j < k.size(); ++j) {
      if (k[j] < 0 || k[j] >= len || (j > 0 && k[j] <= k[j - 1])) {
        return absl::InvalidArgumentError("cuda engine: kept slots not increasing in range");
      }
    }
    flat.insert(flat.end(), k.begin(), k.end());
  }
  const int64_t need = CeilDiv(n_keep, kBlock);
  if (need > static_cast<int64_t>(free_blocks_.size())) {
    return absl::ResourceExhaustedError("cuda engine: no free blocks to compact into");
  }
  std::vector<int32_t> dst(free_blocks_.end() - need, free_blocks_.end());
  CUDA_RETURN_IF_ERROR(cudaSetDevice(options_.device));
  const std::vector<int32_t>& src = s.blocks[li(layer)];
  if (n_keep > 0) {
    CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(kept_, flat.data(), flat.size() * sizeof(int32_t),
                                         cudaMemcpyHostToDevice, stream_));
    CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(compact_tables_, src.data(), src.size() * sizeof(int32_t),
                                         cudaMemcpyHostToDevice, stream_));
    CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(compact_tables_ + max_blocks_per_seq_, dst.data(),
                                         dst.size() * sizeof(int32_t), cudaMemcpyHostToDevice,
                                         stream_));
    RETURN_IF_ERROR(cuda::LaunchCompactKv(cache_, compact_tables_, kept_, n_keep,
                                          compact_tables_ + max_blocks_per_seq_, stream_));
    CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  }
  free_blocks_.resize(free_blocks_.size() - need);
  FreeBlocks(src);
  s.blocks[li(layer)] = std::move(dst);
  s.lengths[li(layer)] = n_keep;
  return absl::OkStatus();
}

std::unique_ptr<KvCache> CudaLlamaModel::CacheCopy(uint64_t id) const {
  auto it = sequences_.find(id);
  if (it == sequences_.end()) return nullptr;
  const int kvh = config_.n_kv_heads, hd = config_.head_dim;
  const int64_t block_elems = int64_t{kvh} * kBlock * hd;
  auto copy = std::make_unique<KvCache>(layer_begin_, layer_end_, kvh, hd);
  cudaSetDevice(options_.device);
  for (int l = layer_begin_; l < layer_end_; ++l) {
    const int64_t len = it->second.lengths[li(l)];
    const std::vector<int32_t>& blocks = it->second.blocks[li(l)];
    std::vector<uint16_t> kb(blocks.size() * block_elems), vb(kb.size());
    for (size_t j = 0; j < blocks.size(); ++j) {
      const int64_t off = int64_t{blocks[j]} * block_elems;
      if (cudaMemcpy(kb.data() + j * block_elems, cache_.k + off, block_elems * 2,
                     cudaMemcpyDeviceToHost) != cudaSuccess ||
          cudaMemcpy(vb.data() + j * block_elems, cache_.v + off, block_elems * 2,
                     cudaMemcpyDeviceToHost) != cudaSuccess) {
        return nullptr;
      }
    }
    // bf16 [block][head][16][hd] → fp32 [slot][head][hd]
    std::vector<float> k(len * kvh * hd), v(k.size());
    for (int64_t s = 0; s < len; ++s) {
      for (int g = 0; g < kvh; ++g) {
        const int64_t src = (s / kBlock) * block_elems + (int64_t{g} * kBlock + s % kBlock) * hd;
        for (int d = 0; d < hd; ++d) {
          k[(s * kvh + g) * hd + d] = cpu::Bf16ToF32(kb[src + d]);
          v[(s * kvh + g) * hd + d] = cpu::Bf16ToF32(vb[src + d]);
        }
      }
    }
    if (!copy->Append(l, k.data(), v.data(), len, int64_t{kvh} * hd).ok()) return nullptr;
  }
  return copy;
}

}  // namespace xkv
