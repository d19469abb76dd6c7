// `xkv bench model`: writes a random-weight GGUF of a real model's shape (model/synthetic_model.h)
// for serving and memory benchmarks at scales no test downloads, e.g. Llama-3-8B on a GPU host.
#include <cstdio>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "kernels/ggml_types.h"
#include "model/synthetic_model.h"
#include "tools/flag_set.h"

namespace xkv {
namespace {

constexpr GgmlType kWeightTypes[] = {GgmlType::kF32,  GgmlType::kF16,  GgmlType::kBF16,
                                     GgmlType::kQ4_0, GgmlType::kQ4_1, GgmlType::kQ8_0,
                                     GgmlType::kQ4_K, GgmlType::kQ5_K, GgmlType::kQ6_K};

absl::StatusOr<GgmlType> ParseWeightType(const std::string& name) {
  std::string names;
  for (GgmlType t : kWeightTypes) {
    const std::string_view n = GetGgmlTypeTraits(static_cast<uint32_t>(t))->name;
    if (absl::EqualsIgnoreCase(std::string(n), name)) return t;
    absl::StrAppend(&names, names.empty() ? "" : ", ", absl::AsciiStrToLower(std::string(n)));
  }
  return absl::InvalidArgumentError(absl::StrCat("--type '", name, "' is not one of ", names));
}

absl::StatusOr<SyntheticModelOptions> ShapeOptions(const std::string& shape) {
  if (shape == "llama3-8b") return SyntheticModelOptions::Llama3_8B();
  if (shape == "llama3.2-1b") return SyntheticModelOptions::Llama32_1B();
  if (shape == "tiny") return SyntheticModelOptions::Tiny();
  return absl::InvalidArgumentError(
      absl::StrCat("--shape '", shape, "' is not one of llama3-8b, llama3.2-1b, tiny"));
}

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "xkv bench model: %s\n", std::string(s.message()).c_str());
  return 2;
}

}  // namespace

int RunBenchModel(int argc, char** argv) {
  std::string shape = "llama3-8b", type = "q4_0", out;
  int64_t context = 0, seed = 1;
  FlagSet flags("bench model",
                "Writes a random-weight GGUF of a real model's shape (tensor names, shapes and "
                "metadata of llama.cpp's\nconversions; a small byte-level tokenizer) for serving "
                "and memory benchmarks.");
  flags.String("shape", &shape, "llama3-8b, llama3.2-1b or tiny");
  flags.String("type", &type, "type of the 2-D weights (norms stay f32)");
  flags.Int("context", &context, "context length in the metadata; 0 keeps the shape's own");
  flags.Int("seed", &seed, "weights' random seed");
  flags.String("out", &out, "GGUF file to write (required)");
  if (auto code = flags.ParseOrExitCode(argc, argv, 3)) return *code;
  if (out.empty()) return Fail(absl::InvalidArgumentError("--out is required"));
  absl::StatusOr<SyntheticModelOptions> o = ShapeOptions(shape);
  if (!o.ok()) return Fail(o.status());
  absl::StatusOr<GgmlType> t = ParseWeightType(type);
  if (!t.ok()) return Fail(t.status());
  if (context < 0 || context > (int64_t{1} << 24)) {
    return Fail(absl::InvalidArgumentError("--context must be in [0, 16777216]"));
  }
  o->weight_type = *t;
  if (context > 0) o->context_length = static_cast<int>(context);
  o->seed = static_cast<uint64_t>(seed);
  if (absl::Status s = WriteSyntheticModel(*o, out); !s.ok()) return Fail(s);
  std::fprintf(stderr, "xkv bench model: wrote %s (%s, %d layers, hidden %d, %s weights)\n",
               out.c_str(), o->name.c_str(), o->n_layers, o->hidden,
               std::string(GetGgmlTypeTraits(static_cast<uint32_t>(*t))->name).c_str());
  return 0;
}

}  // namespace xkv
