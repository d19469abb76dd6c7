// The calibration file beside a model (model/layer_calibration.h): round trip, the fingerprint,
// and one clear INVALID_ARGUMENT per bad file.
#include "model/layer_calibration.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "model/synthetic_model.h"

namespace xkv {
namespace {

using Json = nlohmann::json;

// The fingerprint of a tiny synthetic model written with `seed` (its weights; same shapes).
ModelFingerprint TinyFingerprint(uint64_t seed, std::string* path) {
  SyntheticModelOptions o = SyntheticModelOptions::Tiny();
  o.seed = seed;
  *path = ::testing::TempDir() + "/xkv_calib_tiny_" + std::to_string(seed) + ".gguf";
  EXPECT_TRUE(WriteSyntheticModel(o, *path).ok());
  auto file = GgufFile::Open(*path);
  EXPECT_TRUE(file.ok()) << file.status();
  auto config = ReadModelConfig(**file);
  EXPECT_TRUE(config.ok()) << config.status();
  auto f = FingerprintModel(**file, *config);
  EXPECT_TRUE(f.ok()) << f.status();
  return *f;
}

LayerCalibration Sample(const ModelFingerprint& model) {
  LayerCalibration c;
  c.model = model;
  c.fraction = 0.1;
  c.prompts = 4;
  c.seed = 3;
  c.fidelity_tokens = 16;
  c.mean_kl.assign(model.layers, 0.0);
  std::iota(c.mean_kl.begin(), c.mean_kl.end(), 1.0);
  c.weights = SensitivityWeights(c.mean_kl);
  return c;
}

std::string WriteText(const std::string& name, const std::string& text) {
  const std::string path = ::testing::TempDir() + "/" + name;
  std::ofstream(path, std::ios::trunc) << text;
  return path;
}

class LayerCalibrationTest : public ::testing::Test {
 protected:
  void SetUp() override { model_ = TinyFingerprint(1, &model_path_); }
  void TearDown() override { std::filesystem::remove(model_path_); }
  // The error of loading `j` (a valid file's JSON, edited) for this model.
  absl::Status LoadEdited(const Json& j) {
    const std::string path = WriteText("xkv_calib_edited.json", j.dump());
    return LoadCalibration(path, model_).status();
  }
  Json Valid() const { return Json::parse(CalibrationJson(Sample(model_))); }

  ModelFingerprint model_;
  std::string model_path_;
};

void ExpectError(const absl::Status& s, const std::string& want) {
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find(want), std::string::npos) << s;
}

TEST_F(LayerCalibrationTest, FingerprintSeesShapesAndWeights) {
  EXPECT_EQ(model_.layers, 2);
  EXPECT_EQ(model_.architecture, "llama");
  EXPECT_EQ(model_.hash.rfind("fnv1a64:", 0), 0u);
  std::string again_path, other_path;
  const ModelFingerprint again = TinyFingerprint(1, &again_path);
  const ModelFingerprint other = TinyFingerprint(2, &other_path);  // other weights, same shapes
  EXPECT_EQ(again.hash, model_.hash);
  EXPECT_EQ(other.layers, model_.layers);
  EXPECT_EQ(other.file_bytes, model_.file_bytes);
  EXPECT_NE(other.hash, model_.hash);
  std::filesystem::remove(again_path);
  std::filesystem::remove(other_path);
}

TEST_F(LayerCalibrationTest, RoundTrip) {
  const LayerCalibration c = Sample(model_);
  const std::string path = ::testing::TempDir() + "/xkv_calib_roundtrip.json";
  ASSERT_TRUE(WriteCalibration(path, c).ok());
  auto back = LoadCalibration(path, model_);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->weights, c.weights);
  EXPECT_EQ(back->mean_kl, c.mean_kl);
  EXPECT_EQ(back->model.hash, model_.hash);
  EXPECT_EQ(back->fraction, 0.1);
  EXPECT_EQ(back->prompts, 4);
  EXPECT_EQ(back->seed, 3);
  EXPECT_EQ(back->split, "dev");
  auto weights = LoadWeightsForModel(path, model_path_);
  ASSERT_TRUE(weights.ok()) << weights.status();
  EXPECT_EQ(weights->layers, c.weights);
  EXPECT_TRUE(weights->heads.empty());  // a file without head weights
}

