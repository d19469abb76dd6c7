#include "model/arch/arch.h"

#include <array>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace xkv {
namespace {

// Every supported architecture, in the order error messages list them.
std::array<const ArchSpec*, 3> Registry() { return {&LlamaArch(), &Qwen2Arch(), &Qwen3Arch()}; }

// The tensors of the shared Llama block (model/llama_weights.cc).
constexpr const char* kLayerTensors[] = {
    "attn_norm.weight", "attn_q.weight",   "attn_k.weight", "attn_v.weight",   "attn_output.weight",
    "ffn_norm.weight",  "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight",
};
constexpr const char* kGlobalTensors[] = {"token_embd.weight", "output_norm.weight",
                                          "output.weight"};

std::string Dims(const std::vector<int64_t>& dims) {
  return absl::StrCat("[", absl::StrJoin(dims, ","), "]");
}

absl::Status TensorError(const GgufFile& file, absl::string_view tensor,
                         absl::string_view problem) {
  return absl::InvalidArgumentError(
      absl::StrCat(file.path(), ": tensor '", tensor, "': ", problem));
}

}  // namespace

absl::StatusOr<const ArchSpec*> FindArch(absl::string_view name) {
  for (const ArchSpec* spec : Registry()) {
    if (spec->name == name) return spec;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("'general.architecture': unsupported architecture '", name,
                   "' (supported: ", SupportedArchNames(), ")"));
}

std::string SupportedArchNames() {
  std::vector<absl::string_view> names;
  for (const ArchSpec* spec : Registry()) names.push_back(spec->name);
  return absl::StrJoin(names, ", ");
}

int64_t ArchTensorElements(ArchTensorShape shape, const ModelConfig& c) {
  switch (shape) {
    case ArchTensorShape::kQDim:
      return int64_t{c.n_heads} * c.head_dim;
    case ArchTensorShape::kKvDim:
      return int64_t{c.n_kv_heads} * c.head_dim;
    case ArchTensorShape::kHeadDim:
      return c.head_dim;
    case ArchTensorShape::kHalfRope:
      return c.rope_dims / 2;
  }
  return 0;
}

std::string ArchTensorName(const ArchTensor& t, int layer) {
  return t.per_layer ? absl::StrCat("blk.", layer, ".", t.name) : std::string(t.name);
}

absl::Status ReadArchTensors(const GgufFile& file, const ArchSpec& arch, ModelConfig& c) {
  absl::flat_hash_set<std::string> known(std::begin(kGlobalTensors), std::end(kGlobalTensors));
  for (int l = 0; l < c.n_layers; ++l) {
    for (const char* t : kLayerTensors) known.insert(absl::StrCat("blk.", l, ".", t));
  }
  // A hook is on when any of its tensors is in the file; then all of them must be.
  absl::flat_hash_set<ArchHook> on;
  for (const ArchTensor& t : arch.extra_tensors) {
    const int layers = t.per_layer ? c.n_layers : 1;
    for (int l = 0; l < layers; ++l) {
      const std::string name = ArchTensorName(t, l);
      known.insert(name);
      if (t.required || file.FindTensor(name) != nullptr) on.insert(t.hook);
    }
  }
  for (const ArchTensor& t : arch.extra_tensors) {
    if (!on.contains(t.hook)) continue;
    const int64_t want = ArchTensorElements(t.shape, c);
    const int layers = t.per_layer ? c.n_layers : 1;
    for (int l = 0; l < layers; ++l) {
      const std::string name = ArchTensorName(t, l);
      const GgufTensorInfo* info = file.FindTensor(name);
      if (info == nullptr) {
        return TensorError(file, name, absl::StrCat("missing (architecture ", arch.name, ")"));
      }
      if (info->dims.size() != 1 || info->dims[0] != want) {
        return TensorError(file, name,
                           absl::StrCat("has dims ", Dims(info->dims), ", want [", want, "]"));
      }
    }
  }
  for (const GgufTensorInfo& info : file.tensors()) {
    if (!known.contains(info.name)) {
      return TensorError(file, info.name,
                         absl::StrCat("not used by architecture ", arch.name,
                                      " (unsupported; it would be ignored)"));
    }
  }
  c.qkv_bias = on.contains(ArchHook::kQkvBias);
  c.qk_norm = on.contains(ArchHook::kQkNorm);
  c.rope_freqs = on.contains(ArchHook::kRopeFreqs);
  return absl::OkStatus();
}

}  // namespace xkv
