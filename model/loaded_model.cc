#include "model/loaded_model.h"

#include <chrono>
#include <thread>

#include "base/status_macros.h"
#include "model/llama_weights.h"

namespace xkv {

absl::StatusOr<LoadedModel> LoadModel(const std::string& path, int num_threads, Numerics numerics) {
  const auto start = std::chrono::steady_clock::now();
  LoadedModel out;
  ASSIGN_OR_RETURN(out.file, GgufFile::Open(path));
  ASSIGN_OR_RETURN(out.config, ReadModelConfig(*out.file));
  ASSIGN_OR_RETURN(out.tokenizer, Tokenizer::FromGguf(*out.file));
  LlamaWeightsOptions weight_options;
  // kGgml's bit-exact path reads the ggml blocks only: no fp32 copies of those matrices.
  weight_options.keep_blocks = numerics == Numerics::kGgml;
  weight_options.blocks_only = numerics == Numerics::kGgml;
  ASSIGN_OR_RETURN(LlamaWeights weights, LoadLlamaWeights(*out.file, out.config, weight_options));
  LlamaModelOptions options;
  options.numerics = numerics;
  options.num_threads = num_threads > 0
                            ? num_threads
                            : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  ASSIGN_OR_RETURN(
      out.model,
      LlamaModel::Create(std::make_shared<const LlamaWeights>(std::move(weights)), options));
  out.load_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return out;
}

}  // namespace xkv
