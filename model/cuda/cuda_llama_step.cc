// CudaLlamaModel: one step — plan (blocks, slots, tables), the layers (decode steps from CUDA
// graphs), importance scoring of observed sequences, and the greedy head of Forward.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/decode_attention.cuh"
#include "kernels/cuda/embedding.cuh"
#include "kernels/cuda/gemm.cuh"
#include "kernels/cuda/gemv.cuh"
#include "kernels/cuda/importance.cuh"
#include "kernels/cuda/paged_kv.cuh"
#include "kernels/cuda/prefill_attention.cuh"
#include "kernels/cuda/qkv_hooks.cuh"
#include "kernels/cuda/qkv_rope_write.cuh"
#include "kernels/cuda/reconstruct_importance.cuh"
#include "kernels/cuda/rms_norm.cuh"
#include "kernels/cuda/rope.cuh"
#include "kernels/cuda/sampling.cuh"
#include "kernels/cuda/swiglu.cuh"
#include "model/cuda/cuda_llama_model.h"

namespace xkv {
namespace {

constexpr int64_t kMinGraphBucket = 256;
// Models up to this hidden width are launch-latency bound at decode (SmolLM2-135M, 576 wide:
// 7 MB of bf16 weights a layer, ~2 µs at HBM speed, against ~9 launches): their small-batch path
// fuses each RMSNorm into the GEMV after it (every block forms the step's bf16 input rows in
// shared memory from the fp32 ones, for a launch saved). Every model takes the GEMV path up to
// gemv_max_rows() token rows (CudaLlamaModel::kDefaultGemvRows = cuda::kGemvMaxRows = 8): from 5
// rows on the kernels multiply on tensor cores, and on one H100 that decodes SmolLM2 at B = 5..8
// 14-17% faster than cuBLAS (Llama-3-8B's shape at B = 8: 3%); the CUDA-core 8-row GEMV it
// replaced was 21% slower than cuBLAS (`xkv bench gpu --batched-decode`'s same-GPU A/B,
// docs/benchmarks-decode.md). Wider models keep the separate norm kernel (the GEMV at m = 4 is
// within ~5% of cuBLAS on the Llama-3-8B projections, docs/benchmarks.md).
constexpr int64_t kNarrowHidden = 1024;

cuda::RopeMode ToRopeMode(RopeStyle style) {
  return style == RopeStyle::kNeox ? cuda::RopeMode::kNeox : cuda::RopeMode::kNorm;
}

}  // namespace

const int32_t* CudaLlamaModel::TableRow(int layer, int64_t i) const {
  return d_tables_ +
         (li(layer) * options_.max_batch + i) * config_.n_kv_heads * max_blocks_per_seq_;
}

const int32_t* CudaLlamaModel::KvLens(int layer, int64_t i) const {
  return d_kv_lens_ + (li(layer) * options_.max_batch + i) * config_.n_kv_heads;
}

int64_t CudaLlamaModel::GraphBucket(int64_t max_kv_len) const {
  int64_t bucket = kMinGraphBucket;
  while (bucket < max_kv_len) bucket *= 2;
  return std::min(bucket, max_blocks_per_seq_ * kBlock);
}

absl::Status CudaLlamaModel::Prepare(const std::vector<std::pair<uint64_t, int64_t>>& seqs,
                                     const std::vector<bool>& observe, bool scores_only,
                                     absl::Span<const int32_t> tokens, StepPlan* plan) {
  const int64_t b = seqs.size(), L = layer_end_ - layer_begin_;
  if (b < 1 || b > options_.max_batch) {
    return absl::InvalidArgumentError(
        absl::StrCat("cuda engine: a step of ", b, " sequences (max ", options_.max_batch, ")"));
  }
  absl::flat_hash_set<uint64_t> ids;
  int64_t n = 0;
  for (const auto& [id, n_new] : seqs) {
    if (!ids.insert(id).second || n_new < 1) {
      return absl::InvalidArgumentError("cuda engine: repeated sequence or empty chunk");
    }
    n += n_new;
  }
  if (n > options_.max_step_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("cuda engine: ", n, " tokens in one step (max ",
                                                   options_.max_step_tokens, ")"));
  }
  const int kvh = config_.n_kv_heads;
  const int64_t max_n = options_.max_step_tokens, max_b = options_.max_batch;
  int64_t need = 0;  // head-blocks: every (layer, KV head) grows by n_new slots
  for (const auto& [id, n_new] : seqs) {
    auto it = sequences_.find(id);
    const HeadTables* kv = it == sequences_.end() ? nullptr : &it->second.kv;
    const int64_t held = kv == nullptr || kv->lengths.empty()
                             ? 0
                             : *std::max_element(kv->lengths.begin(), kv->lengths.end());
    if (held + n_new > options_.max_seq_len) {
      return absl::OutOfRangeError(absl::StrCat("cuda engine: sequence ", id, " would hold ",
                                                held + n_new, " slots (max ", options_.max_seq_len,
                                                ")"));
    }
    need += pool_.GrowthNeed(kv != nullptr && !kv->blocks.empty() ? kv : nullptr, n_new);
  }
  if (need > pool_.free_blocks()) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "cuda engine: the step needs ", need, " KV head-blocks, ", pool_.free_blocks(), " free"));
  }
  // The last step's input copies may not have read the mirrors yet.
  CUDA_RETURN_IF_ERROR(cudaEventSynchronize(inputs_copied_));
  // Nothing can fail below this line except device copies.
  *plan = StepPlan{};
  plan->n = n;
  plan->b = b;
  plan->scores_only = scores_only;
  plan->reread.assign(b, std::nullopt);
  plan->kv_len.assign(L * b * kvh, 0);
  plan->kv_max.assign(L * b, 0);
  int64_t row = 0;
  std::vector<int64_t> widths(b, 0);  // block ids per table row to copy (0: current already)
  for (int64_t i = 0; i < b; ++i) {
    const auto [id, n_new] = seqs[i];
    Sequence& s = sequences_[id];
    if (s.kv.blocks.empty()) s.kv = pool_.NewTables();
    if (pool_.Grow(s.kv, n_new) > 0 || s.epoch == 0) s.epoch = ++next_epoch_;
    // Decode steps mostly keep their tables: only a new head-block (every 16 tokens per head), a
    // compaction or another sequence in the slot makes them travel again.
    const bool fill = slot_epoch_[i] != s.epoch;
    plan->seqs.push_back(&s);
    plan->n_new.push_back(n_new);
    plan->row0.push_back(row);
    plan->observe.push_back(observe[i]);
    plan->all_decode = plan->all_decode && n_new == 1;
    for (int64_t t = 0; t < n_new; ++t) h_positions_[row + t] = s.position + t;
    for (int64_t l = 0; l < L; ++l) {
      for (int g = 0; g < kvh; ++g) {  // each KV head grows after its own slots
        const int64_t j = pool_.Index(l, g), len = s.kv.lengths[j] + n_new;
        const std::vector<int32_t>& blocks = s.kv.blocks[j];
        for (int64_t t = 0; t < n_new; ++t) {
          h_slots_[(l * max_n + row + t) * kvh + g] =
              HeadBlockPool::HeadSlot(s.kv, j, s.kv.lengths[j] + t);
        }
        if (fill) {
          std::copy(blocks.begin(), blocks.end(),
                    h_tables_ + ((l * max_b + i) * kvh + g) * max_blocks_per_seq_);
          widths[i] = std::max<int64_t>(widths[i], blocks.size());
        }
        h_kv_lens_[(l * max_b + i) * kvh + g] = static_cast<int32_t>(len);
        plan->kv_len[(l * b + i) * kvh + g] = len;
        plan->kv_max[l * b + i] = std::max(plan->kv_max[l * b + i], len);
      }
      plan->max_kv_len = std::max(plan->max_kv_len, plan->kv_max[l * b + i]);
    }
    row += n_new;
  }
  if (absl::Status st = UploadStep(n, b, widths, tokens); !st.ok()) {
    std::fill(slot_epoch_.begin(), slot_epoch_.end(), 0);  // what reached the device is unknown
    return st;
  }
  for (int64_t i = 0; i < b; ++i) slot_epoch_[i] = plan->seqs[i]->epoch;
  return absl::OkStatus();
}

