#include "model/gguf.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <map>
#include <random>

#include "kernels/cpu/dequant.h"
#include "model/model_config.h"
#include "tests/unit/model/gguf_test_util.h"

namespace xkv {
namespace {

using ::testing::HasSubstr;
using testing_util::SameValue;

// Every value type with boundary values, plus nested and empty arrays.
std::vector<std::pair<std::string, GgufValue>> AllValueKinds() {
  using V = GgufValue;
  std::vector<V> nested_inner1 = {V::Int32(1), V::Int32(-2)};
  std::vector<V> nested_inner2 = {V::Int32(std::numeric_limits<int32_t>::min())};
  std::vector<V> deep = {V::Array(GgufValueType::kString, {V::String("a"), V::String("")})};
  return {
      {"t.u8", V::Uint8(255)},
      {"t.i8", V::Int8(-128)},
      {"t.u16", V::Uint16(65535)},
      {"t.i16", V::Int16(-32768)},
      {"t.u32", V::Uint32(0xffffffffu)},
      {"t.i32", V::Int32(std::numeric_limits<int32_t>::min())},
      {"t.u64", V::Uint64(std::numeric_limits<uint64_t>::max())},
      {"t.i64", V::Int64(std::numeric_limits<int64_t>::min())},
      {"t.f32", V::Float32(1.5e-7f)},
      {"t.f64", V::Float64(3.141592653589793)},
      {"t.true", V::Bool(true)},
      {"t.false", V::Bool(false)},
      {"t.str", V::String(std::string("h\xc3\xa9llo\0world", 12))},
      {"t.empty_str", V::String("")},
      {"t.arr_u8", V::Array(GgufValueType::kUint8, {V::Uint8(0), V::Uint8(7), V::Uint8(255)})},
      {"t.arr_f32", V::Array(GgufValueType::kFloat32, {V::Float32(-1.25f), V::Float32(2.0f)})},
      {"t.arr_bool", V::Array(GgufValueType::kBool, {V::Bool(true), V::Bool(false)})},
      {"t.arr_str", V::StringArray({"x", "", "\xe2\x82\xac"})},
      {"t.arr_empty", V::Array(GgufValueType::kInt64, {})},
      {"t.nested", V::Array(GgufValueType::kArray, {V::Array(GgufValueType::kInt32, nested_inner1),
                                                    V::Array(GgufValueType::kInt32, nested_inner2),
                                                    V::Array(GgufValueType::kInt32, {})})},
      {"t.nested3", V::Array(GgufValueType::kArray, {V::Array(GgufValueType::kArray, deep)})},
  };
}

std::vector<float> RandomNonZero(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(0.1f, 2.0f);
  std::vector<float> x(n);
  for (int64_t i = 0; i < n; ++i) x[i] = (i % 3 == 0 ? -1.0f : 1.0f) * u(rng);
  return x;
}

TEST(GgufWriterReaderTest, EveryMetadataTypeRoundTrips) {
  GgufWriter w;
  for (auto& [k, v] : AllValueKinds()) w.SetMetadata(k, v);
  auto bytes = w.WriteBuffer();
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  auto f = GgufFile::FromBuffer(*bytes);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->version(), 3u);
  EXPECT_EQ((*f)->tensors().size(), 0u);
  const auto expected = AllValueKinds();
  ASSERT_EQ((*f)->metadata().size(), expected.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_EQ((*f)->metadata()[i].first, expected[i].first);  // order preserved
    const GgufValue* v = (*f)->Find(expected[i].first);
    ASSERT_NE(v, nullptr) << expected[i].first;
    EXPECT_TRUE(SameValue(*v, expected[i].second)) << expected[i].first;
  }
  EXPECT_EQ((*f)->Find("t.absent"), nullptr);
  EXPECT_EQ(*(*f)->Find("t.u32")->AsInt(), 0xffffffffLL);
  EXPECT_FALSE((*f)->Find("t.u64")->AsInt().ok());  // does not fit int64
  EXPECT_EQ(*(*f)->Find("t.f32")->AsFloat(), static_cast<double>(1.5e-7f));
  EXPECT_EQ(*(*f)->Find("t.str")->AsString(), std::string_view("h\xc3\xa9llo\0world", 12));
  EXPECT_TRUE(*(*f)->Find("t.true")->AsBool());
  EXPECT_FALSE((*f)->Find("t.str")->AsInt().ok());
  EXPECT_FALSE((*f)->Find("t.u8")->AsString().ok());
  EXPECT_FALSE((*f)->Find("t.u8")->AsArray().ok());
  EXPECT_EQ((*(*f)->Find("t.nested")->AsArray())->elements.size(), 3u);
}

TEST(GgufWriterReaderTest, SetMetadataReplacesAndRejectsMismatchedValues) {
  GgufWriter w;
  w.SetMetadata("k", GgufValue::Uint32(1));
  w.SetMetadata("k", GgufValue::String("two"));
  auto f = GgufFile::FromBuffer(*w.WriteBuffer());
  ASSERT_TRUE(f.ok());
  ASSERT_EQ((*f)->metadata().size(), 1u);
  EXPECT_EQ(*(*f)->Find("k")->AsString(), "two");

  GgufWriter bad;
  bad.SetMetadata("k", GgufValue{GgufValueType::kUint8, uint64_t{300}});  // out of range
  EXPECT_EQ(bad.WriteBuffer().status().code(), absl::StatusCode::kInvalidArgument);
  GgufWriter bad_array;
  bad_array.SetMetadata("a", GgufValue::Array(GgufValueType::kInt32, {GgufValue::Uint8(1)}));
  EXPECT_THAT(std::string(bad_array.WriteBuffer().status().message()), HasSubstr("'a'"));
}

class TensorRoundTripTest : public ::testing::TestWithParam<GgmlType> {};

TEST_P(TensorRoundTripTest, DataMatchesQuantizeThenDequantize) {
  const GgmlType type = GetParam();
  const std::vector<int64_t> dims = {256, 3, 2};  // rows of one K-quant super-block
  const std::vector<float> x = RandomNonZero(256 * 3 * 2, 7);
  GgufWriter w;
  w.SetMetadata("general.architecture", GgufValue::String("test"));
  w.AddTensor("first", {32}, GgmlType::kF32, RandomNonZero(32, 1));
  w.AddTensor("t", dims, type, x);
  w.AddTensorRows("lazy", {256, 2}, type, [&](int64_t row, absl::Span<float> out) {
    for (size_t i = 0; i < out.size(); ++i) out[i] = x[row * 256 + i];
  });
  auto bytes = w.WriteBuffer();
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  auto f = GgufFile::FromBuffer(*bytes);
  ASSERT_TRUE(f.ok()) << f.status();
  const GgufTensorInfo* info = (*f)->FindTensor("t");
  ASSERT_NE(info, nullptr);
  EXPECT_EQ(info->dims, dims);
  EXPECT_EQ(info->type, type);
  EXPECT_EQ(info->NumElements(), 1536);
  EXPECT_EQ(info->offset % 32, 0u);
  EXPECT_EQ((*f)->data_offset() % 32, 0u);
  const auto traits = GetGgmlTypeTraits(static_cast<uint32_t>(type));
  EXPECT_EQ(info->size_bytes,
            static_cast<uint64_t>(1536 / traits->block_elements * traits->block_bytes));
  EXPECT_EQ((*f)->TensorData(*info).size(), info->size_bytes);

  std::vector<uint8_t> q(info->size_bytes);
  ASSERT_TRUE(cpu::QuantizeFromF32(type, x.data(), 1536, q.data()).ok());
  std::vector<float> expected(1536);
  ASSERT_TRUE(cpu::DequantizeToF32(type, q.data(), 1536, expected.data()).ok());
  auto got = (*f)->ReadTensorF32("t");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, expected);
  auto lazy = (*f)->ReadTensorF32("lazy");
  ASSERT_TRUE(lazy.ok());
  EXPECT_EQ(*lazy, std::vector<float>(expected.begin(), expected.begin() + 512));
  EXPECT_EQ((*f)->ReadTensorF32("nope").status().code(), absl::StatusCode::kNotFound);
}

