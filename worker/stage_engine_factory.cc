#include "worker/stage_engine_factory.h"

#include <algorithm>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "model/cpu_stage_engine.h"
#include "model/gguf.h"
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

#if defined(XKV_WITH_CUDA)
// Blocks the CUDA engine holds for a moment beyond what the stage's BlockPool accounts: a
// scores-only mini-prefill writes the K/V of its whole batch in every layer and frees them at the
// step's end (every sequence's last block partly filled: at most max_step_tokens / 16 + max_batch
// blocks per layer), and a compaction copies one layer's kept slots into fresh blocks before it
// frees the old ones (at most one table, max_seq_len / 16 blocks). The two never overlap.
int64_t CudaScratchBlocks(const CudaEngineOptions& e, int layers) {
  const int64_t block = 16;
  const int64_t profile = int64_t{layers} * ((e.max_step_tokens + block - 1) / block + e.max_batch);
  const int64_t compaction = (e.max_seq_len + block - 1) / block;
  return std::max(profile, compaction);
}

// The physical pool: exactly the stage's BlockPool capacity (KvPoolCapacity, the one ledger of
// architecture.md §5, at bf16) plus the scratch above.
absl::StatusOr<std::unique_ptr<StageEngine>> LoadCuda(const StageOptions& o, int device,
                                                      const GgufFile& file,
                                                      const ModelConfig& config) {
  if (o.block_tokens != 16) {
    return absl::InvalidArgumentError("stage: a cuda stage needs block_tokens 16");
  }
  CudaEngineOptions e;
  e.device = device;
  e.layer_begin = o.layer_begin;
  e.layer_end = o.layer_end;
  // Any batch the coordinator may schedule (its --max-batch, up to 256) and one whole prompt
  // (a mini-prefill is never split) plus a decode token of every other sequence per step.
  e.max_batch = 256;
  e.max_seq_len = config.context_length > 0 ? config.context_length : 8192;
  e.max_step_tokens = e.max_seq_len + e.max_batch;
  const int layers = (o.layer_end < 0 ? config.n_layers : o.layer_end) - o.layer_begin;
  ASSIGN_OR_RETURN(const int64_t capacity,
                   KvPoolCapacity(o, layers, 16 * config.KvBytesPerTokenPerLayer(2)));
  e.num_kv_blocks = capacity + CudaScratchBlocks(e, layers);
  ASSIGN_OR_RETURN(std::unique_ptr<CudaLlamaModel> engine, CudaLlamaModel::Load(file, e));
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