// One (strided) copy per step input, from the pinned host mirrors Prepare filled.
absl::Status CudaLlamaModel::UploadStep(int64_t n, int64_t b, absl::Span<const int64_t> widths,
                                        absl::Span<const int32_t> tokens) {
  const int64_t L = layer_end_ - layer_begin_, kvh = config_.n_kv_heads;
  if (!tokens.empty()) {
    std::copy(tokens.begin(), tokens.end(), h_tokens_);
    CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(d_tokens_, h_tokens_, n * sizeof(int32_t),
                                         cudaMemcpyHostToDevice, stream_));
  }
  CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(d_positions_, h_positions_, n * sizeof(int64_t),
                                       cudaMemcpyHostToDevice, stream_));
  const size_t slot_pitch = options_.max_step_tokens * kvh * sizeof(int64_t);
  CUDA_RETURN_IF_ERROR(cudaMemcpy2DAsync(d_slots_, slot_pitch, h_slots_, slot_pitch,
                                         n * kvh * sizeof(int64_t), L, cudaMemcpyHostToDevice,
                                         stream_));
  // The tables of each run of consecutive slots whose tables changed, up to the run's longest
  // table (kernels read a row no further than its head's length, so the rest of
  // max_blocks_per_seq never needs to travel): one 3D copy per run, [layer][slot, KV head][block
  // id], rows max_blocks_per_seq apart, max_batch * n_kv_heads rows a layer.
  const size_t row_bytes = max_blocks_per_seq_ * sizeof(int32_t);
  const size_t rows = options_.max_batch * kvh;
  for (int64_t i0 = 0; i0 < b;) {
    if (widths[i0] == 0) {
      ++i0;
      continue;
    }
    int64_t i1 = i0, width = 0;
    for (; i1 < b && widths[i1] > 0; ++i1) width = std::max(width, widths[i1]);
    const int64_t offset = i0 * kvh * max_blocks_per_seq_;
    cudaMemcpy3DParms tables = {};
    tables.srcPtr = make_cudaPitchedPtr(h_tables_ + offset, row_bytes, row_bytes, rows);
    tables.dstPtr = make_cudaPitchedPtr(d_tables_ + offset, row_bytes, row_bytes, rows);
    tables.extent = make_cudaExtent(width * sizeof(int32_t), (i1 - i0) * kvh, L);
    tables.kind = cudaMemcpyHostToDevice;
    CUDA_RETURN_IF_ERROR(cudaMemcpy3DAsync(&tables, stream_));
    i0 = i1;
  }
  const size_t len_pitch = options_.max_batch * kvh * sizeof(int32_t);
  CUDA_RETURN_IF_ERROR(cudaMemcpy2DAsync(d_kv_lens_, len_pitch, h_kv_lens_, len_pitch,
                                         b * kvh * sizeof(int32_t), L, cudaMemcpyHostToDevice,
                                         stream_));
  CUDA_RETURN_IF_ERROR(cudaEventRecord(inputs_copied_, stream_));
  return absl::OkStatus();
}

