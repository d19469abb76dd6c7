// The Llama decoder on one CUDA device, composed from the kernels/cuda launchers: a StageEngine
// (any contiguous layer range, hidden rows in and out on the host) and, for the whole model, a
// device-only path (token ids in, greedy next tokens out) for tests and benchmarks.
//
// Weights: bf16 [out, in] on the device — dequantized there from a GGUF's raw tensor bytes, or
// filled from a seed (random-weight models of real shapes); Q/K/V and gate/up fused row-wise as in
// the CPU engine; norm gains fp32. Residual stream fp32; GEMM inputs bf16 with fp32 accumulation.
//
// KV cache: ONE paged bf16 pool shared by all layers of the stage (16-token blocks of
// [n_kv_heads, 16, head_dim], K and V), handed out per KV head: every sequence has one table of
// head-blocks (16 rows of one KV head; kernels/cuda/paged_kv.cuh) per (layer, KV head)
// (model/head_block_pool.h), so layers and the KV heads of one layer hold different numbers of
// tokens after XKV eviction (per-head budgets), and memory freed by one serves any other
// (per-layer pools would strand what XKV saves). A KV head holding n tokens owns ceil(n / 16)
// head-blocks: at most 15 rows of rounding per (sequence, layer, KV head); a full cache (every
// head equal) holds exactly what whole blocks did.
//
// A step: sequences with one new token each run the batched split-K decode attention; others
// the flash prefill kernel. Decode steps replay a CUDA graph per (batch size, context bucket).
// Observed sequences are scored on the device (LaunchImportancePaged) at every layer; compaction
// copies each layer's kept slots into fresh blocks (LaunchCompactKv). Not thread-safe.
#ifndef XKV_MODEL_CUDA_CUDA_LLAMA_MODEL_H_
#define XKV_MODEL_CUDA_CUDA_LLAMA_MODEL_H_

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/node_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/cuda/cublas_handle.h"
#include "kernels/cuda/paged_kv.cuh"
#include "model/gguf.h"
#include "model/gpu_memory_budget.h"
#include "model/head_block_pool.h"
#include "model/model_config.h"
#include "model/stage_engine.h"

namespace xkv {

struct CudaEngineOptions {
  int device = 0;  // CUDA device ordinal
  int layer_begin = 0;
  int layer_end = -1;              // exclusive; -1: every layer
  int max_batch = 32;              // sequences per step
  int64_t max_step_tokens = 8192;  // new tokens per step, all sequences together
  int64_t max_seq_len = 8192;      // cache slots per sequence and layer
  int64_t num_kv_blocks = 0;       // blocks of the shared pool; 0: sized from memory (below)
  // With num_kv_blocks 0: the stage's memory budget (model/gpu_memory_budget.h), of which the
  // pool gets what weights and scratch leave, and max_step_tokens is checked against it.
  // gpu_memory_utilization 0: the pool is kv_memory_fraction of what is free after weights and
  // scratch (benchmarks).
  double gpu_memory_utilization = 0;
  double memory_share = 1.0;        // this stage's part of a device shared by several stages
  double kv_memory_fraction = 0.8;  // of the device memory free after weights and scratch
  bool cuda_graphs = true;          // replay decode steps from captured graphs
  // Steps of <= gemv_max_rows() tokens (decode at small batch): our GEMV kernels (SwiGLU
  // fused into gate|up; on narrow models the RMSNorms too) instead of cuBLAS, launched with
  // programmatic dependent launch when `pdl` (each kernel starts while the previous one drains).
  // Off: cuBLAS, plain launches.
  bool small_batch_kernels = true;
  bool pdl = true;
};

// One sequence's part of a device-only Forward: tokens appended at its current length.
struct CudaTokenStep {
  uint64_t id = 0;
  absl::Span<const int32_t> tokens;  // >= 1
};

class CudaLlamaModel : public StageEngine {
 public:
  // Uploads and dequantizes the range's layers (plus embedding / head when the range starts /
  // ends the model). `file` is only read during the call. INTERNAL on CUDA errors (no device).
  static absl::StatusOr<std::unique_ptr<CudaLlamaModel>> Load(const GgufFile& file,
                                                              const CudaEngineOptions& options);
  // Random bf16 weights from `seed` (uniform, scaled by 1/sqrt(fan-in)); norm gains 1.
  static absl::StatusOr<std::unique_ptr<CudaLlamaModel>> CreateRandom(
      const ModelConfig& config, uint64_t seed, const CudaEngineOptions& options);
  ~CudaLlamaModel() override;
  CudaLlamaModel(const CudaLlamaModel&) = delete;
  CudaLlamaModel& operator=(const CudaLlamaModel&) = delete;