TEST_F(LayerCalibrationTest, HeadWeightsRoundTripAndAreChecked) {
  LayerCalibration c = Sample(model_);
  const int n = model_.layers * model_.kv_heads;
  c.head_mean_kl.assign(n, 0.01);
  c.head_mean_kl[1] = 2.0;
  c.head_weights = SensitivityWeights(c.head_mean_kl);
  const std::string path = ::testing::TempDir() + "/xkv_calib_heads.json";
  ASSERT_TRUE(WriteCalibration(path, c).ok());
  auto weights = LoadWeightsForModel(path, model_path_);
  ASSERT_TRUE(weights.ok()) << weights.status();
  EXPECT_EQ(weights->heads, c.head_weights);
  EXPECT_GT(weights->heads[1], weights->heads[0]);
  Json j = Json::parse(CalibrationJson(c));
  j["head_weights"].push_back(1.0);
  ExpectError(LoadEdited(j), absl::StrCat("the length of head_weights is ", n + 1, "; allowed: ", n,
                                          " (model.layers x model.kv_heads)"));
  j = Json::parse(CalibrationJson(c));
  j["head_weights"][0] = 0.0;
  ExpectError(LoadEdited(j), "head_weights[0] is 0");
  j = Json::parse(CalibrationJson(c));
  j.erase("head_mean_kl");
  ExpectError(LoadEdited(j), "head_mean_kl");
}

TEST(SensitivityWeightsTest, MeanOneAndFloored) {
  const std::vector<double> w = SensitivityWeights({0.0, 1.0, 2.0, 5.0});
  EXPECT_DOUBLE_EQ(w[0], kMinLayerWeight);
  EXPECT_DOUBLE_EQ(w[1], 0.5);
  EXPECT_DOUBLE_EQ(w[3], 2.5);
  EXPECT_EQ(SensitivityWeights({0.0, 0.0}), (std::vector<double>{1.0, 1.0}));
}

TEST_F(LayerCalibrationTest, CorruptFile) {
  const std::string path = WriteText("xkv_calib_corrupt.json", "{\"format\": \"xkv-layer-cal");
  ExpectError(LoadCalibration(path, model_).status(), "is not a JSON object");
  ExpectError(LoadCalibration(::testing::TempDir() + "/absent.json", model_).status(),
              "cannot be read");
}

TEST_F(LayerCalibrationTest, WrongVersionOrFormat) {
  Json j = Valid();
  j["version"] = 7;
  ExpectError(LoadEdited(j), "version is 7; allowed: 1");
  j = Valid();
  j["format"] = "something";
  ExpectError(LoadEdited(j), "format is \"something\"");
}

TEST_F(LayerCalibrationTest, AnotherModelsFingerprint) {
  std::string other_path;
  const ModelFingerprint other = TinyFingerprint(2, &other_path);
  std::filesystem::remove(other_path);
  Json j = Valid();
  j["model"]["hash"] = other.hash;
  ExpectError(LoadEdited(j), "is for another model: model.hash is " + other.hash);
  j = Valid();
  j["model"]["architecture"] = "qwen2";
  ExpectError(LoadEdited(j), "model.architecture is qwen2; this model's is llama");
  j = Valid();
  j["model"]["layers"] = 3;
  j["weights"] = {1.0, 1.0, 1.0};
  j["mean_kl"] = {1.0, 1.0, 1.0};
  ExpectError(LoadEdited(j), "model.layers is 3; this model's is 2");
}

TEST_F(LayerCalibrationTest, WrongLayerCount) {
  Json j = Valid();
  j["weights"] = {1.0, 1.0, 1.0};
  ExpectError(LoadEdited(j), "the length of weights is 3; allowed: 2 (model.layers)");
}

TEST_F(LayerCalibrationTest, NonFiniteOrNegativeWeights) {
  Json j = Valid();
  j["weights"][1] = -0.5;
  ExpectError(LoadEdited(j), "weights[1] is -0.5; allowed: a finite number in [0.01, 1000]");
  j["weights"][1] = nullptr;  // how a NaN is written in JSON
  ExpectError(LoadEdited(j), "weights[1] is null");
  j["weights"][1] = "nan";
  ExpectError(LoadEdited(j), "weights[1] is \"nan\"");
  // NaN as a bare word is not JSON: the file is corrupt.
  std::string text = Valid().dump();
  text.replace(text.find("\"weights\":[") + 11, 0, "NaN,");
  ExpectError(LoadCalibration(WriteText("xkv_calib_nan.json", text), model_).status(),
              "is not a JSON object");
  j = Valid();
  j["fraction"] = 1.5;
  ExpectError(LoadEdited(j), "fraction is 1.5; allowed: a finite number in (0, 1]");
}

}  // namespace
}  // namespace xkv