void CudaLlamaModel::Rollback(const StepPlan& plan) {
  for (Sequence* s : plan.seqs) {
    pool_.Trim(s->kv);
    s->epoch = ++next_epoch_;  // what the tables lost may go to another sequence
  }
}

absl::Status CudaLlamaModel::Commit(const StepPlan& plan) {
  if (plan.scores_only) {  // the mini-prefill keeps nothing
    Rollback(plan);
    return absl::OkStatus();
  }
  const int64_t L = layer_end_ - layer_begin_, kvh = config_.n_kv_heads;
  for (int64_t i = 0; i < plan.b; ++i) {
    for (int64_t l = 0; l < L; ++l) {
      for (int g = 0; g < kvh; ++g) {
        plan.seqs[i]->kv.lengths[pool_.Index(l, g)] = plan.kv_len[(l * plan.b + i) * kvh + g];
      }
    }
    plan.seqs[i]->position += plan.n_new[i];
  }
  return absl::OkStatus();
}

bool CudaLlamaModel::SmallStep(int64_t rows) const {
  return options_.small_batch_kernels && rows <= gemv_max_rows();
}

bool CudaLlamaModel::FusedNormStep(int64_t rows) const {
  return SmallStep(rows) && config_.hidden <= kNarrowHidden;
}

