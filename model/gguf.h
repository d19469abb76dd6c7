// GGUF v2/v3 reader (mmap) and writer. The reader validates every count, size and offset against
// the file before use, so a malformed file yields one clear error instead of a crash or a huge
// allocation.
#ifndef XKV_MODEL_GGUF_H_
#define XKV_MODEL_GGUF_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/ggml_types.h"

namespace xkv {

enum class GgufValueType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};

struct GgufValue;
struct GgufArray {
  GgufValueType element_type;
  std::vector<GgufValue> elements;  // nested arrays allowed
};

// One metadata value. Integers keep their declared width through `type`.
struct GgufValue {
  GgufValueType type;
  std::variant<uint64_t, int64_t, double, bool, std::string, GgufArray> value;

  // Convenience accessors: error when the stored kind does not convert losslessly.
  absl::StatusOr<int64_t> AsInt() const;
  absl::StatusOr<double> AsFloat() const;
  absl::StatusOr<std::string_view> AsString() const;
  absl::StatusOr<bool> AsBool() const;
  // The array, or an error when this value is not one.
  absl::StatusOr<const GgufArray*> AsArray() const;

  // Constructors for each declared type (unsigned kinds hold uint64_t, signed int64_t, floats
  // double).
  static GgufValue Uint8(uint8_t v) { return {GgufValueType::kUint8, uint64_t{v}}; }
  static GgufValue Int8(int8_t v) { return {GgufValueType::kInt8, int64_t{v}}; }
  static GgufValue Uint16(uint16_t v) { return {GgufValueType::kUint16, uint64_t{v}}; }
  static GgufValue Int16(int16_t v) { return {GgufValueType::kInt16, int64_t{v}}; }
  static GgufValue Uint32(uint32_t v) { return {GgufValueType::kUint32, uint64_t{v}}; }
  static GgufValue Int32(int32_t v) { return {GgufValueType::kInt32, int64_t{v}}; }
  static GgufValue Uint64(uint64_t v) { return {GgufValueType::kUint64, v}; }
  static GgufValue Int64(int64_t v) { return {GgufValueType::kInt64, v}; }
  static GgufValue Float32(float v) { return {GgufValueType::kFloat32, double{v}}; }
  static GgufValue Float64(double v) { return {GgufValueType::kFloat64, v}; }
  static GgufValue Bool(bool v) { return {GgufValueType::kBool, v}; }
  static GgufValue String(std::string v) { return {GgufValueType::kString, std::move(v)}; }
  static GgufValue Array(GgufValueType element_type, std::vector<GgufValue> elements) {
    return {GgufValueType::kArray, GgufArray{element_type, std::move(elements)}};
  }
  static GgufValue StringArray(const std::vector<std::string>& strings);
};

// Name of a value type ("uint32", "array", ...) for messages; "type N" for unknown numbers.
std::string GgufValueTypeName(GgufValueType type);

struct GgufTensorInfo {
  std::string name;
  std::vector<int64_t> dims;  // GGUF order: dims[0] is the fastest-varying (row length)
  GgmlType type;
  uint64_t offset;      // relative to the data section
  uint64_t size_bytes;  // computed from dims and type, checked against the file
  int64_t NumElements() const;
};

class GgufFile {
 public:
  // Maps and parses `path`. Errors: NOT_FOUND (missing file), INVALID_ARGUMENT/DATA_LOSS for
  // malformed content, with the path and the offending field in the message.
  static absl::StatusOr<std::unique_ptr<GgufFile>> Open(const std::string& path);
  // Parses an in-memory image (copied); used by the fuzzer and tests.
  static absl::StatusOr<std::unique_ptr<GgufFile>> FromBuffer(absl::Span<const uint8_t> bytes);
  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  const std::vector<std::pair<std::string, GgufValue>>& metadata() const { return metadata_; }
  const GgufValue* Find(std::string_view key) const;  // nullptr when absent
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* FindTensor(std::string_view name) const;  // nullptr when absent
  // Where the file came from ("<buffer>" for FromBuffer), for messages.
  const std::string& path() const { return path_; }
  uint64_t data_offset() const { return data_offset_; }
  uint64_t file_size() const { return file_size_; }
  // The header's raw bytes, [0, data_offset()): metadata and tensor infos (inside the mapping).
  absl::Span<const uint8_t> HeaderBytes() const { return {base_, data_offset_}; }
  // Raw bytes of a tensor inside the mapping (valid while the GgufFile lives; empty if `info` does
  // not describe a tensor inside this file).
  absl::Span<const uint8_t> TensorData(const GgufTensorInfo& info) const;
  // Dequantizes a whole tensor to fp32 (row-major, dims[0] fastest).
  absl::StatusOr<std::vector<float>> ReadTensorF32(std::string_view name) const;

