// Malformed GGUF images: each must give a non-OK status naming the problem, never a crash or a
// huge allocation (the suite also runs under the fuzzer's sanitizers via scripts/run-fuzz).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <random>

#include "model/gguf.h"
#include "model/model_config.h"
#include "tests/unit/model/gguf_test_util.h"

namespace xkv {
namespace {

using ::testing::HasSubstr;
using testing_util::RawGguf;

constexpr uint64_t kHuge = uint64_t{1} << 60;

void ExpectInvalid(const std::vector<uint8_t>& bytes, std::string_view needle) {
  auto f = GgufFile::FromBuffer(bytes);
  ASSERT_FALSE(f.ok()) << "accepted a malformed file; expected: " << needle;
  EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument) << f.status();
  const std::string message(f.status().message());
  EXPECT_THAT(message, HasSubstr(std::string(needle)));
  EXPECT_THAT(message, HasSubstr("<buffer>"));
}

// A valid file with one key and one F32 tensor of 8 elements (32 bytes = one alignment unit, so
// the file ends exactly at the end of the tensor data: every proper prefix is truncated).
RawGguf ValidSmall() {
  RawGguf r;
  r.Header(3, 1, 1).Key("general.architecture", GgufValueType::kString).Str("llama");
  r.TensorInfo("w", {8}, 0, 0).Pad(32).Zeros(32);
  return r;
}

TEST(GgufMalformedTest, BaselineSmallFileIsValid) {
  auto f = GgufFile::FromBuffer(ValidSmall().bytes);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->tensors().size(), 1u);
}

TEST(GgufMalformedTest, BadMagic) {
  std::vector<uint8_t> b = ValidSmall().bytes;
  b[0] = 'X';
  ExpectInvalid(b, "bad magic");
  ExpectInvalid({}, "magic");
}

TEST(GgufMalformedTest, BigEndianVersionIsNamed) {
  std::vector<uint8_t> b = ValidSmall().bytes;
  b[4] = 0, b[7] = 3;  // version 3 stored big-endian
  ExpectInvalid(b, "big-endian");
}

TEST(GgufMalformedTest, EveryTruncationFails) {
  for (const std::vector<uint8_t>& full : {ValidSmall().bytes}) {
    for (size_t len = 0; len < full.size(); ++len) {
      auto f = GgufFile::FromBuffer(absl::MakeConstSpan(full.data(), len));
      ASSERT_FALSE(f.ok()) << "prefix of " << len << " bytes accepted";
      EXPECT_THAT(
          std::string(f.status().message()),
          ::testing::AnyOf(HasSubstr("truncated"), HasSubstr("outside"), HasSubstr("beyond"),
                           HasSubstr("cannot fit"), HasSubstr("exceeds")))
          << "len " << len << ": " << f.status();
    }
  }
}

TEST(GgufMalformedTest, EveryTruncationOfAWriterFileFails) {
  GgufWriter w;
  w.SetMetadata("a", GgufValue::Array(GgufValueType::kArray, {GgufValue::StringArray({"x", "yz"}),
                                                              GgufValue::StringArray({})}));
  w.SetMetadata("b", GgufValue::Float64(2.5));
  w.AddTensor("q", {32, 2}, GgmlType::kQ4_1, std::vector<float>(64, 0.5f));  // 40 bytes
  w.AddTensor("f", {8}, GgmlType::kF32, std::vector<float>(8, 1.0f));        // ends the file
  const std::vector<uint8_t> full = *w.WriteBuffer();
  ASSERT_TRUE(GgufFile::FromBuffer(full).ok());
  for (size_t len = 0; len < full.size(); ++len) {
    EXPECT_FALSE(GgufFile::FromBuffer(absl::MakeConstSpan(full.data(), len)).ok()) << len;
  }
}

TEST(GgufMalformedTest, AbsurdCountsAreRejectedBeforeAllocating) {
  ExpectInvalid(RawGguf().Header(3, kHuge, 0).bytes, "tensor_count");
  ExpectInvalid(RawGguf().Header(3, 0, kHuge).bytes, "kv_count");
  RawGguf arr;
  arr.Header(3, 0, 1).Key("big", GgufValueType::kArray).U32(4).U64(kHuge);
  ExpectInvalid(arr.bytes, "cannot fit");
  RawGguf nested;  // the outer count fits, an inner one does not
  nested.Header(3, 0, 1).Key("n", GgufValueType::kArray).U32(9).U64(1).U32(0).U64(kHuge);
  ExpectInvalid(nested.bytes, "cannot fit");
  RawGguf str;
  str.Header(3, 0, 1).Key("s", GgufValueType::kString).U64(uint64_t{1} << 40);
  ExpectInvalid(str.bytes, "string length 1099511627776");
  RawGguf key;
  key.Header(3, 0, 1).U64(~uint64_t{0}).Zeros(16);
  ExpectInvalid(key.bytes, "metadata[0] key");
}