absl::Status CudaLlamaModel::HeadProject(int64_t b) {
  const int64_t h = config_.hidden, vocab = config_.vocab_size;
  if (FusedNormStep(b)) {
    return cuda::LaunchRmsNormGemv(last_, h, output_norm_, config_.norm_eps, lm_head_, h, logits_,
                                   vocab, b, vocab, h, options_.pdl, stream_);
  }
  RETURN_IF_ERROR(cuda::LaunchRmsNorm(last_, output_norm_, b, h, config_.norm_eps, norm_, stream_));
  return Project(norm_, h, lm_head_, vocab, h, logits_, vocab, b, false, SmallStep(b));
}

absl::Status CudaLlamaModel::Project(const __nv_bfloat16* x, int64_t ldx, const __nv_bfloat16* w,
                                     int64_t n_out, int64_t k, float* y, int64_t ldy, int64_t rows,
                                     bool accumulate, bool small) {
  if (small) {
    return cuda::LaunchGemv(x, ldx, w, k, y, ldy, rows, n_out, k, accumulate, options_.pdl,
                            stream_);
  }
  return cuda::LaunchGemm(*cublas_, x, ldx, w, k, y, ldy, rows, n_out, k, accumulate, stream_);
}

absl::Status CudaLlamaModel::RunLayer(int layer, const StepPlan& plan) {
  const ModelConfig& c = config_;
  const Layer& w = layers_[li(layer)];
  const int64_t n = plan.n, h = c.hidden, f = c.ffn;
  const int64_t q_dim = int64_t{c.n_heads} * c.head_dim,
                kv_dim = int64_t{c.n_kv_heads} * c.head_dim;
  const int64_t qkv_dim = q_dim + 2 * kv_dim;
  const cuda::AttentionShape shape{c.n_heads, c.n_kv_heads, c.head_dim,
                                   1.0f / std::sqrt(static_cast<float>(c.head_dim)), false};
  // Decode at small batch: GEMV kernels, every launch PDL (no cuBLAS kernel in between).
  const bool small = SmallStep(n), pdl = small && options_.pdl;
  const bool fuse_norm = FusedNormStep(n);
  // norm_ (bf16) carries each GEMM's input in turn: normed hidden, attention output, SwiGLU.
  // A narrow model's small step fuses each RMSNorm into the GEMV after it (one launch, no norm_).
  if (fuse_norm) {
    RETURN_IF_ERROR(cuda::LaunchRmsNormGemv(hidden_, h, w.attn_norm, c.norm_eps, w.wqkv, h, qkv_,
                                            qkv_dim, n, qkv_dim, h, options_.pdl, stream_));
  } else {
    RETURN_IF_ERROR(
        cuda::LaunchRmsNorm(hidden_, w.attn_norm, n, h, c.norm_eps, norm_, stream_, pdl));
    RETURN_IF_ERROR(Project(norm_, h, w.wqkv, qkv_dim, h, qkv_, qkv_dim, n, false, small));
  }
  // The architecture's bias add and QK-norm (model/arch/arch.h); a no-op for plain llama.
  RETURN_IF_ERROR(cuda::LaunchQkvHooks({c.n_heads, c.n_kv_heads, c.head_dim, c.norm_eps}, qkv_,
                                       qkv_dim, n, w.qkv_bias, w.q_norm, w.k_norm, stream_));
  RETURN_IF_ERROR(cuda::LaunchQkvRopeWrite(
      qkv_, qkv_dim, n, c.n_heads, c.rope_dims, ToRopeMode(c.rope_style), cos_sin_, q_, q_dim,
      d_slots_ + li(layer) * options_.max_step_tokens * c.n_kv_heads, cache_, pdl, stream_));
  // Decode: each (sequence, KV head) is a sequence of the one-head view with its own table and
  // length (decode_attention.cuh): the same CTAs, loads and math as one table for every head.
  const int group = c.n_heads / c.n_kv_heads;
  const cuda::AttentionShape one_head{group, 1, c.head_dim, shape.scale, false};
  const cuda::PagedKvLayer one_view = cuda::OneHeadView(cache_);
  const int64_t one_stride = int64_t{group} * c.head_dim;
  if (plan.all_decode) {
    const int64_t max_len = graph_bucket_ > 0 ? graph_bucket_ : plan.max_kv_len;
    RETURN_IF_ERROR(cuda::LaunchDecodeAttention(
        one_head, q_, plan.b * c.n_kv_heads, one_view, TableRow(layer, 0), max_blocks_per_seq_,
        KvLens(layer, 0), max_len, norm_, one_stride, workspace_, workspace_bytes_, stream_, pdl));
  } else {
    for (int64_t i = 0; i < plan.b; ++i) {
      const int64_t n_new = plan.n_new[i], row0 = plan.row0[i];
      const int64_t kv_len = plan.kv_max[li(layer) * plan.b + i];
      if (n_new == 1) {
        RETURN_IF_ERROR(cuda::LaunchDecodeAttention(
            one_head, q_ + row0 * q_dim, c.n_kv_heads, one_view, TableRow(layer, i),
            max_blocks_per_seq_, KvLens(layer, i), kv_len, norm_ + row0 * q_dim, one_stride,
            workspace_, workspace_bytes_, stream_, pdl));
      } else {
        RETURN_IF_ERROR(cuda::LaunchPrefillAttention(
            shape, q_ + row0 * q_dim, n_new, cache_, TableRow(layer, i), kv_len,
            norm_ + row0 * q_dim, q_dim, stream_, KvLens(layer, i)));
      }
    }
  }
  if (!plan.all_decode || plan.scores_only) RETURN_IF_ERROR(ScoreLayer(layer, plan));
  // hidden += attn · Woᵀ
  RETURN_IF_ERROR(Project(norm_, q_dim, w.wo, h, q_dim, hidden_, h, n, true, small));
  const __nv_bfloat16* act = glu_;  // silu(gate) * up, bf16 [n, f]
  if (fuse_norm) {
    RETURN_IF_ERROR(cuda::LaunchRmsNormGemvSwiGlu(hidden_, h, w.ffn_norm, c.norm_eps, w.w_gate_up,
                                                  h, glu_, f, n, f, h, options_.pdl, stream_));
  } else {
    RETURN_IF_ERROR(
        cuda::LaunchRmsNorm(hidden_, w.ffn_norm, n, h, c.norm_eps, norm_, stream_, pdl));
    if (small) {
      RETURN_IF_ERROR(cuda::LaunchGemvSwiGlu(norm_, h, w.w_gate_up, h, glu_, f, n, f, h,
                                             options_.pdl, stream_));
    } else {
      RETURN_IF_ERROR(cuda::LaunchGemm(*cublas_, norm_, h, w.w_gate_up, h, ffn_, 2 * f, n, 2 * f, h,
                                       false, stream_));
      RETURN_IF_ERROR(cuda::LaunchSwiGlu(ffn_, 2 * f, ffn_ + f, 2 * f, n, f, norm_, f, stream_));
      act = norm_;
    }
  }
  // hidden += silu(gate)·up · W_downᵀ
  return Project(act, f, w.w_down, h, f, hidden_, h, n, true, small);
}