INSTANTIATE_TEST_SUITE_P(AllTypes, TensorRoundTripTest,
                         ::testing::Values(GgmlType::kF32, GgmlType::kF16, GgmlType::kBF16,
                                           GgmlType::kQ8_0, GgmlType::kQ4_0, GgmlType::kQ4_1,
                                           GgmlType::kQ2_K, GgmlType::kQ3_K, GgmlType::kQ4_K,
                                           GgmlType::kQ5_K, GgmlType::kQ6_K));

TEST(GgufWriterReaderTest, CustomAlignmentIsHonoured) {
  GgufWriter w;
  w.SetMetadata("general.alignment", GgufValue::Uint32(256));
  w.AddTensor("a", {32}, GgmlType::kQ8_0, RandomNonZero(32, 2));  // 34 bytes
  w.AddTensor("b", {32}, GgmlType::kQ8_0, RandomNonZero(32, 3));
  auto f = GgufFile::FromBuffer(*w.WriteBuffer());
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->alignment(), 256u);
  EXPECT_EQ((*f)->data_offset() % 256, 0u);
  EXPECT_EQ((*f)->FindTensor("a")->offset, 0u);
  EXPECT_EQ((*f)->FindTensor("b")->offset, 256u);
}

TEST(GgufWriterReaderTest, WriterRejectsBadTensors) {
  const std::vector<float> x(64, 1.0f);
  GgufWriter dup;
  dup.AddTensor("a", {64}, GgmlType::kF32, x);
  dup.AddTensor("a", {64}, GgmlType::kF32, x);
  EXPECT_THAT(std::string(dup.WriteBuffer().status().message()), HasSubstr("duplicate"));
  GgufWriter block;
  block.AddTensor("a", {16, 4}, GgmlType::kQ4_0, x);  // row of 16 is not a whole block
  EXPECT_THAT(std::string(block.WriteBuffer().status().message()), HasSubstr("multiple of 32"));
  GgufWriter super_block;
  super_block.AddTensor("a", {32, 2}, GgmlType::kQ4_K, x);  // K-quant rows are whole 256s
  EXPECT_THAT(std::string(super_block.WriteBuffer().status().message()),
              HasSubstr("multiple of 256 for Q4_K"));
  GgufWriter count;
  count.AddTensor("a", {32}, GgmlType::kF32, x);  // 64 values for 32 elements
  EXPECT_FALSE(count.WriteBuffer().ok());
}