  // ---- StageEngine --------------------------------------------------------------------------
  const ModelConfig& config() const override { return config_; }
  int layer_begin() const override { return layer_begin_; }
  int layer_end() const override { return layer_end_; }
  int64_t weight_bytes() const override { return weight_bytes_; }
  int64_t kv_bytes_per_token() const override { return config_.KvBytesPerTokenPerLayer(2); }
  std::string device() const override;
  int64_t kv_pool_blocks() const override { return sized_from_memory_ ? num_blocks_ : 0; }
  bool HasSequence(uint64_t id) const override { return sequences_.contains(id); }
  int64_t CacheLength(uint64_t id, int layer) const override;
  int64_t HeadCacheLength(uint64_t id, int layer, int head) const override;
  // Head-blocks hold one KV head each: every head keeps, and frees, its own rows.
  bool supports_per_head_kv() const override { return true; }
  void ReleaseSequence(uint64_t id) override;
  absl::StatusOr<std::vector<float>> Embed(absl::Span<const int32_t> tokens) override;
  absl::Status RunLayers(const EngineStep& step, const ImportanceOptions& importance,
                         absl::Span<float> hidden,
                         std::vector<EngineObservation>* observations) override;
  absl::StatusOr<std::vector<float>> Logits(absl::Span<const float> hidden,
                                            absl::Span<const int64_t> rows) override;
  absl::Status CompactLayer(uint64_t id, int layer, int64_t prompt_len,
                            absl::Span<const std::vector<int32_t>> kept) override;
  std::unique_ptr<KvCache> CacheCopy(uint64_t id) const override;
  absl::Status CopySequence(uint64_t from, uint64_t to) override;
  // Resident path: the rows stay in the device's residual-stream buffer between the calls.
  absl::Status EmbedResident(absl::Span<const int32_t> tokens) override;
  absl::Status RunLayersResident(const EngineStep& step, const ImportanceOptions& importance,
                                 std::vector<EngineObservation>* observations) override;
  absl::StatusOr<std::vector<float>> LogitsResident(absl::Span<const int64_t> rows) override;
  absl::Status LoadResident(std::vector<float> rows) override;
  absl::StatusOr<absl::Span<const float>> ResidentHost() override;
  bool device_resident() const override { return true; }
  absl::StatusOr<DeviceRows> ExportResident(RowDtype dtype) override;
  absl::Status LoadResidentDevice(const DeviceRows& rows) override;
  absl::StatusOr<SampledRows> SampleResident(absl::Span<const RowSampling> rows) override;
  // Start queues the head, the sampling and the tokens' copy into pinned memory and returns at
  // once (up to two outstanding); Finish waits for the oldest one's copy (StageExecutor's
  // lookahead). EmbedResidentSampled copies the newest one's tokens on the device.
  absl::Status StartSampleResident(absl::Span<const RowSampling> rows) override;
  absl::StatusOr<SampledRows> FinishSampleResident() override;
  absl::Status EmbedResidentSampled() override;
  absl::Status UndoDecode(absl::Span<const uint64_t> ids) override;