absl::Status CudaLlamaModel::ScoreLayer(int layer, const StepPlan& plan) {
  if (observations_ == nullptr) return absl::OkStatus();
  const ModelConfig& c = config_;
  const int64_t q_dim = int64_t{c.n_heads} * c.head_dim;
  for (int64_t i = 0; i < plan.b; ++i) {
    if (plan.reread[i].has_value()) RETURN_IF_ERROR(ScoreReread(layer, plan, i));
    if (!plan.observe[i]) continue;
    const ImportanceOptions& scoring = scorings_[i];
    const int w = scoring.window;
    const int64_t T = plan.seqs[i]->position + plan.n_new[i];
    if (T <= w) continue;  // nothing to score
    // Every KV head holds the whole prompt (scores are taken before any compaction).
    const int64_t* heads = &plan.kv_len[(li(layer) * plan.b + i) * c.n_kv_heads];
    const int64_t kv_len = *std::min_element(heads, heads + c.n_kv_heads);
    if (plan.n_new[i] < w || kv_len != T || plan.kv_max[li(layer) * plan.b + i] != T) {
      return absl::FailedPreconditionError(absl::StrCat(
          "cuda engine: observed chunk of ", plan.n_new[i], " tokens over a ", kv_len,
          "-slot cache: it must end the ", T, "-token prompt and hold >= ", w, " tokens"));
    }
    const ImportanceShape shape{c.n_heads, c.n_kv_heads, c.head_dim, T};
    const size_t ws = cuda::ImportanceWorkspaceBytes(shape, scoring);
    if (ws > score_ws_bytes_) {
      CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
      if (score_ws_ != nullptr) CUDA_RETURN_IF_ERROR(cudaFree(score_ws_));
      score_ws_ = nullptr;
      score_ws_bytes_ = 0;
      CUDA_RETURN_IF_ERROR(cudaMalloc(&score_ws_, ws));
      score_ws_bytes_ = ws;
    }
    const float* q_win = q_ + (plan.row0[i] + plan.n_new[i] - w) * q_dim;
    CUDA_RETURN_IF_ERROR(cudaEventRecord(score_start_, stream_));
    RETURN_IF_ERROR(cuda::LaunchImportancePaged(q_win, cache_, TableRow(layer, i), shape, scoring,
                                                scores_, score_ws_, score_ws_bytes_, stream_));
    CUDA_RETURN_IF_ERROR(cudaEventRecord(score_stop_, stream_));
    EngineObservation& obs = (*observations_)[i];
    std::vector<float>& out = obs.scores->layers[li(layer)];
    out.resize(static_cast<size_t>(ImportanceHeads(shape, scoring.granularity)) * (T - w));
    CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(out.data(), scores_, out.size() * sizeof(float),
                                         cudaMemcpyDeviceToHost, stream_));
    CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
    float ms = 0.f;
    CUDA_RETURN_IF_ERROR(cudaEventElapsedTime(&ms, score_start_, score_stop_));
    obs.ms += ms;
  }
  return absl::OkStatus();
}

