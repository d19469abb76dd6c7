// libFuzzer target for the GGUF reader: parses arbitrary bytes with GgufFile::FromBuffer and, on
// success, reads the model config, every metadata accessor and every (small) tensor.
// Built and run by scripts/run-fuzz. With XKV_FUZZ_WRITE_SEEDS=DIR set, the binary instead writes
// a seed corpus of small valid GGUF files into DIR and exits.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "model/gguf.h"
#include "model/model_config.h"
#include "model/synthetic_model.h"

namespace {

void TouchValue(const xkv::GgufValue& v) {
  (void)v.AsInt();
  (void)v.AsFloat();
  (void)v.AsString();
  (void)v.AsBool();
  if (auto a = v.AsArray(); a.ok()) {
    for (const xkv::GgufValue& e : (*a)->elements) TouchValue(e);
  }
}

bool WriteBytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return false;
  const bool ok = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
  return std::fclose(f) == 0 && ok;
}

// Small valid files: synthetic llama models of every weight type and a metadata-only file.
int WriteSeeds(const std::string& dir) {
  int written = 0;
  const xkv::GgmlType types[] = {xkv::GgmlType::kF32,  xkv::GgmlType::kF16,  xkv::GgmlType::kBF16,
                                 xkv::GgmlType::kQ8_0, xkv::GgmlType::kQ4_0, xkv::GgmlType::kQ4_1};
  for (xkv::GgmlType t : types) {
    xkv::SyntheticModelOptions o;
    o.n_layers = 1;
    o.hidden = 32;
    o.ffn = 32;
    o.n_heads = 2;
    o.n_kv_heads = 1;
    o.vocab_size = xkv::MinSyntheticVocab();
    o.weight_type = t;
    o.tied_embeddings = t != xkv::GgmlType::kF32;
    auto bytes = xkv::WriteSyntheticModelToBuffer(o);
    if (!bytes.ok()) return 1;
    written +=
        WriteBytes(dir + "/synthetic_" + std::to_string(static_cast<int>(t)) + ".gguf", *bytes);
  }
  xkv::GgufWriter w;
  w.SetMetadata("general.alignment", xkv::GgufValue::Uint32(64));
  w.SetMetadata("a.i8", xkv::GgufValue::Int8(-1));
  w.SetMetadata("a.u16", xkv::GgufValue::Uint16(7));
  w.SetMetadata("a.i64", xkv::GgufValue::Int64(-9));
  w.SetMetadata("a.f64", xkv::GgufValue::Float64(0.5));
  w.SetMetadata("a.nested",
                xkv::GgufValue::Array(xkv::GgufValueType::kArray,
                                      {xkv::GgufValue::StringArray({"x", "yz"}),
                                       xkv::GgufValue::Array(xkv::GgufValueType::kBool,
                                                             {xkv::GgufValue::Bool(true)})}));
  w.AddTensor("t", {32, 2}, xkv::GgmlType::kQ4_1, std::vector<float>(64, 0.25f));
  std::vector<float> ramp(256);  // one super-block of each K-quant
  for (int i = 0; i < 256; ++i) ramp[i] = static_cast<float>(i % 37 - 18) / 16;
  for (xkv::GgmlType k : {xkv::GgmlType::kQ2_K, xkv::GgmlType::kQ3_K, xkv::GgmlType::kQ4_K,
                          xkv::GgmlType::kQ5_K, xkv::GgmlType::kQ6_K}) {
    w.AddTensor("k" + std::to_string(static_cast<int>(k)), {256}, k, ramp);
  }
  auto bytes = w.WriteBuffer();
  if (!bytes.ok()) return 1;
  written += WriteBytes(dir + "/metadata.gguf", *bytes);
  std::fprintf(stderr, "wrote %d seed files to %s\n", written, dir.c_str());
  return written == 7 ? 0 : 1;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  if (const char* dir = std::getenv("XKV_FUZZ_WRITE_SEEDS")) std::exit(WriteSeeds(dir));
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto file = xkv::GgufFile::FromBuffer(absl::MakeConstSpan(data, size));
  if (!file.ok()) return 0;
  (void)xkv::ReadModelConfig(**file);
  for (const auto& [key, value] : (*file)->metadata()) {
    TouchValue(value);
    (void)(*file)->Find(key);
  }
  for (const xkv::GgufTensorInfo& t : (*file)->tensors()) {
    if ((*file)->FindTensor(t.name) != &t) std::abort();  // index must agree with the list
    if (t.NumElements() <= (1 << 20)) (void)(*file)->ReadTensorF32(t.name);
  }
  return 0;
}
