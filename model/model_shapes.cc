#include "model/model_shapes.h"

#include <string>

#include "absl/strings/str_cat.h"

namespace xkv {
namespace {

ModelConfig Llama3Family() {
  ModelConfig c;
  c.architecture = "llama";
  c.n_heads = 32;
  c.n_kv_heads = 8;
  c.rope_base = 500000.f;
  c.rope_style = RopeStyle::kNorm;
  c.norm_eps = 1e-5f;
  c.context_length = 32768;
  c.vocab_size = 128256;
  c.bos_token = 128000;
  c.eos_token = 128001;
  return c;
}

}  // namespace

ModelConfig Llama3_8BShape() {
  ModelConfig c = Llama3Family();
  c.name = "Llama-3-8B shape";
  c.n_layers = 32;
  c.hidden = 4096;
  c.ffn = 14336;
  c.head_dim = 128;
  c.rope_dims = 128;
  c.tied_embeddings = false;
  return c;
}

ModelConfig Llama32_1BShape() {
  ModelConfig c = Llama3Family();
  c.name = "Llama-3.2-1B shape";
  c.n_layers = 16;
  c.hidden = 2048;
  c.ffn = 8192;
  c.head_dim = 64;
  c.rope_dims = 64;
  c.tied_embeddings = true;
  return c;
}

absl::StatusOr<ModelConfig> ShapeByName(std::string_view name) {
  if (name == "llama3-8b") return Llama3_8BShape();
  if (name == "llama3.2-1b") return Llama32_1BShape();
  return absl::InvalidArgumentError(absl::StrCat("unknown model shape '", std::string(name),
                                                 "' (known: llama3-8b, llama3.2-1b)"));
}

}  // namespace xkv