TEST(GgufFileTest, WriteFileThenOpenMapsTheSameContent) {
  const std::string path = ::testing::TempDir() + "/xkv_gguf_roundtrip.gguf";
  GgufWriter w;
  w.SetMetadata("general.name", GgufValue::String("file"));
  w.AddTensor("w", {32, 2}, GgmlType::kQ4_1, RandomNonZero(64, 9));
  ASSERT_TRUE(w.WriteFile(path).ok());
  auto from_file = GgufFile::Open(path);
  ASSERT_TRUE(from_file.ok()) << from_file.status();
  auto from_buffer = GgufFile::FromBuffer(*w.WriteBuffer());
  ASSERT_TRUE(from_buffer.ok());
  EXPECT_EQ((*from_file)->path(), path);
  EXPECT_EQ(*(*from_file)->ReadTensorF32("w"), *(*from_buffer)->ReadTensorF32("w"));
  EXPECT_EQ(*(*from_file)->Find("general.name")->AsString(), "file");
  std::filesystem::remove(path);
}

TEST(GgufFileTest, MissingFileIsNotFoundAndDirectoryIsInvalid) {
  auto missing = GgufFile::Open("/nonexistent/dir/model.gguf");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("/nonexistent/dir/model.gguf"));
  auto dir = GgufFile::Open(::testing::TempDir());
  EXPECT_EQ(dir.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(GgufFileTest, Version2IsReadAndVersion1Rejected) {
  GgufWriter w;
  w.SetMetadata("k", GgufValue::Int16(-5));
  w.AddTensor("t", {32}, GgmlType::kF16, RandomNonZero(32, 4));
  std::vector<uint8_t> bytes = *w.WriteBuffer();
  bytes[4] = 2;  // u32 version at byte 4; v2 has the same layout as v3
  auto v2 = GgufFile::FromBuffer(bytes);
  ASSERT_TRUE(v2.ok()) << v2.status();
  EXPECT_EQ((*v2)->version(), 2u);
  EXPECT_EQ(*(*v2)->Find("k")->AsInt(), -5);
  bytes[4] = 1;
  auto v1 = GgufFile::FromBuffer(bytes);
  EXPECT_EQ(v1.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(v1.status().message()), HasSubstr("version 1 is not supported"));
  bytes[4] = 4;
  EXPECT_THAT(std::string(GgufFile::FromBuffer(bytes).status().message()), HasSubstr("version 4"));
}

// ----- the real SmolLM2-135M-Instruct Q4_1 file -----

// $XKV_MODEL, else models/SmolLM2-135M-Instruct.Q4_1.gguf under the repository root (found from
// this source file's path, so the test also runs when ctest does not pass the variable).
std::string ModelPath() {
  if (const char* env = std::getenv("XKV_MODEL"); env != nullptr && *env != '\0') return env;
  const std::filesystem::path here(__FILE__);  // <root>/tests/unit/model/gguf_test.cc
  return (here.parent_path().parent_path().parent_path().parent_path() / "models" /
          "SmolLM2-135M-Instruct.Q4_1.gguf")
      .string();
}

class RealModelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string path = ModelPath();
    if (!std::filesystem::exists(path)) {
      GTEST_SKIP() << "model " << path << " missing (scripts/fetch-model downloads it)";
    }
    auto f = GgufFile::Open(path);
    ASSERT_TRUE(f.ok()) << f.status();
    file_ = *std::move(f);
  }

  // Row `row` of a 2-D tensor, dequantized from its bytes (dims[0] elements).
  std::vector<float> Row(const std::string& name, int64_t row) {
    const GgufTensorInfo* info = file_->FindTensor(name);
    EXPECT_NE(info, nullptr);
    const int64_t rows = info->NumElements() / info->dims[0];
    const uint64_t row_bytes = info->size_bytes / rows;
    std::vector<float> out(info->dims[0]);
    EXPECT_TRUE(cpu::DequantizeToF32(info->type, file_->TensorData(*info).data() + row * row_bytes,
                                     info->dims[0], out.data())
                    .ok());
    return out;
  }

  std::unique_ptr<GgufFile> file_;
};