TEST(GgufMalformedTest, UnknownTypes) {
  RawGguf value;
  value.Header(3, 0, 1).Key("k", static_cast<GgufValueType>(13)).U32(0);
  ExpectInvalid(value.bytes, "unknown value type 13");
  RawGguf element;
  element.Header(3, 0, 1).Key("k", GgufValueType::kArray).U32(99).U64(0);
  ExpectInvalid(element.bytes, "element value type 99");
  RawGguf tensor;
  tensor.Header(3, 1, 0).TensorInfo("blk.0.attn_q.weight", {256}, 16, 0).Pad(32).Zeros(256);
  ExpectInvalid(tensor.bytes, "unsupported ggml tensor type 16");  // IQ2_XXS
  ExpectInvalid(tensor.bytes, "blk.0.attn_q.weight");
}

TEST(GgufMalformedTest, BadValues) {
  RawGguf b;
  b.Header(3, 0, 1).Key("flag", GgufValueType::kBool).U8(2);
  ExpectInvalid(b.bytes, "bool value 2");
  RawGguf empty_key;
  empty_key.Header(3, 0, 1).Str("").U32(4).U32(1);
  ExpectInvalid(empty_key.bytes, "empty key");
  RawGguf deep;  // arrays nested 9 levels deep
  deep.Header(3, 0, 1).Key("d", GgufValueType::kArray);
  for (int i = 0; i < 9; ++i) deep.U32(9).U64(1);
  deep.U32(4).U64(0);
  ExpectInvalid(deep.bytes, "nested deeper");
}

TEST(GgufMalformedTest, DuplicateKeysAndTensorNames) {
  RawGguf keys;
  keys.Header(3, 0, 2).Key("k", GgufValueType::kUint32).U32(1);
  keys.Key("k", GgufValueType::kUint32).U32(2);
  ExpectInvalid(keys.bytes, "duplicate key");
  RawGguf tensors;
  tensors.Header(3, 2, 0).TensorInfo("w", {8}, 0, 0).TensorInfo("w", {8}, 0, 32);
  tensors.Pad(32).Zeros(64);
  ExpectInvalid(tensors.bytes, "duplicate tensor name");
}

TEST(GgufMalformedTest, BadDims) {
  RawGguf five;
  five.Header(3, 1, 0).TensorInfo("t", {1, 1, 1, 1, 1}, 0, 0).Pad(32).Zeros(32);
  ExpectInvalid(five.bytes, "n_dims 5");
  RawGguf zero_dims;
  zero_dims.Header(3, 1, 0).TensorInfo("t", {}, 0, 0).Pad(32).Zeros(32);
  ExpectInvalid(zero_dims.bytes, "n_dims 0");
  RawGguf zero;
  zero.Header(3, 1, 0).TensorInfo("t", {8, 0}, 0, 0).Pad(32).Zeros(32);
  ExpectInvalid(zero.bytes, "dims[1] = 0");
  RawGguf overflow;
  overflow.Header(3, 1, 0).TensorInfo("t", {1ull << 40, 1ull << 40}, 0, 0).Pad(32).Zeros(32);
  ExpectInvalid(overflow.bytes, "overflow");
  RawGguf bytes_overflow;  // elements fit in int64, bytes (x4) do not
  bytes_overflow.Header(3, 1, 0).TensorInfo("t", {1ull << 31, 1ull << 31}, 0, 0).Pad(32);
  ExpectInvalid(bytes_overflow.bytes, "overflow");
  RawGguf partial_block;
  partial_block.Header(3, 1, 0).TensorInfo("t", {16}, 2, 0).Pad(32).Zeros(32);
  ExpectInvalid(partial_block.bytes, "block size 32");
}

