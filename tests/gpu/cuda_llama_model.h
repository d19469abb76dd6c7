// A minimal Llama engine on one CUDA device, mirroring model/llama_model.h (kExact numerics up to
// bf16 weights): test-support code for now (it moves to model/ once it has its own unit tests).
//
// Weights: the GGUF's raw (quantized) tensor bytes are uploaded and dequantized on the device to
// bf16 [out, in] matrices; Q/K/V and gate/up are fused row-wise as in the CPU engine; norm gains
// stay fp32. KV cache: one paged bf16 pool per layer (16-token blocks); every sequence owns one
// block table shared by all layers (no eviction here, so all layers hold the same length).
//
// One Forward runs B sequences: each has a chunk of new tokens (a prompt chunk, or one decode
// token) appended at its current length. Residual stream fp32; GEMM inputs bf16, fp32
// accumulation. Steps whose sequences all have one new token use the batched split-K decode
// kernel; otherwise each sequence runs the flash prefill kernel (one-token sequences of a mixed
// step use the decode kernel with batch 1). Greedy next tokens come from LaunchSample on the
// device. Not thread-safe.
#ifndef XKV_TESTS_GPU_CUDA_LLAMA_MODEL_H_
#define XKV_TESTS_GPU_CUDA_LLAMA_MODEL_H_

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/cuda/cublas_handle.h"
#include "kernels/cuda/paged_kv.cuh"
#include "model/gguf.h"
#include "model/model_config.h"

namespace xkv {

struct CudaLlamaModelOptions {
  int max_batch = 8;               // sequences per Forward
  int64_t max_step_tokens = 1024;  // new tokens per Forward, all sequences together
  int64_t max_seq_len = 1024;      // cache slots per sequence
  int64_t num_kv_blocks = 0;       // blocks per layer pool; 0: max_batch * ceil(max_seq_len / 16)
};

// One sequence's part of a Forward: `tokens` (>= 1) appended at the sequence's current length
// (their positions are length, length + 1, ...).
struct CudaSequenceStep {
  int sequence = 0;  // id from AddSequence
  absl::Span<const int32_t> tokens;
};

class CudaLlamaModel {
 public:
  // Reads the config from `file`, uploads and dequantizes every layer, embedding and head.
  // `file` is only read during the call. INTERNAL on CUDA errors (e.g. no device).
  static absl::StatusOr<std::unique_ptr<CudaLlamaModel>> Load(const GgufFile& file,
                                                              const CudaLlamaModelOptions& options);
  ~CudaLlamaModel();
  CudaLlamaModel(const CudaLlamaModel&) = delete;
  CudaLlamaModel& operator=(const CudaLlamaModel&) = delete;

  const ModelConfig& config() const { return config_; }
  int64_t weight_bytes() const { return weight_bytes_; }

  // A new empty sequence; its blocks are taken from the pools as it grows.
  int AddSequence();
  // Returns the sequence's blocks to the pools; the id is not reused.
  void ReleaseSequence(int sequence);
  int64_t length(int sequence) const;

  // Runs the whole model over the steps (distinct sequences). next_tokens: greedy token of each
  // step's last new token. logits (optional): fp32 [steps, vocab] of those rows. Synchronises the
  // stream before returning.
  absl::Status Forward(absl::Span<const CudaSequenceStep> steps, std::vector<int32_t>* next_tokens,
                       std::vector<float>* logits = nullptr);

 private:
  struct Layer {
    float* attn_norm = nullptr;          // device fp32 [hidden]
    float* ffn_norm = nullptr;           // device fp32 [hidden]
    __nv_bfloat16* wqkv = nullptr;       // device bf16 [q_dim + 2 kv_dim, hidden]
    __nv_bfloat16* wo = nullptr;         // device bf16 [hidden, q_dim]
    __nv_bfloat16* w_gate_up = nullptr;  // device bf16 [2 ffn, hidden]
    __nv_bfloat16* w_down = nullptr;     // device bf16 [hidden, ffn]
    cuda::PagedKvLayer cache;            // bf16 pools [num_blocks, n_kv_heads, 16, head_dim]
  };
  struct Sequence {
    bool live = false;
    int64_t length = 0;
    std::vector<int32_t> blocks;  // block ids, slot order
  };

