// What each supported GGUF architecture changes in the shared Llama block (model/llama_model.cc,
// model/cuda/cuda_llama_step.cc), in the spirit of llama.cpp's src/models/<arch>.cpp: one file per
// architecture (llama.cc, qwen2.cc, qwen3.cc) declares its RoPE pairing and its tensors beyond the
// Llama ones; the engines run the hooks those tensors switch on:
//   attn_{q,k,v}.bias        added to Q, K, V right after the QKV matmul (qwen2)
//   attn_{q,k}_norm.weight   RMSNorm over each head of Q and K, before RoPE (qwen3)
//   rope_freqs.weight        per-dimension divisors of the RoPE frequencies (llama 3.1 scaling)
// To add an architecture: a file here defining its ArchSpec, one line in arch.cc's registry.
#ifndef XKV_MODEL_ARCH_ARCH_H_
#define XKV_MODEL_ARCH_ARCH_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "model/gguf.h"
#include "model/model_config.h"

namespace xkv {

// Shapes the optional tensors take, from the config.
enum class ArchTensorShape {
  kQDim,     // [n_heads * head_dim]
  kKvDim,    // [n_kv_heads * head_dim]
  kHeadDim,  // [head_dim]
  kHalfRope  // [rope_dims / 2]
};

// The engine hook a tensor feeds.
enum class ArchHook { kQkvBias, kQkNorm, kRopeFreqs };

// One tensor an architecture adds to the Llama set. `name` is the suffix after "blk.N." for
// per-layer tensors, the whole name otherwise.
struct ArchTensor {
  absl::string_view name;
  ArchTensorShape shape;
  ArchHook hook;
  bool per_layer = true;
  bool required = true;  // false: used when present (then all of the hook's tensors, every layer)
};

struct ArchSpec {
  absl::string_view name;  // general.architecture
  RopeStyle rope_style = RopeStyle::kNorm;
  std::vector<ArchTensor> extra_tensors;
};

const ArchSpec& LlamaArch();
const ArchSpec& Qwen2Arch();
const ArchSpec& Qwen3Arch();

// The spec of `name`; INVALID_ARGUMENT naming general.architecture, the value and the supported
// ones otherwise.
absl::StatusOr<const ArchSpec*> FindArch(absl::string_view name);
// "llama, qwen2, qwen3".
std::string SupportedArchNames();

// Element count of `shape` for `c`.
int64_t ArchTensorElements(ArchTensorShape shape, const ModelConfig& c);
// "blk.<layer>.<name>" for per-layer tensors, `name` otherwise.
std::string ArchTensorName(const ArchTensor& t, int layer);

// Which hooks the file's tensors switch on (ModelConfig::qkv_bias, qk_norm, rope_freqs): a
// required tensor missing or any extra tensor of the wrong shape is INVALID_ARGUMENT naming the
// tensor; so is a tensor the architecture does not use (it would be silently ignored).
absl::Status ReadArchTensors(const GgufFile& file, const ArchSpec& arch, ModelConfig& c);

}  // namespace xkv

#endif  // XKV_MODEL_ARCH_ARCH_H_