  // ---- device-only whole-model path (tests, benchmarks) ---------------------------------------
  // Embedding → every layer → head on each sequence's last token → greedy token, all on the
  // device; sequences are created on first use. next_tokens: int32 [steps]. logits (optional):
  // fp32 [steps, vocab]. Synchronises before returning.
  absl::Status Forward(absl::Span<const CudaTokenStep> steps, std::vector<int32_t>* next_tokens,
                       std::vector<float>* logits = nullptr);

  // Switches CudaEngineOptions::small_batch_kernels / pdl and the most rows of a GEMV step
  // (clamped to [1, cuda::kGemvMaxRows]; benchmarks and tests compare them); the captured decode
  // graphs are dropped and recaptured on the next steps.
  void SetDecodeKernels(bool small_batch_kernels, bool pdl, int64_t gemv_rows = kDefaultGemvRows);
  // The most token rows a step may have to run the small-batch GEMV kernels: kDefaultGemvRows
  // (all the kernels take) unless SetDecodeKernels chose fewer (cuda_llama_step.cc says why).
  static constexpr int64_t kDefaultGemvRows = 8;
  int64_t gemv_max_rows() const { return gemv_rows_; }

  int64_t num_kv_blocks() const { return num_blocks_; }
  // The memory figures the pool was sized from (gpu_memory_utilization > 0) and the scratch.
  const GpuMemoryBudget& memory_budget() const { return budget_; }
  int64_t scratch_bytes() const { return scratch_bytes_; }
  int64_t max_step_tokens() const { return options_.max_step_tokens; }
  // Bytes of the step scratch InitCache allocates for `max_step_tokens` (the sizing check).
  int64_t StepScratchBytes(int64_t max_step_tokens) const;
  // Free memory in whole blocks (free head-blocks / n_kv_heads, rounded down), and in head-blocks
  // (the pool's unit: num_kv_blocks() * n_kv_heads when no sequence is held).
  int64_t free_kv_blocks() const { return free_kv_head_blocks() / config_.n_kv_heads; }
  int64_t free_kv_head_blocks() const { return pool_.free_blocks(); }
  int64_t logical_position(uint64_t id) const;  // tokens fed so far (-1 when unknown)
  cudaStream_t stream() const { return stream_; }

 private:
  static constexpr int64_t kBlock = cuda::kKvBlockTokens;  // tokens per KV block
  static int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

  struct Layer {
    float* attn_norm = nullptr;          // device fp32 [hidden]
    float* ffn_norm = nullptr;           // device fp32 [hidden]
    __nv_bfloat16* wqkv = nullptr;       // device bf16 [q_dim + 2 kv_dim, hidden]
    __nv_bfloat16* wo = nullptr;         // device bf16 [hidden, q_dim]
    __nv_bfloat16* w_gate_up = nullptr;  // device bf16 [2 ffn, hidden]
    __nv_bfloat16* w_down = nullptr;     // device bf16 [hidden, ffn]
    // Architecture hooks (model/arch/arch.h), null unless the config switches them on.
    float* qkv_bias = nullptr;  // device fp32 [q_dim + 2 kv_dim]
    float* q_norm = nullptr;    // device fp32 [head_dim]
    float* k_norm = nullptr;    // device fp32 [head_dim]
  };
  struct Sequence {
    int64_t position = 0;  // logical tokens fed so far
    HeadTables kv;         // per (layer - layer_begin, KV head): head-blocks and slots
    // Renewed (from next_epoch_) whenever a head-block id in kv changes: a step slot whose tables
    // were last filled at this epoch still holds them (host mirror and device), so they are not
    // copied again.
    uint64_t epoch = 0;
  };
  // One step's plan, filled by Prepare.
  struct StepPlan {
    int64_t n = 0;                                  // new tokens
    int64_t b = 0;                                  // sequences
    bool all_decode = true;                         // every sequence has one new token
    int64_t max_kv_len = 0;                         // after the step, over layers and sequences
    std::vector<int64_t> n_new;                     // [b]
    std::vector<int64_t> row0;                      // [b] first row
    std::vector<int64_t> kv_len;                    // [layers, b, n_kv_heads] slots after the step
    std::vector<int64_t> kv_max;                    // [layers, b] the largest over KV heads
    std::vector<Sequence*> seqs;                    // [b]
    std::vector<bool> observe;                      // [b]
    std::vector<std::optional<RereadSpan>> reread;  // [b]: re-reading sequences (scores only)
    bool scores_only = false;
  };