  CudaLlamaModel(const ModelConfig& config, const CudaLlamaModelOptions& options);
  absl::Status Init(const GgufFile& file);
  // Device allocation tracked for release in the destructor.
  template <typename T>
  absl::Status Alloc(int64_t n, T** out);
  // Uploads the raw bytes of tensor `name` (checked to be [rows, cols]) and dequantizes them into
  // dst (bf16 [rows, cols]).
  absl::Status UploadMatrix(const GgufFile& file, const std::string& name, int64_t rows,
                            int64_t cols, __nv_bfloat16* dst);
  absl::Status UploadVector(const GgufFile& file, const std::string& name, int64_t n, float* dst);
  absl::Status RunLayer(const Layer& w, int64_t n, absl::Span<const CudaSequenceStep> steps,
                        bool all_decode);

  ModelConfig config_;
  CudaLlamaModelOptions options_;
  int64_t max_blocks_per_seq_ = 0;
  int64_t weight_bytes_ = 0;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<cuda::CublasHandle> cublas_;
  std::vector<void*> allocations_;
  std::vector<Layer> layers_;
  __nv_bfloat16* embedding_ = nullptr;  // device bf16 [vocab, hidden]
  __nv_bfloat16* lm_head_ = nullptr;    // device bf16 [vocab, hidden] (== embedding_ when tied)
  float* output_norm_ = nullptr;        // device fp32 [hidden]
  std::vector<int32_t> free_blocks_;
  std::vector<Sequence> sequences_;

  // Per-step device inputs.
  int32_t* d_tokens_ = nullptr;     // int32 [max_step_tokens]
  int64_t* d_positions_ = nullptr;  // int64 [max_step_tokens]
  int64_t* d_slots_ = nullptr;      // int64 [max_step_tokens]
  int32_t* d_tables_ = nullptr;     // int32 [max_batch, max_blocks_per_seq]
  int32_t* d_kv_lens_ = nullptr;    // int32 [max_batch]
  int32_t* d_next_ = nullptr;       // int32 [max_batch]
  void* d_sampling_ = nullptr;      // DeviceSamplingParams [max_batch] (greedy)
  // Scratch.
  float* hidden_ = nullptr;        // fp32 [max_step_tokens, hidden] residual stream
  __nv_bfloat16* norm_ = nullptr;  // bf16 [max_step_tokens, max(hidden, q_dim, ffn)]
  float* qkv_ = nullptr;           // fp32 [max_step_tokens, q_dim + 2 kv_dim]
  float* q_ = nullptr;             // fp32 [max_step_tokens, q_dim] post-RoPE
  float* ffn_ = nullptr;           // fp32 [max_step_tokens, 2 ffn]
  float* cos_sin_ = nullptr;       // fp32 [max_step_tokens, rope_dims]
  float* last_ = nullptr;          // fp32 [max_batch, hidden]
  float* logits_ = nullptr;        // fp32 [max_batch, vocab]
  void* workspace_ = nullptr;      // decode attention scratch
  size_t workspace_bytes_ = 0;
  void* staging_ = nullptr;  // raw tensor bytes during Load
  size_t staging_bytes_ = 0;
  // Host copies of the step's inputs (reused).
  std::vector<int32_t> h_tokens_, h_tables_, h_kv_lens_;  // h_kv_lens_: slots after the step
  int64_t max_kv_len_ = 0;                                // max of h_kv_lens_
  std::vector<int64_t> h_positions_, h_slots_;
};

}  // namespace xkv

#endif  // XKV_TESTS_GPU_CUDA_LLAMA_MODEL_H_