absl::Status CudaLlamaModel::ScoreReread(int layer, const StepPlan& plan, int64_t i) {
  const ModelConfig& c = config_;
  const RereadSpan& span = *plan.reread[i];
  const int64_t* heads = &plan.kv_len[(li(layer) * plan.b + i) * c.n_kv_heads];
  const int64_t n_new = plan.n_new[i], past = plan.kv_max[li(layer) * plan.b + i] - n_new;
  if (past != plan.seqs[i]->position ||
      *std::min_element(heads, heads + c.n_kv_heads) != past + n_new) {
    return absl::FailedPreconditionError(
        absl::StrCat("cuda engine: re-reading over a ", past, "-slot cache at position ",
                     plan.seqs[i]->position, ": the cache must hold exactly the prompt"));
  }
  const ReconstructShape shape{c.n_heads, c.n_kv_heads,     c.head_dim,     n_new,
                               past,      span.chunk_begin, span.chunk_end, span.sinks};
  const int64_t count = int64_t{c.n_kv_heads} * (span.chunk_end - span.chunk_begin);
  const int64_t q_dim = int64_t{c.n_heads} * c.head_dim;
  CUDA_RETURN_IF_ERROR(cudaMemsetAsync(scores_, 0, count * sizeof(float), stream_));
  CUDA_RETURN_IF_ERROR(cudaEventRecord(score_start_, stream_));
  RETURN_IF_ERROR(cuda::LaunchReconstructScoresPaged(q_ + plan.row0[i] * q_dim, cache_,
                                                     TableRow(layer, i), shape, scores_, stream_));
  CUDA_RETURN_IF_ERROR(cudaEventRecord(score_stop_, stream_));
  EngineObservation& obs = (*observations_)[i];
  std::vector<float>& out = obs.reread[li(layer)];
  out.resize(count);
  CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(out.data(), scores_, count * sizeof(float), cudaMemcpyDeviceToHost, stream_));
  CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  float ms = 0.f;
  CUDA_RETURN_IF_ERROR(cudaEventElapsedTime(&ms, score_start_, score_stop_));
  obs.ms += ms;
  return absl::OkStatus();
}