  CudaLlamaModel(const ModelConfig& config, const CudaEngineOptions& options);
  absl::Status InitCommon();
  absl::Status LoadWeights(const GgufFile& file);
  absl::Status RandomWeights(uint64_t seed);
  absl::Status AllocWeights();
  absl::Status InitCache();
  absl::Status InitPool();          // the shared KV pool (InitCache, last)
  absl::Status CheckScratchFits();  // max_step_tokens against the memory budget (InitCache)
  // Device penalty buffers for at least n entries.
  absl::Status ReservePenalties(int64_t n);
  // cudaMalloc of max(n, 1) elements of T, freed with the model.
  template <typename T>
  absl::Status Alloc(int64_t n, T** out) {
    void* p = nullptr;
    if (absl::Status s = AllocBytes(std::max<int64_t>(n, 1) * sizeof(T), &p); !s.ok()) return s;
    *out = static_cast<T*>(p);
    return absl::OkStatus();
  }
  absl::Status AllocBytes(int64_t bytes, void** out);
  absl::Status UploadMatrix(const GgufFile& file, const std::string& name, int64_t rows,
                            int64_t cols, __nv_bfloat16* dst);
  absl::Status UploadVector(const GgufFile& file, const std::string& name, int64_t n, float* dst);

  // Validates the step, takes blocks for the new slots (all or nothing) and uploads the step's
  // inputs (positions, slots, tables, lengths; tokens when given).
  absl::Status Prepare(const std::vector<std::pair<uint64_t, int64_t>>& seqs,
                       const std::vector<bool>& observe, bool scores_only,
                       absl::Span<const int32_t> tokens, StepPlan* plan);
  // widths[i]: block ids per table row of step sequence i to copy; 0: its slot's tables are
  // current on the device already.
  absl::Status UploadStep(int64_t n, int64_t b, absl::Span<const int64_t> widths,
                          absl::Span<const int32_t> tokens);
  absl::Status EmbedOnDevice(absl::Span<const int32_t> tokens);  // into hidden_
  // RunLayers on hidden_; `host` (optional) is copied in first and receives the rows after.
  absl::Status RunLayersOn(const EngineStep& step, const ImportanceOptions& importance, float* host,
                           std::vector<EngineObservation>* observations);
  absl::Status CheckLogitRows(absl::Span<const int64_t> rows, int64_t n) const;
  absl::StatusOr<std::vector<float>> HeadLogits(int64_t b);  // of the b rows in last_
  // last_ row i = src row rows[i] (hidden floats each): one copy per run of consecutive rows (a
  // decode step's rows 0..b-1 are one copy, not b).
  absl::Status GatherLastRows(const float* src, absl::Span<const int64_t> rows,
                              cudaMemcpyKind kind);
  absl::Status RunAllLayers(const StepPlan& plan);
  absl::Status RunLayer(int layer, const StepPlan& plan);
  absl::Status ScoreLayer(int layer, const StepPlan& plan);
  // The reconstruction scores of sequence i's re-reading input in one layer (ScoreLayer).
  absl::Status ScoreReread(int layer, const StepPlan& plan, int64_t i);
  // y (+)= x · wᵀ for `rows` token rows: the GEMV kernels when `small`, else cuBLAS.
  absl::Status Project(const __nv_bfloat16* x, int64_t ldx, const __nv_bfloat16* w, int64_t n_out,
                       int64_t k, float* y, int64_t ldy, int64_t rows, bool accumulate, bool small);
  bool SmallStep(int64_t rows) const;
  // A small step on a narrow model: each RMSNorm runs inside the GEMV after it.
  bool FusedNormStep(int64_t rows) const;
  // logits_ = RmsNorm(last_) · lm_headᵀ for b gathered rows (the heads of Forward, Logits and
  // SampleResident).
  absl::Status HeadProject(int64_t b);
  // Greedy tokens (and logits) of each sequence's last row (Forward).
  absl::Status Head(const StepPlan& plan, std::vector<int32_t>* next_tokens,
                    std::vector<float>* logits);
  absl::Status Commit(const StepPlan& plan);  // lengths after a successful step
  void Rollback(const StepPlan& plan);        // frees blocks taken by a failed step
  int64_t GraphBucket(int64_t max_kv_len) const;
  // One layer, every KV head g: copies slots kept[g][s] of head g's head-blocks src[g] into slot s
  // of its head-blocks dst[g] (disjoint from every src), K and V; synchronises.
  absl::Status CopyHeadSlots(absl::Span<const std::vector<int32_t>> src,
                             absl::Span<const std::vector<int32_t>> kept,
                             absl::Span<const std::vector<int32_t>> dst);
  // Device tables of step sequence i in a layer: n_kv_heads rows of max_blocks_per_seq.
  const int32_t* TableRow(int layer, int64_t i) const;
  const int32_t* KvLens(int layer, int64_t i) const;  // device int32 [n_kv_heads] of sequence i
  int64_t li(int layer) const { return layer - layer_begin_; }