TEST_F(RealModelTest, HeaderTensorsAndTypes) {
  EXPECT_EQ(file_->version(), 3u);
  EXPECT_EQ(file_->alignment(), 32u);
  EXPECT_EQ(file_->metadata().size(), 33u);
  ASSERT_EQ(file_->tensors().size(), 272u);
  std::map<GgmlType, int> by_type;
  for (const GgufTensorInfo& t : file_->tensors()) ++by_type[t.type];
  EXPECT_EQ(by_type[GgmlType::kQ4_1], 210);
  EXPECT_EQ(by_type[GgmlType::kF32], 61);
  EXPECT_EQ(by_type[GgmlType::kQ8_0], 1);
  const GgufTensorInfo* embd = file_->FindTensor("token_embd.weight");
  ASSERT_NE(embd, nullptr);
  EXPECT_EQ(embd->dims, (std::vector<int64_t>{576, 49152}));
  EXPECT_EQ(embd->type, GgmlType::kQ8_0);
  EXPECT_EQ(file_->FindTensor("output.weight"), nullptr);
  EXPECT_EQ(file_->FindTensor("blk.0.ffn_down.weight")->dims, (std::vector<int64_t>{1536, 576}));
  auto tokens = file_->Find("tokenizer.ggml.tokens")->AsArray();
  ASSERT_TRUE(tokens.ok());
  EXPECT_EQ((*tokens)->elements.size(), 49152u);
  EXPECT_EQ(*(*tokens)->elements[1].AsString(), "<|im_start|>");
  EXPECT_EQ(*file_->Find("tokenizer.ggml.pre")->AsString(), "smollm");
}

