// CudaLlamaModel: construction, device memory and the step's buffers, and the host-facing Embed /
// Logits. Weights are in cuda_llama_weights.cc, the KV pool (sequences, compaction) in
// cuda_llama_kv_pool.cc, the step itself in cuda_llama_step.cc.
#include "model/cuda/cuda_llama_model.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/decode_attention.cuh"
#include "kernels/cuda/embedding.cuh"
#include "kernels/cuda/gemv.cuh"
#include "kernels/cuda/sampling.cuh"

namespace xkv {

CudaLlamaModel::CudaLlamaModel(const ModelConfig& config, const CudaEngineOptions& options)
    : config_(config), options_(options) {
  layer_begin_ = options.layer_begin;
  layer_end_ = options.layer_end < 0 ? config.n_layers : options.layer_end;
  has_embedding_ = layer_begin_ == 0;
  has_head_ = layer_end_ == config.n_layers;
}

void CudaLlamaModel::SetDecodeKernels(bool small_batch_kernels, bool pdl, int64_t gemv_rows) {
  cudaSetDevice(options_.device);
  cudaStreamSynchronize(stream_);
  for (auto& [key, graph] : graphs_) cudaGraphExecDestroy(graph);
  graphs_.clear();
  options_.small_batch_kernels = small_batch_kernels;
  options_.pdl = pdl;
  gemv_rows_ = std::clamp<int64_t>(gemv_rows, 1, cuda::kGemvMaxRows);
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
                  static_cast<void*>(h_kv_lens_), h_row_params_, static_cast<void*>(h_next_)}) {
    if (p != nullptr) cudaFreeHost(p);
  }
  if (staging_ != nullptr) cudaFree(staging_);
  for (void* p : {static_cast<void*>(d_pen_rows_), static_cast<void*>(d_pen_ids_),
                  static_cast<void*>(d_pen_deltas_)}) {
    if (p != nullptr) cudaFree(p);
  }
  if (score_ws_ != nullptr) cudaFree(score_ws_);
  if (score_start_ != nullptr) cudaEventDestroy(score_start_);
  if (score_stop_ != nullptr) cudaEventDestroy(score_stop_);
  if (inputs_copied_ != nullptr) cudaEventDestroy(inputs_copied_);
  for (cudaEvent_t e : sampled_) {
    if (e != nullptr) cudaEventDestroy(e);
  }
  cudaStreamDestroy(stream_);
  cudaGetLastError();  // a failure here must not surface in the next caller's launch check
}

std::string CudaLlamaModel::device() const { return absl::StrCat("cuda:", options_.device); }

absl::Status CudaLlamaModel::AllocBytes(int64_t bytes, void** out) {
  void* p = nullptr;
  CUDA_RETURN_IF_ERROR(cudaMalloc(&p, bytes));
  allocations_.push_back(p);
  allocated_bytes_ += bytes;
  *out = p;
  return absl::OkStatus();
}

absl::Status CudaLlamaModel::InitCommon() {
  const CudaEngineOptions& o = options_;
  if (o.max_batch < 1 || o.max_step_tokens < 1 || o.max_seq_len < 1 || o.num_kv_blocks < 0 ||
      o.kv_memory_fraction <= 0 || o.kv_memory_fraction > 1 || o.device < 0 ||
      o.gpu_memory_utilization < 0 || o.gpu_memory_utilization > 1 || !(o.memory_share > 0) ||
      o.memory_share > 1) {
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
  size_t free_bytes = 0, total_bytes = 0;  // before this stage takes anything
  CUDA_RETURN_IF_ERROR(cudaMemGetInfo(&free_bytes, &total_bytes));
  budget_.device = device();
  budget_.total_bytes = static_cast<int64_t>(total_bytes);
  budget_.free_bytes = static_cast<int64_t>(free_bytes);
  budget_.utilization = o.gpu_memory_utilization;
  budget_.share = o.memory_share;
  // Device-row hand-offs (ExportResident) come from the stream-ordered pool: keep what it holds
  // instead of returning it to the driver at every synchronisation.
  cudaMemPool_t mem_pool = nullptr;
  CUDA_RETURN_IF_ERROR(cudaDeviceGetDefaultMemPool(&mem_pool, o.device));
  uint64_t keep = UINT64_MAX;
  CUDA_RETURN_IF_ERROR(cudaMemPoolSetAttribute(mem_pool, cudaMemPoolAttrReleaseThreshold, &keep));
  CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  CUDA_RETURN_IF_ERROR(cudaEventCreate(&score_start_));
  CUDA_RETURN_IF_ERROR(cudaEventCreate(&score_stop_));
  CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&inputs_copied_, cudaEventDisableTiming));
  for (cudaEvent_t& e : sampled_) {
    CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  }
  ASSIGN_OR_RETURN(cuda::CublasHandle handle, cuda::CublasHandle::Create());
  cublas_ = std::make_unique<cuda::CublasHandle>(std::move(handle));
  max_blocks_per_seq_ = CeilDiv(o.max_seq_len, kBlock);
  return AllocWeights();
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