absl::Status CudaLlamaModel::RunAllLayers(const StepPlan& plan) {
  const ModelConfig& c = config_;
  const bool graph = options_.cuda_graphs && plan.all_decode && !plan.scores_only;
  if (!graph) {
    graph_bucket_ = 0;
    RETURN_IF_ERROR(cuda::LaunchRopeCache(d_positions_, plan.n, c.rope_dims, c.rope_base, cos_sin_,
                                          stream_, {c.rope_freq_scale, rope_freqs_}));
    for (int l = layer_begin_; l < layer_end_; ++l) RETURN_IF_ERROR(RunLayer(l, plan));
    return absl::OkStatus();
  }
  graph_bucket_ = GraphBucket(plan.max_kv_len);
  const std::pair<int64_t, int64_t> key{plan.b, graph_bucket_};
  auto it = graphs_.find(key);
  if (it == graphs_.end()) {
    CUDA_RETURN_IF_ERROR(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeRelaxed));
    absl::Status st = cuda::LaunchRopeCache(d_positions_, plan.n, c.rope_dims, c.rope_base,
                                            cos_sin_, stream_, {c.rope_freq_scale, rope_freqs_});
    for (int l = layer_begin_; st.ok() && l < layer_end_; ++l) st = RunLayer(l, plan);
    cudaGraph_t g = nullptr;
    const cudaError_t end = cudaStreamEndCapture(stream_, &g);
    if (!st.ok() || end != cudaSuccess) {
      if (g != nullptr) cudaGraphDestroy(g);
      cudaGetLastError();
      graph_bucket_ = 0;
      RETURN_IF_ERROR(st);
      CUDA_RETURN_IF_ERROR(end);
    }
    cudaGraphExec_t exec = nullptr;
    const cudaError_t inst = cudaGraphInstantiate(&exec, g, 0);
    cudaGraphDestroy(g);
    CUDA_RETURN_IF_ERROR(inst);
    it = graphs_.emplace(key, exec).first;
  }
  CUDA_RETURN_IF_ERROR(cudaGraphLaunch(it->second, stream_));
  return absl::OkStatus();
}

absl::Status CudaLlamaModel::RunLayers(const EngineStep& step, const ImportanceOptions& importance,
                                       absl::Span<float> hidden,
                                       std::vector<EngineObservation>* observations) {
  const int64_t n = step.num_tokens(), h = config_.hidden;
  resident_rows_ = 0;
  if (static_cast<int64_t>(hidden.size()) != n * h) {
    return absl::InvalidArgumentError(
        absl::StrCat("cuda engine: hidden holds ", hidden.size(), " floats, want ", n, " x ", h));
  }
  return RunLayersOn(step, importance, hidden.data(), observations);
}

absl::Status CudaLlamaModel::RunLayersResident(const EngineStep& step,
                                               const ImportanceOptions& importance,
                                               std::vector<EngineObservation>* observations) {
  const int64_t n = step.num_tokens();
  if (resident_rows_ != n) {
    return absl::FailedPreconditionError(absl::StrCat("cuda engine: ", resident_rows_,
                                                      " resident hidden rows, the step has ", n,
                                                      " tokens (EmbedResident first)"));
  }
  resident_rows_ = 0;
  RETURN_IF_ERROR(RunLayersOn(step, importance, nullptr, observations));
  resident_rows_ = n;
  return absl::OkStatus();
}

