// A real model ready to run in one process: the mapped GGUF, its config, tokenizer and the CPU
// engine over all layers. Used by the CLI, benchmarks and the evaluation harness.
#ifndef XKV_MODEL_LOADED_MODEL_H_
#define XKV_MODEL_LOADED_MODEL_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "model/gguf.h"
#include "model/llama_model.h"
#include "model/model_config.h"
#include "model/tokenizer.h"

namespace xkv {

struct LoadedModel {
  std::unique_ptr<GgufFile> file;
  ModelConfig config;
  std::unique_ptr<Tokenizer> tokenizer;
  std::unique_ptr<LlamaModel> model;
  double load_seconds = 0;
};

// Opens `path`, reads the config and tokenizer, dequantizes every layer and builds the engine with
// `num_threads` threads (<= 0: all hardware threads). kGgml numerics by default: llama.cpp's
// logits and text on the same file (bit-exact for Q4_1 / Q8_0 Llama files; llama_model.h).
absl::StatusOr<LoadedModel> LoadModel(const std::string& path, int num_threads,
                                      Numerics numerics = Numerics::kGgml);

}  // namespace xkv

#endif  // XKV_MODEL_LOADED_MODEL_H_
