#include "model/layer_calibration.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/status_macros.h"

namespace xkv {
namespace {

using Json = nlohmann::json;

constexpr char kFormat[] = "xkv-layer-calibration";
constexpr size_t kTensorEdgeBytes = 256;

struct Fnv1a64 {
  uint64_t h = 0xcbf29ce484222325ull;
  void Add(const uint8_t* p, size_t n) {
    for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 0x100000001b3ull;
  }
};

// One error text for every bad field: the file, the field, the value and what is allowed.
absl::Status Bad(const std::string& path, absl::string_view field, absl::string_view value,
                 absl::string_view allowed) {
  return absl::InvalidArgumentError(
      absl::StrCat("calibration file ", path, ": ", field, " is ", value, "; allowed: ", allowed));
}

std::string Shown(const Json& v) { return v.dump(-1, ' ', false, Json::error_handler_t::replace); }

absl::StatusOr<int64_t> GetInt(const Json& j, const std::string& path, const char* field,
                               int64_t lo, int64_t hi) {
  const auto it = j.find(field);
  const std::string allowed = absl::StrCat("a whole number in [", lo, ", ", hi, "]");
  if (it == j.end()) return Bad(path, field, "missing", allowed);
  if (!it->is_number_integer() || it->get<int64_t>() < lo || it->get<int64_t>() > hi) {
    return Bad(path, field, Shown(*it), allowed);
  }
  return it->get<int64_t>();
}

absl::StatusOr<std::string> GetString(const Json& j, const std::string& path, const char* field) {
  const auto it = j.find(field);
  if (it == j.end()) return Bad(path, field, "missing", "a string");
  if (!it->is_string() || it->get<std::string>().empty()) {
    return Bad(path, field, Shown(*it), "a non-empty string");
  }
  return it->get<std::string>();
}

// A JSON number (non-finite values cannot be written as JSON numbers: a file with NaN holds null
// or a string there, which fails the type check).
absl::StatusOr<double> GetNumber(const Json& v, const std::string& path, const std::string& field,
                                 double lo, double hi, bool lo_open) {
  const std::string allowed =
      absl::StrCat("a finite number in ", lo_open ? "(" : "[", lo, ", ", hi, "]");
  if (!v.is_number()) return Bad(path, field, Shown(v), allowed);
  const double x = v.get<double>();
  if (!std::isfinite(x) || (lo_open ? x <= lo : x < lo) || x > hi) {
    return Bad(path, field, Shown(v), allowed);
  }
  return x;
}

absl::StatusOr<std::vector<double>> GetNumbers(const Json& j, const std::string& path,
                                               const char* field, double lo, double hi) {
  const auto it = j.find(field);
  if (it == j.end() || !it->is_array() || it->empty()) {
    return Bad(path, field, it == j.end() ? "missing" : Shown(*it),
               absl::StrCat("a non-empty array of numbers in [", lo, ", ", hi, "]"));
  }
  std::vector<double> out;
  for (size_t i = 0; i < it->size(); ++i) {
    ASSIGN_OR_RETURN(const double x,
                     GetNumber((*it)[i], path, absl::StrCat(field, "[", i, "]"), lo, hi, false));
    out.push_back(x);
  }
  return out;
}

absl::Status CheckSame(const std::string& path, absl::string_view field, const std::string& got,
                       const std::string& want) {
  if (got == want) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("calibration file ", path, " is for another model: model.", field, " is ", got,
                   "; this model's is ", want, " (run xkv calibrate --model on this model)"));
}

}  // namespace

absl::StatusOr<ModelFingerprint> FingerprintModel(const GgufFile& file, const ModelConfig& config) {
  ModelFingerprint f;
  f.architecture = config.architecture;
  f.layers = config.n_layers;
  f.kv_heads = config.n_kv_heads;
  f.head_dim = config.head_dim;
  f.vocab_size = config.vocab_size;
  f.file_bytes = file.file_size();
  Fnv1a64 hash;  // the header and the tensors' ends, read from the file's mapping
  const absl::Span<const uint8_t> header = file.HeaderBytes();
  hash.Add(header.data(), header.size());
  for (const GgufTensorInfo& t : file.tensors()) {
    const absl::Span<const uint8_t> data = file.TensorData(t);
    const size_t n = std::min(data.size(), kTensorEdgeBytes);
    hash.Add(data.data(), n);
    hash.Add(data.data() + data.size() - n, n);
  }
  f.hash = absl::StrFormat("fnv1a64:%016x", hash.h);
  return f;
}