  ModelConfig config_;
  CudaEngineOptions options_;
  int layer_begin_ = 0, layer_end_ = 0;
  bool has_embedding_ = false, has_head_ = false;
  int64_t max_blocks_per_seq_ = 0;
  int64_t num_blocks_ = 0;
  int64_t weight_bytes_ = 0;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<cuda::CublasHandle> cublas_;
  std::vector<void*> allocations_;
  int64_t allocated_bytes_ = 0;         // the bytes of allocations_ (the pool's sizing, InitPool)
  std::vector<Layer> layers_;           // [layer - layer_begin]
  cuda::PagedKvLayer cache_;            // the shared pool, per-KV-head tables
  __nv_bfloat16* embedding_ = nullptr;  // device bf16 [vocab, hidden] (first stage)
  __nv_bfloat16* lm_head_ = nullptr;    // device bf16 [vocab, hidden] (last stage)
  float* output_norm_ = nullptr;        // device fp32 [hidden]
  HeadBlockPool pool_;                  // the pool's head-blocks and who holds them
  uint64_t next_epoch_ = 0;
  std::vector<uint64_t> slot_epoch_;  // [max_batch]: Sequence::epoch of the tables in step slot i
  absl::node_hash_map<uint64_t, Sequence> sequences_;              // node: StepPlan keeps pointers
  std::map<std::pair<int64_t, int64_t>, cudaGraphExec_t> graphs_;  // (batch, bucket) → graph
  int64_t gemv_rows_ = kDefaultGemvRows;                           // SetDecodeKernels