absl::Status CudaLlamaModel::InitCache() {
  const ModelConfig& c = config_;
  const CudaEngineOptions& o = options_;
  const int64_t h = c.hidden, q_dim = int64_t{c.n_heads} * c.head_dim;
  const int64_t kv_dim = int64_t{c.n_kv_heads} * c.head_dim, f = c.ffn, vocab = c.vocab_size;
  const int64_t qkv_dim = q_dim + 2 * kv_dim, max_n = o.max_step_tokens, max_b = o.max_batch;
  const int64_t L = layer_end_ - layer_begin_;
  RETURN_IF_ERROR(CheckScratchFits());
  // Step inputs and scratch (StepScratchBytes counts the same buffers).
  RETURN_IF_ERROR(Alloc(max_n, &d_tokens_));
  RETURN_IF_ERROR(Alloc(max_n, &d_positions_));
  const int64_t kvh = c.n_kv_heads;
  RETURN_IF_ERROR(Alloc(L * max_n * kvh, &d_slots_));
  RETURN_IF_ERROR(Alloc(L * max_b * kvh * max_blocks_per_seq_, &d_tables_));
  RETURN_IF_ERROR(Alloc(L * max_b * kvh, &d_kv_lens_));
  RETURN_IF_ERROR(Alloc(max_b, &d_next_));
  slot_epoch_.assign(max_b, 0);
  CUDA_RETURN_IF_ERROR(
      cudaMallocHost(reinterpret_cast<void**>(&h_tokens_), max_n * sizeof(int32_t)));
  CUDA_RETURN_IF_ERROR(
      cudaMallocHost(reinterpret_cast<void**>(&h_positions_), max_n * sizeof(int64_t)));
  CUDA_RETURN_IF_ERROR(
      cudaMallocHost(reinterpret_cast<void**>(&h_slots_), L * max_n * kvh * sizeof(int64_t)));
  CUDA_RETURN_IF_ERROR(cudaMallocHost(reinterpret_cast<void**>(&h_tables_),
                                      L * max_b * kvh * max_blocks_per_seq_ * sizeof(int32_t)));
  CUDA_RETURN_IF_ERROR(
      cudaMallocHost(reinterpret_cast<void**>(&h_kv_lens_), L * max_b * kvh * sizeof(int32_t)));
  cuda::DeviceSamplingParams* sampling = nullptr;
  RETURN_IF_ERROR(Alloc(max_b, &sampling));
  const std::vector<cuda::DeviceSamplingParams> greedy(max_b);  // temperature 0: greedy
  CUDA_RETURN_IF_ERROR(cudaMemcpy(
      sampling, greedy.data(), max_b * sizeof(cuda::DeviceSamplingParams), cudaMemcpyHostToDevice));
  d_sampling_ = sampling;
  RETURN_IF_ERROR(Alloc(max_b, &sampling));
  d_row_params_ = sampling;
  CUDA_RETURN_IF_ERROR(
      cudaMallocHost(&h_row_params_, kSampleSlots * max_b * sizeof(cuda::DeviceSamplingParams)));
  CUDA_RETURN_IF_ERROR(
      cudaMallocHost(reinterpret_cast<void**>(&h_next_), kSampleSlots * max_b * sizeof(int32_t)));
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
  RETURN_IF_ERROR(Alloc(2 * kvh * max_blocks_per_seq_, &compact_tables_));

  return InitPool();
}

