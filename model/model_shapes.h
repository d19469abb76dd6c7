// Configs of real model shapes for random-weight models (benchmarks and tests of the CUDA engine:
// CudaLlamaModel::CreateRandom): performance work where weight values do not matter.
#ifndef XKV_MODEL_MODEL_SHAPES_H_
#define XKV_MODEL_MODEL_SHAPES_H_

#include <string_view>

#include "absl/status/statusor.h"
#include "model/model_config.h"

namespace xkv {

// Llama-3-8B: 32 layers, hidden 4096, 32 / 8 heads x 128, FFN 14336, vocab 128256, RoPE base 5e5
// (GGUF "llama" style), RMS eps 1e-5, untied head.
ModelConfig Llama3_8BShape();

// Llama-3.2-1B: 16 layers, hidden 2048, 32 / 8 heads x 64, FFN 8192, vocab 128256, RoPE base 5e5,
// RMS eps 1e-5, head tied to the embedding (its rope frequency scaling is not modelled).
ModelConfig Llama32_1BShape();

// "llama3-8b" or "llama3.2-1b"; INVALID_ARGUMENT naming the known shapes otherwise.
absl::StatusOr<ModelConfig> ShapeByName(std::string_view name);

}  // namespace xkv

#endif  // XKV_MODEL_MODEL_SHAPES_H_
