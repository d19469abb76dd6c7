#include "worker/stage_engine_factory.h"

#include <algorithm>
#include <cstdio>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "model/cpu_stage_engine.h"
#include "model/gguf.h"
#include "model/gpu_memory_budget.h"
#include "model/llama_weights.h"
#include "model/model_config.h"
#include "worker/nccl_link_config.h"
#if defined(XKV_WITH_CUDA)
#include "model/cuda/cuda_llama_model.h"
#endif

namespace xkv {
namespace {

absl::StatusOr<std::unique_ptr<StageEngine>> LoadCpu(const StageOptions& o, const GgufFile& file,
                                                     const ModelConfig& config) {
  LlamaWeightsOptions w;
  w.layer_begin = o.layer_begin;
  w.layer_end = o.layer_end < 0 ? config.n_layers : o.layer_end;
  w.load_embedding = w.layer_begin == 0;
  w.load_head = w.layer_end == config.n_layers;
  // kGgml's bit-exact path reads the ggml blocks only: no fp32 copies of those matrices.
  w.keep_blocks = w.blocks_only = o.numerics == Numerics::kGgml;
  ASSIGN_OR_RETURN(LlamaWeights weights, LoadLlamaWeights(file, config, w));
  ASSIGN_OR_RETURN(std::unique_ptr<CpuStageEngine> engine,
                   CpuStageEngine::Create(std::make_shared<const LlamaWeights>(std::move(weights)),
                                          LlamaModelOptions{o.num_threads, o.numerics}));
  return std::unique_ptr<StageEngine>(std::move(engine));
}

// Blocks the CUDA engine holds for a moment beyond what the stage's BlockPool accounts: a
// scores-only mini-prefill writes the K/V of its whole batch in every layer and frees them at the
// step's end (every sequence's last block partly filled: at most max_step_tokens / 16 + max_batch
// blocks per layer), and a compaction copies one layer's kept slots into fresh blocks before it
// frees the old ones (at most one table, max_seq_len / 16 blocks). The two never overlap.
constexpr int64_t kCudaMaxBatch = 256;  // any batch the coordinator may schedule (--max-batch)
int64_t CudaScratchBlocks(int layers, int64_t max_step_tokens, int64_t max_seq_len) {
  const int64_t block = 16;
  const int64_t profile = int64_t{layers} * ((max_step_tokens + block - 1) / block + kCudaMaxBatch);
  const int64_t compaction = (max_seq_len + block - 1) / block;
  return std::max(profile, compaction);
}
int64_t CudaMaxSeqLen(const ModelConfig& config) {
  return config.context_length > 0 ? config.context_length : 8192;
}

#if defined(XKV_WITH_CUDA)
// The physical pool: with a capacity asked for (blocks or bytes per layer, or per-layer blocks),
// exactly the stage's BlockPool capacity (KvPoolCapacity, the one ledger of architecture.md §5, at
// bf16) plus the scratch above; otherwise the engine sizes it from --gpu-memory-utilization and
// the ledger takes what it made less the same scratch (StageOptionsForEngine).
absl::StatusOr<std::unique_ptr<StageEngine>> LoadCuda(const StageOptions& o, int device,
                                                      const GgufFile& file,
                                                      const ModelConfig& config) {
  if (o.block_tokens != 16) {
    return absl::InvalidArgumentError("stage: a cuda stage needs block_tokens 16");
  }
  RETURN_IF_ERROR(ValidateGpuMemoryUtilization(o.gpu_memory_utilization));
  CudaEngineOptions e;
  e.device = device;
  e.layer_begin = o.layer_begin;
  e.layer_end = o.layer_end;
  // Any batch the coordinator may schedule (its --max-batch, up to 256).
  e.max_batch = kCudaMaxBatch;
  e.max_seq_len = CudaMaxSeqLen(config);
  e.max_step_tokens = StageMaxBatchedTokens(o, config.context_length);
  e.gpu_memory_utilization = o.gpu_memory_utilization;
  e.memory_share = o.gpu_memory_share;
  const int layers = (o.layer_end < 0 ? config.n_layers : o.layer_end) - o.layer_begin;
  if (!o.layer_capacity_blocks.empty() || o.kv_capacity_blocks > 0 || o.kv_capacity_bytes > 0) {
    ASSIGN_OR_RETURN(const int64_t capacity,
                     KvPoolCapacity(o, layers, 16 * config.KvBytesPerTokenPerLayer(2)));
    e.num_kv_blocks = capacity + CudaScratchBlocks(layers, e.max_step_tokens, e.max_seq_len);
  }
  ASSIGN_OR_RETURN(std::unique_ptr<CudaLlamaModel> engine, CudaLlamaModel::Load(file, e));
  const GpuMemoryBudget& b = engine->memory_budget();
  const int64_t block_bytes = 16 * config.KvBytesPerTokenPerLayer(2);
  const int64_t pool = engine->num_kv_blocks();
  const std::string from =
      engine->kv_pool_blocks() > 0
          ? absl::StrCat(
                "--gpu-memory-utilization ", o.gpu_memory_utilization,
                o.gpu_memory_share < 1 ? absl::StrCat(" x share ", o.gpu_memory_share) : "", " of ",
                GiB(b.free_bytes), " free")
          : "sized by the stage's KV capacity";
  std::fprintf(stderr,
               "xkv stage %s layers [%d, %d): KV pool %lld blocks, %s, %lld tokens per layer if "
               "spread evenly over its %d layers (%s); weights %s, step scratch %s for "
               "--max-batched-tokens %lld\n",
               engine->device().c_str(), engine->layer_begin(), engine->layer_end(),
               static_cast<long long>(pool), GiB(pool * block_bytes).c_str(),
               static_cast<long long>(pool * 16 / layers), layers, from.c_str(),
               GiB(engine->weight_bytes()).c_str(), GiB(engine->scratch_bytes()).c_str(),
               static_cast<long long>(e.max_step_tokens));
  return std::unique_ptr<StageEngine>(std::move(engine));
}
#endif

}  // namespace

absl::StatusOr<int> ParseStageDevice(const std::string& device) {
  if (device.empty() || device == "cpu") return -1;
  if (device == "cuda") return 0;
  absl::StatusOr<int> ordinal = ParseCudaDevice(device);  // the one "cuda:N" parser
  if (ordinal.ok()) return ordinal;
  return absl::InvalidArgumentError(
      absl::StrCat("stage: device '", device, "' is not 'cpu' or 'cuda:N'"));
}

absl::StatusOr<std::unique_ptr<StageEngine>> LoadStageEngine(const StageOptions& options) {
  ASSIGN_OR_RETURN(const int device, ParseStageDevice(options.device));
#if !defined(XKV_WITH_CUDA)
  if (device >= 0) {
    return absl::UnimplementedError(absl::StrCat(
        "stage: device '", options.device, "' needs a CUDA build of xkv (this one is CPU-only)"));
  }
#endif
  ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> file, GgufFile::Open(options.model_path));
  ASSIGN_OR_RETURN(ModelConfig config, ReadModelConfig(*file));
#if defined(XKV_WITH_CUDA)
  if (device >= 0) return LoadCuda(options, device, *file, config);
#endif
  return LoadCpu(options, *file, config);
}