TEST(GgufMalformedTest, KQuantSizesAreChecked) {
  RawGguf ok;  // Q4_K [256, 2]: 2 super-blocks of 144 bytes
  ok.Header(3, 1, 0).TensorInfo("w", {256, 2}, 12, 0).Pad(32).Zeros(288);
  auto f = GgufFile::FromBuffer(ok.bytes);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->FindTensor("w")->size_bytes, 288u);
  EXPECT_EQ((*f)->FindTensor("w")->type, GgmlType::kQ4_K);
  RawGguf row;  // rows must be whole super-blocks of 256
  row.Header(3, 1, 0).TensorInfo("blk.0.ffn_down.weight", {128, 4}, 14, 0).Pad(32).Zeros(420);
  ExpectInvalid(row.bytes, "row length 128 is not a multiple of the Q6_K block size 256");
  RawGguf truncated;  // Q5_K [512, 3] needs 6 * 176 bytes
  truncated.Header(3, 1, 0).TensorInfo("w", {512, 3}, 13, 0).Pad(32).Zeros(6 * 176 - 1);
  ExpectInvalid(truncated.bytes, "outside");
  RawGguf huge;  // 2^62 elements: 2^54 Q2_K super-blocks (1.5e18 bytes), past the file's end
  huge.Header(3, 1, 0).TensorInfo("t", {1ull << 40, 1ull << 22}, 10, 0).Pad(32).Zeros(84);
  ExpectInvalid(huge.bytes, "lies outside");
}

TEST(GgufMalformedTest, OffsetsOutOfRangeMisalignedOrOverlapping) {
  RawGguf far;
  far.Header(3, 1, 0).TensorInfo("t", {8}, 0, uint64_t{1} << 40).Pad(32).Zeros(32);
  ExpectInvalid(far.bytes, "outside");
  RawGguf wrap;  // offset + size wraps around 2^64
  wrap.Header(3, 1, 0).TensorInfo("t", {8}, 0, ~uint64_t{31}).Pad(32).Zeros(32);
  ExpectInvalid(wrap.bytes, "outside");
  RawGguf tail;  // starts inside, ends past the file
  tail.Header(3, 1, 0).TensorInfo("t", {16}, 0, 32).Pad(32).Zeros(64);
  ExpectInvalid(tail.bytes, "outside");
  RawGguf misaligned;
  misaligned.Header(3, 1, 0).TensorInfo("t", {8}, 0, 4).Pad(32).Zeros(64);
  ExpectInvalid(misaligned.bytes, "multiple of the alignment");
  RawGguf overlap;
  overlap.Header(3, 2, 0).TensorInfo("a", {16}, 0, 0).TensorInfo("b", {8}, 0, 32);
  overlap.Pad(32).Zeros(128);
  ExpectInvalid(overlap.bytes, "overlaps");
}

TEST(GgufMalformedTest, BadAlignment) {
  RawGguf odd;
  odd.Header(3, 0, 1).Key("general.alignment", GgufValueType::kUint32).U32(48);
  ExpectInvalid(odd.bytes, "power of two");
  RawGguf zero;
  zero.Header(3, 0, 1).Key("general.alignment", GgufValueType::kUint32).U32(0);
  ExpectInvalid(zero.bytes, "power of two");
  RawGguf wrong_type;
  wrong_type.Header(3, 0, 1).Key("general.alignment", GgufValueType::kString).Str("32");
  ExpectInvalid(wrong_type.bytes, "must be uint32");
  RawGguf good;  // a valid 64-byte alignment moves the data section
  good.Header(3, 1, 1).Key("general.alignment", GgufValueType::kUint32).U32(64);
  good.TensorInfo("t", {8}, 0, 0).Pad(64).Zeros(32);
  auto f = GgufFile::FromBuffer(good.bytes);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->data_offset() % 64, 0u);
}

TEST(GgufMalformedTest, RandomCorruptionNeverCrashes) {
  GgufWriter w;
  w.SetMetadata("general.architecture", GgufValue::String("llama"));
  w.SetMetadata("llama.block_count", GgufValue::Uint32(1));
  w.SetMetadata("arr", GgufValue::Array(GgufValueType::kArray, {GgufValue::StringArray({"a"})}));
  w.AddTensor("token_embd.weight", {32, 4}, GgmlType::kQ8_0, std::vector<float>(128, 0.25f));
  const std::vector<uint8_t> base = *w.WriteBuffer();
  std::mt19937 rng(42);
  int accepted = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    std::vector<uint8_t> b = base;
    const int flips = 1 + iter % 4;
    for (int k = 0; k < flips; ++k) b[rng() % b.size()] = static_cast<uint8_t>(rng());
    auto f = GgufFile::FromBuffer(b);
    if (f.ok()) {
      ++accepted;
      (void)ReadModelConfig(**f);
      for (const GgufTensorInfo& t : (*f)->tensors()) (void)(*f)->ReadTensorF32(t.name);
    }
  }
  EXPECT_GT(accepted, 0);  // flips inside tensor data or string bytes stay valid
}

}  // namespace
}  // namespace xkv