  // Per-step device inputs (fixed addresses: graphs replay them).
  int32_t* d_tokens_ = nullptr;     // int32 [max_step_tokens]
  int64_t* d_positions_ = nullptr;  // int64 [max_step_tokens]
  int64_t* d_slots_ = nullptr;      // int64 [layers, max_step_tokens, n_kv_heads] head-slots
  int32_t* d_tables_ = nullptr;     // int32 [layers, max_batch, n_kv_heads, max_blocks_per_seq]
  int32_t* d_kv_lens_ = nullptr;    // int32 [layers, max_batch, n_kv_heads]
  int32_t* d_next_ = nullptr;       // int32 [max_batch]
  void* d_sampling_ = nullptr;      // DeviceSamplingParams [max_batch] (greedy)
  // Pinned host mirrors of the same.
  int32_t* h_tokens_ = nullptr;
  int64_t* h_positions_ = nullptr;
  int64_t* h_slots_ = nullptr;
  int32_t* h_tables_ = nullptr;
  int32_t* h_kv_lens_ = nullptr;
  // Scratch.
  float* hidden_ = nullptr;        // fp32 [max_step_tokens, hidden] residual stream
  __nv_bfloat16* norm_ = nullptr;  // bf16 [max_step_tokens, max(hidden, q_dim, ffn)]
  float* qkv_ = nullptr;           // fp32 [max_step_tokens, q_dim + 2 kv_dim]
  float* q_ = nullptr;             // fp32 [max_step_tokens, q_dim] post-RoPE
  float* ffn_ = nullptr;           // fp32 [max_step_tokens, 2 ffn]
  __nv_bfloat16* glu_ = nullptr;   // bf16 [kGemvMaxRows, ffn] fused GEMV SwiGLU output
  float* cos_sin_ = nullptr;       // fp32 [max_step_tokens, rope_dims]
  float* rope_freqs_ = nullptr;    // fp32 [rope_dims / 2] (rope_freqs.weight); null unless config
  float* last_ = nullptr;          // fp32 [max_batch, hidden]
  float* logits_ = nullptr;        // fp32 [max_batch, vocab]
  void* workspace_ = nullptr;      // decode attention scratch
  size_t workspace_bytes_ = 0;
  void* score_ws_ = nullptr;  // importance scratch
  size_t score_ws_bytes_ = 0;
  float* scores_ = nullptr;            // fp32 [kv_or_q_heads, max_seq_len] one layer's scores
  int32_t* kept_ = nullptr;            // int32 [n_kv_heads, max_seq_len] compaction
  int32_t* compact_tables_ = nullptr;  // int32 [2, n_kv_heads, max_blocks_per_seq] src, dst
  void* staging_ = nullptr;            // raw tensor bytes during Load
  size_t staging_bytes_ = 0;
  cudaEvent_t score_start_ = nullptr, score_stop_ = nullptr;
  // Of the step being run.
  std::vector<ImportanceOptions> scorings_;                 // [b]: each sequence's scoring
  std::vector<EngineObservation>* observations_ = nullptr;  // [b]; null: nothing observed
  int64_t graph_bucket_ = 0;   // decode attention's max_kv_len inside a graph (0: the step's)
  int64_t resident_rows_ = 0;  // rows of hidden_ the resident path holds (0: none)
  // Recorded after a step's input copies from the pinned h_* mirrors (UploadStep): the resident
  // path returns before the stream has run them, so the next Prepare waits for it before it
  // rewrites the mirrors.
  cudaEvent_t inputs_copied_ = nullptr;
  // Device sampling (SampleResident): per-row parameters and the penalties of the step.
  void* d_row_params_ = nullptr;  // DeviceSamplingParams [max_batch]
  // Pinned rings of kSampleSlots: each outstanding StartSampleResident owns one slot of the
  // parameters' mirror and of the sampled tokens' copy, and an event after that copy.
  static constexpr int kSampleSlots = 2;
  void* h_row_params_ = nullptr;  // DeviceSamplingParams [kSampleSlots, max_batch]
  int32_t* h_next_ = nullptr;     // int32 [kSampleSlots, max_batch]
  cudaEvent_t sampled_[kSampleSlots] = {};
  struct PendingSample {
    SampledRows out;          // tokens filled by Finish; the asked-for logits' copies may run
    std::vector<bool> drawn;  // [rows]: sampled
    int slot = 0;
  };
  std::deque<PendingSample> pending_;  // oldest first
  int next_slot_ = 0;
  int32_t* d_pen_rows_ = nullptr;  // int32 [pen_capacity_]
  int32_t* d_pen_ids_ = nullptr;   // int32 [pen_capacity_]
  float* d_pen_deltas_ = nullptr;  // fp32 [pen_capacity_]
  int64_t pen_capacity_ = 0;
  std::vector<float> host_rows_;  // ResidentHost's copy
  // Memory sizing.
  GpuMemoryBudget budget_;
  int64_t scratch_bytes_ = 0;
  bool sized_from_memory_ = false;  // the pool came from KvPoolBlocks
};

}  // namespace xkv

#endif  // XKV_MODEL_CUDA_CUDA_LLAMA_MODEL_H_
