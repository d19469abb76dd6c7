// CudaLlamaModel: the resident rows' ways in and out of the engine (host rows, device rows of
// another stage, fp32 or bf16) and sampling on the device (architecture.md §1): only token ids and
// the asked-for logits leave the device.
#include <cuda_runtime.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/embedding.cuh"
#include "kernels/cuda/row_convert.cuh"
#include "kernels/cuda/sampling.cuh"
#include "model/cuda/cuda_llama_model.h"

namespace xkv {
namespace {

cuda::DeviceSamplingParams ToDevice(const RowSampling& r) {
  cuda::DeviceSamplingParams p;
  if (!r.sample) return p;  // greedy; the token is not reported
  p.temperature = r.params.temperature;
  p.top_k = r.params.top_k;
  p.top_p = r.params.top_p;
  p.min_p = r.params.min_p;
  p.seed = r.params.seed;
  p.offset = r.draws;
  return p;
}

}  // namespace

absl::Status CudaLlamaModel::LoadResident(std::vector<float> rows) {
  const int64_t h = config_.hidden, n = static_cast<int64_t>(rows.size()) / h;
  resident_rows_ = 0;
  if (static_cast<int64_t>(rows.size()) != n * h || n < 1 || n > options_.max_step_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("cuda engine: ", rows.size(),
                                                   " hidden floats are not 1..",
                                                   options_.max_step_tokens, " rows of ", h));
  }
  CUDA_RETURN_IF_ERROR(cudaSetDevice(options_.device));
  // Pageable source: the call returns once the rows are staged, so `rows` may go.
  CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(hidden_, rows.data(), rows.size() * sizeof(float),
                                       cudaMemcpyHostToDevice, stream_));
  resident_rows_ = n;
  return absl::OkStatus();
}

absl::StatusOr<absl::Span<const float>> CudaLlamaModel::ResidentHost() {
  host_rows_.resize(resident_rows_ * config_.hidden);
  CUDA_RETURN_IF_ERROR(cudaSetDevice(options_.device));
  CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(host_rows_.data(), hidden_,
                                       host_rows_.size() * sizeof(float), cudaMemcpyDeviceToHost,
                                       stream_));
  CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  return absl::Span<const float>(host_rows_);
}

absl::StatusOr<DeviceRows> CudaLlamaModel::ExportResident(RowDtype dtype) {
  if (resident_rows_ < 1) {
    return absl::FailedPreconditionError("cuda engine: no resident rows to hand over");
  }
  const int64_t n = resident_rows_ * config_.hidden;
  DeviceRows out;
  out.device = options_.device;
  out.rows = resident_rows_;
  out.width = config_.hidden;
  out.dtype = dtype;
  CUDA_RETURN_IF_ERROR(cudaSetDevice(options_.device));
  void* p = nullptr;
  CUDA_RETURN_IF_ERROR(cudaMallocAsync(&p, out.bytes(), stream_));
  const int device = options_.device;
  // Freed in stream order on the releasing thread's default stream of the buffer's device; the
  // consumer has synchronised its reads before it lets the handle go.
  out.data = std::shared_ptr<void>(p, [device](void* q) {
    int current = 0;
    cudaGetDevice(&current);
    cudaSetDevice(device);
    cudaFreeAsync(q, cudaStreamPerThread);
    cudaSetDevice(current);
  });
  if (dtype == RowDtype::kF32) {
    CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(p, hidden_, out.bytes(), cudaMemcpyDeviceToDevice, stream_));
  } else {
    RETURN_IF_ERROR(cuda::LaunchF32ToBf16(hidden_, n, static_cast<__nv_bfloat16*>(p), stream_));
  }
  CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  return out;
}

