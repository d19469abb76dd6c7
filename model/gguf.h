// GGUF v2/v3 reader (mmap) and writer. The reader validates every count, size and offset against the
// file before use, so a malformed file yields one clear error instead of a crash or a huge allocation.
#ifndef XKV_MODEL_GGUF_H_
#define XKV_MODEL_GGUF_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/ggml_types.h"

namespace xkv {

enum class GgufValueType : uint32_t {
  kUint8 = 0, kInt8 = 1, kUint16 = 2, kInt16 = 3, kUint32 = 4, kInt32 = 5, kFloat32 = 6,
  kBool = 7, kString = 8, kArray = 9, kUint64 = 10, kInt64 = 11, kFloat64 = 12,
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
};

struct GgufTensorInfo {
  std::string name;
  std::vector<int64_t> dims;  // GGUF order: dims[0] is the fastest-varying (row length)
  GgmlType type;
  uint64_t offset;            // relative to the data section
  uint64_t size_bytes;        // computed from dims and type, checked against the file
  int64_t NumElements() const;
};

class GgufFile {
 public:
  // Maps and parses `path`. Errors: NOT_FOUND (missing file), INVALID_ARGUMENT/DATA_LOSS for malformed
  // content, with the path and the offending field in the message.
  static absl::StatusOr<std::unique_ptr<GgufFile>> Open(const std::string& path);
  // Parses an in-memory image (copied); used by the fuzzer and tests.
  static absl::StatusOr<std::unique_ptr<GgufFile>> FromBuffer(absl::Span<const uint8_t> bytes);
  ~GgufFile();

  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  const std::vector<std::pair<std::string, GgufValue>>& metadata() const { return metadata_; }
  const GgufValue* Find(std::string_view key) const;  // nullptr when absent
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* FindTensor(std::string_view name) const;  // nullptr when absent
  // Raw bytes of a tensor inside the mapping (valid while the GgufFile lives).
  absl::Span<const uint8_t> TensorData(const GgufTensorInfo& info) const;
  // Dequantizes a whole tensor to fp32 (row-major, dims[0] fastest).
  absl::StatusOr<std::vector<float>> ReadTensorF32(std::string_view name) const;

 private:
  GgufFile() = default;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  std::vector<std::pair<std::string, GgufValue>> metadata_;
  std::vector<GgufTensorInfo> tensors_;
  const uint8_t* base_ = nullptr;   // start of the file image
  uint64_t file_size_ = 0;
  uint64_t data_offset_ = 0;        // start of the tensor data section
  void* mapping_ = nullptr;         // mmap handle (nullptr for buffers)
  std::vector<uint8_t> owned_;      // FromBuffer copy
};

// Writer: builds a GGUF v3 file from metadata and tensors (fp32 input quantized to `type`).
class GgufWriter {
 public:
  void SetMetadata(std::string key, GgufValue value);
  // `data` fp32 row-major with dims[0] fastest; quantized to `type` (F32, F16, BF16, Q8_0, Q4_0, Q4_1).
  void AddTensor(std::string name, std::vector<int64_t> dims, GgmlType type,
                 absl::Span<const float> data);
  absl::Status WriteFile(const std::string& path) const;
  absl::StatusOr<std::vector<uint8_t>> WriteBuffer() const;

 private:
  struct PendingTensor {
    std::string name;
    std::vector<int64_t> dims;
    GgmlType type;
    std::vector<uint8_t> bytes;
  };
  std::vector<std::pair<std::string, GgufValue>> metadata_;
  std::vector<PendingTensor> tensors_;
  uint64_t alignment_ = 32;
};

}  // namespace xkv

#endif  // XKV_MODEL_GGUF_H_
