// Per-model layer sensitivity weights (LU-KV / BaKlaVa style calibration,
// docs/quality-calibration.md): the file `xkv calibrate` writes beside a model
// (<model>.xkv-calib.json) and the one place that reads and validates it. The weights w_l (mean 1)
// multiply each layer's raw score curve in xkv's global allocator (AllocatorParams::layer_weights).
//
// The file (JSON, one object):
//   {"format": "xkv-layer-calibration", "version": 1,
//    "model": {"architecture": "llama", "layers": 30, "kv_heads": 3, "head_dim": 64,
//              "vocab_size": 49152, "file_bytes": 93928960, "hash": "fnv1a64:0123456789abcdef"},
//    "fraction": 0.1, "prompts": 8, "seed": 1, "split": "dev", "fidelity_tokens": 32,
//    "mean_kl": [...L], "weights": [...L],
//    "head_mean_kl": [...L*H], "head_weights": [...L*H]}      (optional: `xkv calibrate --heads 1`)
// The head arrays are layer-major (head h of layer l at l * H + h): allocator `heads`'s shares
// (AllocatorParams::head_weights, docs/quality-heads.md).
// A file for another model, of another version, or with a bad value is an INVALID_ARGUMENT naming
// the file, the field, the value and what is allowed; nothing is applied then.
#ifndef XKV_MODEL_LAYER_CALIBRATION_H_
#define XKV_MODEL_LAYER_CALIBRATION_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "model/gguf.h"
#include "model/model_config.h"

namespace xkv {

inline constexpr int kLayerCalibrationVersion = 1;
// The smallest weight a file may hold (and the floor `xkv calibrate` applies): a layer that costs
// nothing measurable still keeps a non-zero share of the one threshold.
inline constexpr double kMinLayerWeight = 0.01;
inline constexpr double kMaxLayerWeight = 1000.0;

// What identifies a model's weights. The shapes catch another model; `hash` catches other weights
// of the same shapes (a fine-tune, another quantization): FNV-1a 64 over the GGUF's whole header
// (metadata and tensor infos, [0, data_offset)) and the first and last 256 bytes of every tensor's
// data. A fine-tune or requantization changes every tensor, so this catches it while reading about
// 0.5 KiB per tensor (the file is mapped, not read whole); file_bytes is a second cheap check.
struct ModelFingerprint {
  std::string architecture;
  int layers = 0;
  int kv_heads = 0;
  int head_dim = 0;
  int vocab_size = 0;
  uint64_t file_bytes = 0;
  std::string hash;  // "fnv1a64:<16 hex digits>"
};

absl::StatusOr<ModelFingerprint> FingerprintModel(const GgufFile& file, const ModelConfig& config);

struct LayerCalibration {
  ModelFingerprint model;
  double fraction = 0.1;  // the kept fraction of the one compressed layer
  int prompts = 0;        // dev prompts measured
  int64_t seed = 1;       // the suite seed
  std::string split = "dev";
  int fidelity_tokens = 0;      // teacher-forced continuation steps per prompt
  std::vector<double> mean_kl;  // [L] nats: mean KL to the full cache, layer l compressed alone
  std::vector<double> weights;  // [L] w_l, mean 1, each in [kMinLayerWeight, kMaxLayerWeight]
  // [L * H] or empty: the KL of one KV head kept as sinks + recent alone (bench/
  // layer_sensitivity.h MeasureHeadSensitivity) and its weights (mean 1, same range).
  std::vector<double> head_mean_kl;
  std::vector<double> head_weights;
};

// What a calibration gives the allocator: AllocatorParams::layer_weights and head_weights.
struct CalibrationWeights {
  std::vector<double> layers;  // [L]
  std::vector<double> heads;   // [L * H] or empty (the file has no head weights)
};

// "<model path>.xkv-calib.json".
std::string DefaultCalibrationPath(const std::string& model_path);

// w_l = mean_kl_l / mean over layers, floored at kMinLayerWeight (all zero: all 1).
std::vector<double> SensitivityWeights(absl::Span<const double> mean_kl);

std::string CalibrationJson(const LayerCalibration& calibration);
absl::Status WriteCalibration(const std::string& path, const LayerCalibration& calibration);

// Parses and checks a file's text (`path` only names it in errors): format, version, every field's
// type and range, weights and mean_kl of the model's layer count. INVALID_ARGUMENT otherwise.
absl::StatusOr<LayerCalibration> ParseCalibration(const std::string& text, const std::string& path);
// Reads `path` and checks it against `model` (every fingerprint field, then the layer count).
absl::StatusOr<LayerCalibration> LoadCalibration(const std::string& path,
                                                 const ModelFingerprint& model);
// The CLI's one call: the weights of `calibration_path` for the GGUF at `model_path`.
absl::StatusOr<CalibrationWeights> LoadWeightsForModel(const std::string& calibration_path,
                                                       const std::string& model_path);

}  // namespace xkv

#endif  // XKV_MODEL_LAYER_CALIBRATION_H_