absl::Status CudaLlamaModel::LoadResidentDevice(const DeviceRows& rows) {
  resident_rows_ = 0;
  if (rows.data == nullptr || rows.width != config_.hidden || rows.rows < 1 ||
      rows.rows > options_.max_step_tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("cuda engine: device rows [", rows.rows, ", ", rows.width, "], want 1..",
                     options_.max_step_tokens, " rows of ", config_.hidden));
  }
  const int64_t n = rows.rows * rows.width;
  CUDA_RETURN_IF_ERROR(cudaSetDevice(options_.device));
  if (rows.dtype == RowDtype::kF32) {  // a peer copy when the rows live on another device
    CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(hidden_, rows.data.get(), rows.bytes(), cudaMemcpyDefault, stream_));
  } else {
    const __nv_bfloat16* src = static_cast<const __nv_bfloat16*>(rows.data.get());
    if (rows.device != options_.device) {  // norm_ holds >= max_step_tokens x hidden bf16
      CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(norm_, src, rows.bytes(), cudaMemcpyDefault, stream_));
      src = norm_;
    }
    RETURN_IF_ERROR(cuda::LaunchBf16ToF32(src, n, hidden_, stream_));
  }
  // The producer may free the buffer as soon as this returns.
  CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  resident_rows_ = rows.rows;
  return absl::OkStatus();
}

absl::Status CudaLlamaModel::ReservePenalties(int64_t n) {
  if (n <= pen_capacity_) return absl::OkStatus();
  const int64_t capacity = std::max(n, 2 * pen_capacity_);
  for (void* p : {static_cast<void*>(d_pen_rows_), static_cast<void*>(d_pen_ids_),
                  static_cast<void*>(d_pen_deltas_)}) {
    if (p != nullptr) CUDA_RETURN_IF_ERROR(cudaFree(p));
  }
  d_pen_rows_ = d_pen_ids_ = nullptr;
  d_pen_deltas_ = nullptr;
  pen_capacity_ = 0;
  CUDA_RETURN_IF_ERROR(cudaMalloc(reinterpret_cast<void**>(&d_pen_rows_), capacity * 4));
  CUDA_RETURN_IF_ERROR(cudaMalloc(reinterpret_cast<void**>(&d_pen_ids_), capacity * 4));
  CUDA_RETURN_IF_ERROR(cudaMalloc(reinterpret_cast<void**>(&d_pen_deltas_), capacity * 4));
  pen_capacity_ = capacity;
  return absl::OkStatus();
}

absl::StatusOr<SampledRows> CudaLlamaModel::SampleResident(absl::Span<const RowSampling> rows) {
  if (!pending_.empty()) {
    return absl::FailedPreconditionError("cuda engine: a lookahead sample is outstanding");
  }
  RETURN_IF_ERROR(StartSampleResident(rows));
  return FinishSampleResident();
}