TEST_F(RealModelTest, ConfigMatchesSmolLM2) {
  auto c = ReadModelConfig(*file_);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, "llama");
  EXPECT_EQ(c->n_layers, 30);
  EXPECT_EQ(c->hidden, 576);
  EXPECT_EQ(c->n_heads, 9);
  EXPECT_EQ(c->n_kv_heads, 3);
  EXPECT_EQ(c->head_dim, 64);
  EXPECT_EQ(c->rope_dims, 64);
  EXPECT_EQ(c->ffn, 1536);
  EXPECT_EQ(c->vocab_size, 49152);
  EXPECT_EQ(c->rope_base, 100000.f);
  EXPECT_EQ(c->rope_style, RopeStyle::kNorm);
  EXPECT_FLOAT_EQ(c->norm_eps, 1e-5f);
  EXPECT_EQ(c->context_length, 8192);
  EXPECT_TRUE(c->tied_embeddings);
  EXPECT_EQ(c->bos_token, 1);
  EXPECT_EQ(c->eos_token, 2);
  EXPECT_EQ(c->KvBytesPerTokenPerLayer(2), 2 * 3 * 64 * 2);
}

// Reference numbers from the python `gguf` package (/tmp/gv/bin/python):
//   r = gguf.GGUFReader(path); t = the tensor; d = gguf.quants.dequantize(t.data, t.tensor_type)
//   d.reshape(-1, t.shape[0])[row][:4], and the row's float64 sum.
struct RowReference {
  const char* tensor;
  int64_t row;
  float first[4];
  double sum;
};

TEST_F(RealModelTest, DequantizedRowsMatchGgufPython) {
  const RowReference refs[] = {
      {"token_embd.weight",
       0,
       {-0.10654449462890625f, 0.032978057861328125f, 0.048198699951171875f,
        -0.022830963134765625f},
       -2.2541093826293945},
      {"token_embd.weight",
       1234,
       {-0.0171661376953125f, -0.0858306884765625f, -0.0457763671875f, 0.011444091796875f},
       2.843038558959961},
      {"blk.0.attn_q.weight",
       0,
       {-0.0963134765625f, 0.1573486328125f, -0.0963134765625f, -0.73046875f},
       1.00726318359375},
      {"blk.29.ffn_down.weight",
       575,
       {-0.22918701171875f, -0.03912353515625f, -0.276702880859375f, 0.2459716796875f},
       -5.229949951171875},
      {"output_norm.weight", 0, {1.7578125f, 1.8203125f, 1.78125f, 1.6015625f}, 1038.33203125},
  };
  for (const RowReference& ref : refs) {
    const std::vector<float> row = Row(ref.tensor, ref.row);
    for (int i = 0; i < 4; ++i) EXPECT_EQ(row[i], ref.first[i]) << ref.tensor << " " << i;
    double sum = 0;
    for (float v : row) sum += v;
    EXPECT_NEAR(sum, ref.sum, 1e-6 * std::max(1.0, std::fabs(ref.sum))) << ref.tensor;
  }
  auto q = file_->ReadTensorF32("blk.0.attn_q.weight");
  ASSERT_TRUE(q.ok());
  ASSERT_EQ(q->size(), 576u * 576u);
  EXPECT_EQ((*q)[3], -0.73046875f);
}

}  // namespace
}  // namespace xkv