std::string DefaultCalibrationPath(const std::string& model_path) {
  return model_path + ".xkv-calib.json";
}

std::vector<double> SensitivityWeights(absl::Span<const double> mean_kl) {
  const double mean =
      mean_kl.empty() ? 0.0 : std::accumulate(mean_kl.begin(), mean_kl.end(), 0.0) / mean_kl.size();
  std::vector<double> w(mean_kl.size(), 1.0);
  if (!(mean > 0.0) || !std::isfinite(mean)) return w;
  for (size_t l = 0; l < w.size(); ++l) {
    w[l] = std::clamp(mean_kl[l] / mean, kMinLayerWeight, kMaxLayerWeight);
  }
  return w;
}

std::string CalibrationJson(const LayerCalibration& c) {
  Json model = {{"architecture", c.model.architecture},
                {"layers", c.model.layers},
                {"kv_heads", c.model.kv_heads},
                {"head_dim", c.model.head_dim},
                {"vocab_size", c.model.vocab_size},
                {"file_bytes", c.model.file_bytes},
                {"hash", c.model.hash}};
  Json j = {{"format", kFormat},    {"version", kLayerCalibrationVersion},
            {"model", model},       {"fraction", c.fraction},
            {"prompts", c.prompts}, {"seed", c.seed},
            {"split", c.split},     {"fidelity_tokens", c.fidelity_tokens},
            {"mean_kl", c.mean_kl}, {"weights", c.weights}};
  if (!c.head_weights.empty()) {
    j["head_mean_kl"] = c.head_mean_kl;
    j["head_weights"] = c.head_weights;
  }
  return j.dump(2) + "\n";
}

absl::Status WriteCalibration(const std::string& path, const LayerCalibration& c) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << CalibrationJson(c);
    if (!out.flush()) return absl::InternalError(absl::StrCat("cannot write ", tmp));
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot write ", path, ": ", ec.message()));
  return absl::OkStatus();
}