int64_t StageMaxBatchedTokens(const StageOptions& o, int64_t context_length) {
  if (o.max_batched_tokens > 0) return o.max_batched_tokens;
  return (context_length > 0 ? context_length : 8192) + 256;
}

StageOptions StageOptionsForEngine(const StageOptions& options, const StageEngine& engine) {
  StageOptions o = options;
  const int64_t pool = engine.kv_pool_blocks();
  const bool asked =
      !o.layer_capacity_blocks.empty() || o.kv_capacity_blocks > 0 || o.kv_capacity_bytes > 0;
  if (pool <= 0 || asked) return o;
  const int layers = engine.layer_end() - engine.layer_begin();
  const int64_t scratch =
      CudaScratchBlocks(layers, StageMaxBatchedTokens(o, engine.config().context_length),
                        CudaMaxSeqLen(engine.config()));
  o.kv_capacity_blocks = std::max<int64_t>(1, (pool - scratch) / layers);
  return o;
}

absl::Status CheckStageKvPool(const StageOptions& options) {
  ASSIGN_OR_RETURN(const int device, ParseStageDevice(options.device));
  if (device >= 0 || options.max_kv_bytes <= 0) return absl::OkStatus();
  ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> file, GgufFile::Open(options.model_path));
  ASSIGN_OR_RETURN(ModelConfig config, ReadModelConfig(*file));
  const int end = options.layer_end < 0 ? config.n_layers : options.layer_end;
  if (options.layer_begin < 0 || end <= options.layer_begin || end > config.n_layers) {
    return absl::OkStatus();  // the load refuses the range itself
  }
  const int64_t block_bytes =
      int64_t{options.block_tokens} * config.KvBytesPerTokenPerLayer(sizeof(float));
  return KvPoolCapacity(options, end - options.layer_begin, block_bytes).status();
}

}  // namespace xkv