absl::Status CudaLlamaModel::RunLayersOn(const EngineStep& step,
                                         const ImportanceOptions& importance, float* host,
                                         std::vector<EngineObservation>* observations) {
  const int64_t n = step.num_tokens(), h = config_.hidden;
  CUDA_RETURN_IF_ERROR(cudaSetDevice(options_.device));
  std::vector<std::pair<uint64_t, int64_t>> seqs;
  std::vector<bool> observe;
  for (const EngineSequenceStep& s : step.sequences) {
    auto it = sequences_.find(s.id);
    const int64_t pos = it == sequences_.end() ? 0 : it->second.position;
    if (s.position != pos) {
      return absl::InvalidArgumentError(absl::StrCat(
          "cuda engine: sequence ", s.id, " is at position ", pos, ", step says ", s.position));
    }
    if (s.reread.has_value() && (!step.scores_only || s.observe)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "cuda engine: sequence ", s.id, " re-reads outside a scores-only step or also observes"));
    }
    seqs.emplace_back(s.id, s.n_new);
    observe.push_back(s.observe);
  }
  std::vector<EngineObservation> local;
  std::vector<EngineObservation>& obs = observations != nullptr ? *observations : local;
  obs.assign(step.sequences.size(), EngineObservation{});
  scorings_.clear();
  for (size_t i = 0; i < step.sequences.size(); ++i) {
    const EngineSequenceStep& s = step.sequences[i];
    scorings_.push_back(s.scoring.value_or(importance));
    if (s.observe) {
      obs[i].scores = MakeCollectedScores(config_, layer_begin_, layer_end_, s.position + s.n_new,
                                          scorings_.back());
    }
    if (s.reread.has_value()) obs[i].reread.resize(layer_end_ - layer_begin_);
  }
  StepPlan plan;
  RETURN_IF_ERROR(Prepare(seqs, observe, step.scores_only, {}, &plan));
  for (size_t i = 0; i < step.sequences.size(); ++i) plan.reread[i] = step.sequences[i].reread;
  observations_ = &obs;
  absl::Status st;
  if (host != nullptr) {
    st = cuda::CudaStatus(
        cudaMemcpyAsync(hidden_, host, n * h * sizeof(float), cudaMemcpyHostToDevice, stream_),
        "copy hidden in", __FILE__, __LINE__);
  }
  if (st.ok()) st = RunAllLayers(plan);
  observations_ = nullptr;
  // Also after a scores-only step: a later stage scores its layers from these rows.
  if (st.ok() && host != nullptr) {
    st = cuda::CudaStatus(
        cudaMemcpyAsync(host, hidden_, n * h * sizeof(float), cudaMemcpyDeviceToHost, stream_),
        "copy hidden out", __FILE__, __LINE__);
  }
  // The resident path does not wait for the layers: what reads their rows next (the head's
  // SampleResident / LogitsResident, ExportResident, ResidentHost) is queued behind them on
  // stream_ and waits itself, so the device runs the head right after the last layer instead of
  // idling while the host returns and queues it. A kernel's error surfaces at that wait.
  if (st.ok() && host != nullptr) {
    st = cuda::CudaStatus(cudaStreamSynchronize(stream_), "sync", __FILE__, __LINE__);
  }
  if (!st.ok()) {
    Rollback(plan);
    return st;
  }
  return Commit(plan);
}

absl::Status CudaLlamaModel::Forward(absl::Span<const CudaTokenStep> steps,
                                     std::vector<int32_t>* next_tokens,
                                     std::vector<float>* logits) {
  const ModelConfig& c = config_;
  if (!has_embedding_ || !has_head_) {
    return absl::FailedPreconditionError("cuda engine: Forward needs every layer");
  }
  CUDA_RETURN_IF_ERROR(cudaSetDevice(options_.device));
  std::vector<std::pair<uint64_t, int64_t>> seqs;
  std::vector<int32_t> tokens;
  resident_rows_ = 0;
  for (const CudaTokenStep& s : steps) {
    seqs.emplace_back(s.id, static_cast<int64_t>(s.tokens.size()));
    for (int32_t t : s.tokens) {
      if (t < 0 || t >= c.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat("cuda engine: token ", t, " outside"));
      }
    }
    tokens.insert(tokens.end(), s.tokens.begin(), s.tokens.end());
  }
  StepPlan plan;
  RETURN_IF_ERROR(Prepare(seqs, std::vector<bool>(seqs.size(), false), false, tokens, &plan));
  observations_ = nullptr;
  absl::Status st = cuda::LaunchEmbedding(embedding_, c.vocab_size, c.hidden, d_tokens_, plan.n,
                                          hidden_, stream_);
  if (st.ok()) st = RunAllLayers(plan);
  if (st.ok()) st = Head(plan, next_tokens, logits);
  if (!st.ok()) {
    Rollback(plan);
    return st;
  }
  return Commit(plan);
}

absl::Status CudaLlamaModel::Head(const StepPlan& plan, std::vector<int32_t>* next_tokens,
                                  std::vector<float>* logits) {
  const ModelConfig& c = config_;
  const int64_t b = plan.b, vocab = c.vocab_size;
  std::vector<int64_t> last(b);
  for (int64_t i = 0; i < b; ++i) last[i] = plan.row0[i] + plan.n_new[i] - 1;
  RETURN_IF_ERROR(GatherLastRows(hidden_, last, cudaMemcpyDeviceToDevice));
  RETURN_IF_ERROR(HeadProject(b));
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
  return absl::OkStatus();
}

}  // namespace xkv