absl::StatusOr<LayerCalibration> ParseCalibration(const std::string& text,
                                                  const std::string& path) {
  const Json j = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "calibration file ", path, " is not a JSON object (corrupt? write it with xkv calibrate)"));
  }
  ASSIGN_OR_RETURN(const std::string format, GetString(j, path, "format"));
  if (format != kFormat) return Bad(path, "format", Shown(format), Shown(kFormat));
  ASSIGN_OR_RETURN(const int64_t version, GetInt(j, path, "version", 0, INT32_MAX));
  if (version != kLayerCalibrationVersion) {
    return Bad(path, "version", absl::StrCat(version), absl::StrCat(kLayerCalibrationVersion));
  }
  const auto model = j.find("model");
  if (model == j.end() || !model->is_object()) {
    return Bad(path, "model", model == j.end() ? "missing" : Shown(*model),
               "an object (the model's fingerprint)");
  }
  LayerCalibration c;
  ModelFingerprint& m = c.model;
  ASSIGN_OR_RETURN(m.architecture, GetString(*model, path, "architecture"));
  ASSIGN_OR_RETURN(m.layers, GetInt(*model, path, "layers", 1, 4096));
  ASSIGN_OR_RETURN(m.kv_heads, GetInt(*model, path, "kv_heads", 1, 4096));
  ASSIGN_OR_RETURN(m.head_dim, GetInt(*model, path, "head_dim", 1, 65536));
  ASSIGN_OR_RETURN(m.vocab_size, GetInt(*model, path, "vocab_size", 1, INT32_MAX));
  ASSIGN_OR_RETURN(m.file_bytes, GetInt(*model, path, "file_bytes", 1, INT64_MAX));
  ASSIGN_OR_RETURN(m.hash, GetString(*model, path, "hash"));
  const auto fraction = j.find("fraction");
  ASSIGN_OR_RETURN(c.fraction, GetNumber(fraction == j.end() ? Json() : *fraction, path, "fraction",
                                         0.0, 1.0, /*lo_open=*/true));
  ASSIGN_OR_RETURN(c.prompts, GetInt(j, path, "prompts", 1, INT32_MAX));
  ASSIGN_OR_RETURN(c.seed, GetInt(j, path, "seed", INT64_MIN, INT64_MAX));
  ASSIGN_OR_RETURN(c.split, GetString(j, path, "split"));
  ASSIGN_OR_RETURN(c.fidelity_tokens, GetInt(j, path, "fidelity_tokens", 1, INT32_MAX));
  ASSIGN_OR_RETURN(c.mean_kl, GetNumbers(j, path, "mean_kl", 0.0, 1e9));
  ASSIGN_OR_RETURN(c.weights, GetNumbers(j, path, "weights", kMinLayerWeight, kMaxLayerWeight));
  for (const auto& [field, n] :
       {std::pair{"weights", c.weights.size()}, std::pair{"mean_kl", c.mean_kl.size()}}) {
    if (n != static_cast<size_t>(m.layers)) {
      return Bad(path, absl::StrCat("the length of ", field), absl::StrCat(n),
                 absl::StrCat(m.layers, " (model.layers)"));
    }
  }
  if (j.contains("head_weights") || j.contains("head_mean_kl")) {
    ASSIGN_OR_RETURN(c.head_mean_kl, GetNumbers(j, path, "head_mean_kl", 0.0, 1e9));
    ASSIGN_OR_RETURN(c.head_weights,
                     GetNumbers(j, path, "head_weights", kMinLayerWeight, kMaxLayerWeight));
    const size_t heads = static_cast<size_t>(m.layers) * static_cast<size_t>(m.kv_heads);
    for (const auto& [field, n] : {std::pair{"head_weights", c.head_weights.size()},
                                   std::pair{"head_mean_kl", c.head_mean_kl.size()}}) {
      if (n != heads) {
        return Bad(path, absl::StrCat("the length of ", field), absl::StrCat(n),
                   absl::StrCat(heads, " (model.layers x model.kv_heads)"));
      }
    }
  }
  return c;
}

absl::StatusOr<LayerCalibration> LoadCalibration(const std::string& path,
                                                 const ModelFingerprint& model) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::InvalidArgumentError(
        absl::StrCat("calibration file ", path, " cannot be read (write it with xkv calibrate)"));
  }
  std::stringstream text;
  text << in.rdbuf();
  ASSIGN_OR_RETURN(LayerCalibration c, ParseCalibration(text.str(), path));
  const ModelFingerprint& f = c.model;
  RETURN_IF_ERROR(CheckSame(path, "architecture", f.architecture, model.architecture));
  RETURN_IF_ERROR(CheckSame(path, "layers", absl::StrCat(f.layers), absl::StrCat(model.layers)));
  RETURN_IF_ERROR(
      CheckSame(path, "kv_heads", absl::StrCat(f.kv_heads), absl::StrCat(model.kv_heads)));
  RETURN_IF_ERROR(
      CheckSame(path, "head_dim", absl::StrCat(f.head_dim), absl::StrCat(model.head_dim)));
  RETURN_IF_ERROR(
      CheckSame(path, "vocab_size", absl::StrCat(f.vocab_size), absl::StrCat(model.vocab_size)));
  RETURN_IF_ERROR(
      CheckSame(path, "file_bytes", absl::StrCat(f.file_bytes), absl::StrCat(model.file_bytes)));
  RETURN_IF_ERROR(CheckSame(path, "hash", f.hash, model.hash));
  return c;
}

absl::StatusOr<CalibrationWeights> LoadWeightsForModel(const std::string& calibration_path,
                                                       const std::string& model_path) {
  ASSIGN_OR_RETURN(const std::unique_ptr<GgufFile> file, GgufFile::Open(model_path));
  ASSIGN_OR_RETURN(const ModelConfig config, ReadModelConfig(*file));
  ASSIGN_OR_RETURN(const ModelFingerprint model, FingerprintModel(*file, config));
  ASSIGN_OR_RETURN(LayerCalibration c, LoadCalibration(calibration_path, model));
  return CalibrationWeights{std::move(c.weights), std::move(c.head_weights)};
}

}  // namespace xkv