int64_t CudaLlamaModel::StepScratchBytes(int64_t max_n) const {
  const ModelConfig& c = config_;
  const int64_t h = c.hidden, q_dim = int64_t{c.n_heads} * c.head_dim;
  const int64_t kv_dim = int64_t{c.n_kv_heads} * c.head_dim, f = c.ffn;
  const int64_t max_b = options_.max_batch, L = layer_end_ - layer_begin_, kvh = c.n_kv_heads;
  const int64_t per_token = 4 + 8 + 8 * L * kvh + 4 * h + 2 * std::max({h, q_dim, f}) +
                            4 * (q_dim + 2 * kv_dim) + 4 * q_dim + 8 * f + 4 * c.rope_dims;
  const int64_t fixed =
      4 * L * max_b * kvh * max_blocks_per_seq_ + 4 * L * max_b * kvh + 4 * max_b +
      2 * static_cast<int64_t>(sizeof(cuda::DeviceSamplingParams)) * max_b +
      2 * cuda::kGemvMaxRows * f + 4 * max_b * h + (has_head_ ? 4 * max_b * c.vocab_size : 0) +
      static_cast<int64_t>(
          cuda::DecodeAttentionWorkspaceBytes(max_b, c.n_heads, c.head_dim, options_.max_seq_len)) +
      4 * int64_t{c.n_heads} * options_.max_seq_len + 4 * kvh * options_.max_seq_len +
      8 * kvh * max_blocks_per_seq_;
  return fixed + per_token * max_n;
}

absl::Status CudaLlamaModel::CheckScratchFits() {
  scratch_bytes_ = StepScratchBytes(options_.max_step_tokens);
  if (options_.gpu_memory_utilization <= 0) return absl::OkStatus();
  const int64_t L = layer_end_ - layer_begin_;
  budget_.weight_bytes = weight_bytes_;
  budget_.scratch_fixed_bytes = StepScratchBytes(0);
  budget_.scratch_per_token_bytes = StepScratchBytes(1) - budget_.scratch_fixed_bytes;
  budget_.block_bytes = 2 * int64_t{config_.n_kv_heads} * kBlock * config_.head_dim * 2;
  budget_.pool_bytes = options_.num_kv_blocks * budget_.block_bytes;
  // A pool sized from memory must hold at least one step's new slots in every layer.
  const bool sized = options_.num_kv_blocks == 0;
  budget_.min_kv_blocks = sized ? L * CeilDiv(options_.max_step_tokens, kBlock) : 0;
  return CheckMaxBatchedTokens(budget_, options_.max_step_tokens,
                               sized ? static_cast<double>(L) / kBlock : 0.0);
}

// ---- host-facing embedding and head ----------------------------------------------------------

absl::Status CudaLlamaModel::EmbedOnDevice(absl::Span<const int32_t> tokens) {
  const int64_t n = tokens.size();
  resident_rows_ = 0;
  if (!has_embedding_) return absl::FailedPreconditionError("cuda engine: no embedding here");
  if (n < 1 || n > options_.max_step_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("cuda engine: embed of ", n,
                                                   " tokens (max_batched_tokens ",
                                                   options_.max_step_tokens, ")"));
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
  RETURN_IF_ERROR(GatherLastRows(hidden.data(), rows, cudaMemcpyHostToDevice));
  return HeadLogits(rows.size());
}

absl::StatusOr<std::vector<float>> CudaLlamaModel::LogitsResident(absl::Span<const int64_t> rows) {
  RETURN_IF_ERROR(CheckLogitRows(rows, resident_rows_));
  CUDA_RETURN_IF_ERROR(cudaSetDevice(options_.device));
  RETURN_IF_ERROR(GatherLastRows(hidden_, rows, cudaMemcpyDeviceToDevice));
  return HeadLogits(rows.size());
}

absl::Status CudaLlamaModel::GatherLastRows(const float* src, absl::Span<const int64_t> rows,
                                            cudaMemcpyKind kind) {
  const int64_t h = config_.hidden;
  for (size_t i = 0; i < rows.size();) {
    size_t j = i + 1;
    while (j < rows.size() && rows[j] == rows[j - 1] + 1) ++j;
    CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(last_ + i * h, src + rows[i] * h,
                                         (j - i) * h * sizeof(float), kind, stream_));
    i = j;
  }
  return absl::OkStatus();
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
  const int64_t vocab = config_.vocab_size;
  std::vector<float> out(b * vocab);
  if (b == 0) return out;
  RETURN_IF_ERROR(HeadProject(b));
  CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(out.data(), logits_, out.size() * sizeof(float),
                                       cudaMemcpyDeviceToHost, stream_));
  CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  return out;
}

}  // namespace xkv