absl::Status CudaLlamaModel::StartSampleResident(absl::Span<const RowSampling> rows) {
  if (static_cast<int>(pending_.size()) >= kSampleSlots) {
    return absl::FailedPreconditionError(
        absl::StrCat("cuda engine: ", kSampleSlots, " samples are outstanding already"));
  }
  const int64_t vocab = config_.vocab_size;
  const int64_t b = static_cast<int64_t>(rows.size());
  std::vector<int64_t> idx;
  std::vector<int32_t> pen_rows, pen_ids;
  std::vector<float> pen_deltas;
  int64_t n_logits = 0;
  for (int64_t i = 0; i < b; ++i) {
    const RowSampling& r = rows[i];
    idx.push_back(r.row);
    n_logits += r.want_logits ? 1 : 0;
    if (!r.sample) continue;
    for (const auto& [id, delta] : r.penalties) {
      if (id < 0 || id >= vocab) {
        return absl::InvalidArgumentError(
            absl::StrCat("cuda engine: penalty on token ", id, " outside the vocabulary"));
      }
      pen_rows.push_back(static_cast<int32_t>(i));
      pen_ids.push_back(id);
      pen_deltas.push_back(delta);
    }
  }
  RETURN_IF_ERROR(CheckLogitRows(idx, resident_rows_));
  PendingSample p;  // queued once everything is (a moved vector keeps its buffer)
  p.slot = next_slot_;
  p.drawn.assign(b, false);
  for (int64_t i = 0; i < b; ++i) p.drawn[i] = rows[i].sample;
  p.out.tokens.assign(b, -1);
  CUDA_RETURN_IF_ERROR(cudaSetDevice(options_.device));
  if (b > 0) {
    RETURN_IF_ERROR(GatherLastRows(hidden_, idx, cudaMemcpyDeviceToDevice));
    RETURN_IF_ERROR(HeadProject(b));
    // The raw logits first (before the penalties change them). Pageable memory: these copies
    // wait for the head (only rows that ask for logits; the lookahead never does).
    p.out.logits.resize(n_logits * vocab);
    for (int64_t i = 0, k = 0; i < b; ++i) {
      if (!rows[i].want_logits) continue;
      CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(p.out.logits.data() + k++ * vocab, logits_ + i * vocab,
                                           vocab * sizeof(float), cudaMemcpyDeviceToHost, stream_));
    }
    const int64_t np = static_cast<int64_t>(pen_ids.size());
    if (np > 0) {
      RETURN_IF_ERROR(ReservePenalties(np));
      CUDA_RETURN_IF_ERROR(
          cudaMemcpyAsync(d_pen_rows_, pen_rows.data(), np * 4, cudaMemcpyHostToDevice, stream_));
      CUDA_RETURN_IF_ERROR(
          cudaMemcpyAsync(d_pen_ids_, pen_ids.data(), np * 4, cudaMemcpyHostToDevice, stream_));
      CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(d_pen_deltas_, pen_deltas.data(), np * 4,
                                           cudaMemcpyHostToDevice, stream_));
      RETURN_IF_ERROR(cuda::LaunchApplyPenalties(logits_, vocab, vocab, d_pen_rows_, d_pen_ids_,
                                                 d_pen_deltas_, np, stream_));
    }
    // This slot's pinned parameters: an outstanding sample's copy may not have run yet, and it
    // reads the other slot.
    auto* params =
        static_cast<cuda::DeviceSamplingParams*>(h_row_params_) + p.slot * options_.max_batch;
    for (int64_t i = 0; i < b; ++i) params[i] = ToDevice(rows[i]);
    auto* d_params = static_cast<cuda::DeviceSamplingParams*>(d_row_params_);
    CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(d_params, params, b * sizeof(*params), cudaMemcpyHostToDevice, stream_));
    RETURN_IF_ERROR(cuda::LaunchSample(logits_, vocab, b, vocab, d_params, d_next_, stream_));
    CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(h_next_ + p.slot * options_.max_batch, d_next_,
                                         b * sizeof(int32_t), cudaMemcpyDeviceToHost, stream_));
  }
  CUDA_RETURN_IF_ERROR(cudaEventRecord(sampled_[p.slot], stream_));
  next_slot_ = (next_slot_ + 1) % kSampleSlots;
  pending_.push_back(std::move(p));
  return absl::OkStatus();
}

absl::StatusOr<SampledRows> CudaLlamaModel::FinishSampleResident() {
  if (pending_.empty()) return absl::FailedPreconditionError("cuda engine: no sample outstanding");
  PendingSample p = std::move(pending_.front());
  pending_.pop_front();
  CUDA_RETURN_IF_ERROR(cudaSetDevice(options_.device));
  // Its tokens' copy, and the logits' copies queued before it (a later sample may still run).
  CUDA_RETURN_IF_ERROR(cudaEventSynchronize(sampled_[p.slot]));
  const int32_t* next = h_next_ + p.slot * options_.max_batch;
  for (size_t i = 0; i < p.out.tokens.size(); ++i) {
    if (p.drawn[i]) p.out.tokens[i] = next[i];
  }
  return std::move(p.out);
}

absl::Status CudaLlamaModel::EmbedResidentSampled() {
  resident_rows_ = 0;
  if (!has_embedding_) return absl::FailedPreconditionError("cuda engine: no embedding here");
  if (pending_.empty()) return absl::FailedPreconditionError("cuda engine: no sample outstanding");
  const PendingSample& p = pending_.back();
  const int64_t n = static_cast<int64_t>(p.drawn.size());
  if (n < 1 || std::find(p.drawn.begin(), p.drawn.end(), false) != p.drawn.end()) {
    return absl::FailedPreconditionError(
        "cuda engine: the last sample did not draw a token for every row");
  }
  CUDA_RETURN_IF_ERROR(cudaSetDevice(options_.device));
  // d_next_ holds that sample's tokens until the next sample writes it (stream order).
  CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(d_tokens_, d_next_, n * sizeof(int32_t), cudaMemcpyDeviceToDevice, stream_));
  RETURN_IF_ERROR(cuda::LaunchEmbedding(embedding_, config_.vocab_size, config_.hidden, d_tokens_,
                                        n, hidden_, stream_));
  resident_rows_ = n;
  return absl::OkStatus();
}

}  // namespace xkv