 private:
  class Parser;
  GgufFile() = default;
  static absl::StatusOr<std::unique_ptr<GgufFile>> Parse(std::unique_ptr<GgufFile> file);
  void BuildIndex();

  std::string path_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  std::vector<std::pair<std::string, GgufValue>> metadata_;
  std::vector<GgufTensorInfo> tensors_;
  const uint8_t* base_ = nullptr;  // start of the file image
  uint64_t file_size_ = 0;
  uint64_t data_offset_ = 0;    // start of the tensor data section
  void* mapping_ = nullptr;     // mmap handle (nullptr for buffers)
  std::vector<uint8_t> owned_;  // FromBuffer copy
  // name -> index into metadata_ / tensors_ (views into those vectors' strings, built after
  // parsing).
  std::unordered_map<std::string_view, size_t> metadata_index_;
  std::unordered_map<std::string_view, size_t> tensor_index_;
};

// Writer: builds a GGUF v3 file from metadata and tensors (fp32 input quantized to `type`).
class GgufWriter {
 public:
  // Fills one row (dims[0] floats) of a tensor on demand; `row` counts rows over all outer dims.
  using RowFiller = std::function<void(int64_t row, absl::Span<float> out)>;

  // Sets (or replaces) a key; order of first insertion is kept. "general.alignment" (uint32, a
  // power of two) also sets the data alignment.
  void SetMetadata(std::string key, GgufValue value);
  // `data` fp32 row-major with dims[0] fastest; quantized to `type` (F32, F16, BF16, Q8_0, Q4_0,
  // Q4_1, or a K-quant Q2_K .. Q6_K with its simpler quantizer: kernels/cpu/kquants.h).
  void AddTensor(std::string name, std::vector<int64_t> dims, GgmlType type,
                 absl::Span<const float> data);
  // Like AddTensor, but rows are generated and quantized one at a time while writing, so huge
  // synthetic tensors never exist in memory as a whole. `fill` must be deterministic.
  void AddTensorRows(std::string name, std::vector<int64_t> dims, GgmlType type, RowFiller fill);
  // Errors: INVALID_ARGUMENT for a bad tensor/metadata value (reported from the first bad call),
  // or the I/O error of writing `path`.
  absl::Status WriteFile(const std::string& path) const;
  absl::StatusOr<std::vector<uint8_t>> WriteBuffer() const;

 private:
  struct PendingTensor {
    std::string name;
    std::vector<int64_t> dims;
    GgmlType type;
    std::vector<uint8_t> bytes;  // quantized data (empty when `fill` is set)
    RowFiller fill;
    uint64_t size_bytes = 0;
  };
  using ByteSink = std::function<absl::Status(const void* data, size_t n)>;
  absl::Status Validate() const;
  absl::Status Write(const ByteSink& sink) const;
  absl::Status WriteTensorData(const PendingTensor& t, const ByteSink& sink) const;
  absl::Status CheckTensor(const std::string& name, const std::vector<int64_t>& dims, GgmlType type,
                           uint64_t* size_bytes);

  std::vector<std::pair<std::string, GgufValue>> metadata_;
  std::vector<PendingTensor> tensors_;
  uint64_t alignment_ = 32;
  absl::Status error_;  // first error from SetMetadata/AddTensor*
};

}  // namespace xkv

#endif  // XKV_MODEL_GGUF_H_
