// GGUF v3 writer: header, metadata in insertion order, tensor infos, padding to the alignment,
// then each tensor's data padded to the alignment (offsets relative to the data section).
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "kernels/cpu/dequant.h"
#include "model/gguf.h"

namespace xkv {
namespace {

constexpr uint32_t kGgufMagic = 0x46554747;  // "GGUF"
constexpr uint32_t kVersion = 3;
constexpr int kMaxArrayDepth = 8;

uint64_t PadTo(uint64_t n, uint64_t alignment) { return (alignment - n % alignment) % alignment; }

int64_t Product(const std::vector<int64_t>& dims) {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;  // validated by CheckTensor
  return n;
}

absl::Status IoError(const std::string& path, absl::string_view what) {
  const int err = errno;
  const absl::StatusCode code =
      err != 0 ? absl::ErrnoToStatusCode(err) : absl::StatusCode::kInternal;
  return absl::Status(code == absl::StatusCode::kOk ? absl::StatusCode::kInternal : code,
                      absl::StrCat(path, ": ", what, ": ", std::strerror(err)));
}

// True when a non-array value holds the variant alternative and range its declared type needs.
bool ScalarMatchesType(const GgufValue& v) {
  const auto* u = std::get_if<uint64_t>(&v.value);
  const auto* i = std::get_if<int64_t>(&v.value);
  switch (v.type) {
    case GgufValueType::kUint8:
      return u != nullptr && *u <= 0xff;
    case GgufValueType::kUint16:
      return u != nullptr && *u <= 0xffff;
    case GgufValueType::kUint32:
      return u != nullptr && *u <= 0xffffffffu;
    case GgufValueType::kUint64:
      return u != nullptr;
    case GgufValueType::kInt8:
      return i != nullptr && *i >= INT8_MIN && *i <= INT8_MAX;
    case GgufValueType::kInt16:
      return i != nullptr && *i >= INT16_MIN && *i <= INT16_MAX;
    case GgufValueType::kInt32:
      return i != nullptr && *i >= INT32_MIN && *i <= INT32_MAX;
    case GgufValueType::kInt64:
      return i != nullptr;
    case GgufValueType::kFloat32:
    case GgufValueType::kFloat64:
      return std::holds_alternative<double>(v.value);
    case GgufValueType::kBool:
      return std::holds_alternative<bool>(v.value);
    case GgufValueType::kString:
      return std::holds_alternative<std::string>(v.value);
    case GgufValueType::kArray:
      return false;
  }
  return false;
}

// Checks `v` (recursively for arrays) so that writing it cannot produce a file the reader rejects.
absl::Status CheckValue(const GgufValue& v, const std::string& key, int depth) {
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("GGUF writer: metadata '", key, "' (", GgufValueTypeName(v.type), "): ", why));
  };
  if (v.type != GgufValueType::kArray) {
    if (ScalarMatchesType(v)) return absl::OkStatus();
    return bad("value kind or range does not match the declared type");
  }
  const auto* a = std::get_if<GgufArray>(&v.value);
  if (a == nullptr) return bad("declared array holds a scalar");
  if (depth >= kMaxArrayDepth) return bad("arrays nested too deeply");
  for (const GgufValue& e : a->elements) {
    if (e.type != a->element_type) {
      return bad(absl::StrCat("element of type ", GgufValueTypeName(e.type), " in an array of ",
                              GgufValueTypeName(a->element_type)));
    }
    RETURN_IF_ERROR(CheckValue(e, key, depth + 1));
  }
  return absl::OkStatus();
}

// Little-endian serializer into a byte vector (the header region is small; tensor data streams).
class Encoder {
 public:
  template <typename T>
  void Put(T v) {
    const size_t at = out_.size();
    out_.resize(at + sizeof(T));
    std::memcpy(out_.data() + at, &v, sizeof(T));
  }
  void PutString(absl::string_view s) {
    Put<uint64_t>(s.size());
    out_.insert(out_.end(), s.begin(), s.end());
  }
  void PutValue(const GgufValue& v) {
    switch (v.type) {
      case GgufValueType::kUint8:
        Put<uint8_t>(std::get<uint64_t>(v.value));
        break;
      case GgufValueType::kUint16:
        Put<uint16_t>(std::get<uint64_t>(v.value));
        break;
      case GgufValueType::kUint32:
        Put<uint32_t>(std::get<uint64_t>(v.value));
        break;
      case GgufValueType::kUint64:
        Put<uint64_t>(std::get<uint64_t>(v.value));
        break;
      case GgufValueType::kInt8:
        Put<int8_t>(std::get<int64_t>(v.value));
        break;
      case GgufValueType::kInt16:
        Put<int16_t>(std::get<int64_t>(v.value));
        break;
      case GgufValueType::kInt32:
        Put<int32_t>(std::get<int64_t>(v.value));
        break;
      case GgufValueType::kInt64:
        Put<int64_t>(std::get<int64_t>(v.value));
        break;
      case GgufValueType::kFloat32:
        Put<float>(static_cast<float>(std::get<double>(v.value)));
        break;
      case GgufValueType::kFloat64:
        Put<double>(std::get<double>(v.value));
        break;
      case GgufValueType::kBool:
        Put<uint8_t>(std::get<bool>(v.value) ? 1 : 0);
        break;
      case GgufValueType::kString:
        PutString(std::get<std::string>(v.value));
        break;
      case GgufValueType::kArray: {
        const GgufArray& a = std::get<GgufArray>(v.value);
        Put<uint32_t>(static_cast<uint32_t>(a.element_type));
        Put<uint64_t>(a.elements.size());
        for (const GgufValue& e : a.elements) PutValue(e);
        break;
      }
    }
  }
  void Pad(uint64_t alignment) { out_.resize(out_.size() + PadTo(out_.size(), alignment), 0); }
  std::vector<uint8_t>& bytes() { return out_; }

 private:
  std::vector<uint8_t> out_;
};

}  // namespace

void GgufWriter::SetMetadata(std::string key, GgufValue value) {
  if (error_.ok()) {
    if (key.empty()) {
      error_ = absl::InvalidArgumentError("GGUF writer: empty metadata key");
    } else {
      error_ = CheckValue(value, key, 0);
    }
  }
  if (key == "general.alignment" && value.type == GgufValueType::kUint32 && error_.ok()) {
    const uint64_t a = std::get<uint64_t>(value.value);
    if (a == 0 || (a & (a - 1)) != 0) {
      error_ = absl::InvalidArgumentError(
          absl::StrCat("GGUF writer: general.alignment ", a, " is not a power of two"));
    } else {
      alignment_ = a;
    }
  }
  for (auto& [k, v] : metadata_) {
    if (k == key) {
      v = std::move(value);
      return;
    }
  }
  metadata_.emplace_back(std::move(key), std::move(value));
}

absl::Status GgufWriter::CheckTensor(const std::string& name, const std::vector<int64_t>& dims,
                                     GgmlType type, uint64_t* size_bytes) {
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("GGUF writer: tensor '", name, "': ", why));
  };
  if (name.empty()) return bad("empty name");
  for (const PendingTensor& t : tensors_) {
    if (t.name == name) return bad("duplicate tensor name");
  }
  const auto traits = GetGgmlTypeTraits(static_cast<uint32_t>(type));
  if (!traits) return bad(absl::StrCat("unsupported type ", static_cast<uint32_t>(type)));
  if (dims.empty() || dims.size() > 4) return bad("needs 1 to 4 dims");
  int64_t n = 1;
  for (int64_t d : dims) {
    if (d <= 0 || n > std::numeric_limits<int64_t>::max() / d) return bad("bad dims");
    n *= d;
  }
  if (dims[0] % traits->block_elements != 0) {
    return bad(absl::StrCat("row length ", dims[0], " is not a multiple of ",
                            traits->block_elements, " for ", std::string(traits->name)));
  }
  if (n / traits->block_elements > std::numeric_limits<int64_t>::max() / traits->block_bytes) {
    return bad("byte size overflows int64");
  }
  *size_bytes = static_cast<uint64_t>(n / traits->block_elements * traits->block_bytes);
  return absl::OkStatus();
}

void GgufWriter::AddTensor(std::string name, std::vector<int64_t> dims, GgmlType type,
                           absl::Span<const float> data) {
  uint64_t size = 0;
  absl::Status s = CheckTensor(name, dims, type, &size);
  PendingTensor t{std::move(name), std::move(dims), type, {}, nullptr, size};
  if (s.ok() && static_cast<int64_t>(data.size()) != Product(t.dims)) {
    s = absl::InvalidArgumentError(
        absl::StrCat("GGUF writer: tensor '", t.name, "': ", data.size(), " values for its dims"));
  }
  if (s.ok()) {
    t.bytes.resize(size);
    s = cpu::QuantizeFromF32(type, data.data(), static_cast<int64_t>(data.size()), t.bytes.data());
    if (!s.ok()) s = absl::Status(s.code(), absl::StrCat("tensor '", t.name, "': ", s.message()));
  }
  if (!s.ok()) {
    if (error_.ok()) error_ = s;
    return;
  }
  tensors_.push_back(std::move(t));
}

void GgufWriter::AddTensorRows(std::string name, std::vector<int64_t> dims, GgmlType type,
                               RowFiller fill) {
  uint64_t size = 0;
  absl::Status s = CheckTensor(name, dims, type, &size);
  if (s.ok() && !fill) s = absl::InvalidArgumentError("GGUF writer: null row filler");
  if (!s.ok()) {
    if (error_.ok()) error_ = s;
    return;
  }
  tensors_.push_back(
      PendingTensor{std::move(name), std::move(dims), type, {}, std::move(fill), size});
}

absl::Status GgufWriter::Validate() const { return error_; }

absl::Status GgufWriter::WriteTensorData(const PendingTensor& t, const ByteSink& sink) const {
  if (!t.fill) return sink(t.bytes.data(), t.bytes.size());
  const int64_t row_len = t.dims[0];
  const int64_t rows = Product(t.dims) / row_len;
  const uint64_t row_bytes = t.size_bytes / static_cast<uint64_t>(rows);
  std::vector<float> row(static_cast<size_t>(row_len));
  std::vector<uint8_t> packed(row_bytes);
  for (int64_t r = 0; r < rows; ++r) {
    t.fill(r, absl::MakeSpan(row));
    absl::Status s = cpu::QuantizeFromF32(t.type, row.data(), row_len, packed.data());
    if (!s.ok())
      return absl::Status(s.code(), absl::StrCat("tensor '", t.name, "': ", s.message()));
    RETURN_IF_ERROR(sink(packed.data(), packed.size()));
  }
  return absl::OkStatus();
}

absl::Status GgufWriter::Write(const ByteSink& sink) const {
  RETURN_IF_ERROR(Validate());
  Encoder e;
  e.Put<uint32_t>(kGgufMagic);
  e.Put<uint32_t>(kVersion);
  e.Put<uint64_t>(tensors_.size());
  e.Put<uint64_t>(metadata_.size());
  for (const auto& [key, value] : metadata_) {
    e.PutString(key);
    e.Put<uint32_t>(static_cast<uint32_t>(value.type));
    e.PutValue(value);
  }
  uint64_t offset = 0;
  for (const PendingTensor& t : tensors_) {
    e.PutString(t.name);
    e.Put<uint32_t>(static_cast<uint32_t>(t.dims.size()));
    for (int64_t d : t.dims) e.Put<uint64_t>(static_cast<uint64_t>(d));
    e.Put<uint32_t>(static_cast<uint32_t>(t.type));
    e.Put<uint64_t>(offset);
    offset += t.size_bytes + PadTo(t.size_bytes, alignment_);
  }
  e.Pad(alignment_);
  RETURN_IF_ERROR(sink(e.bytes().data(), e.bytes().size()));
  const std::vector<uint8_t> zeros(alignment_, 0);
  for (const PendingTensor& t : tensors_) {
    RETURN_IF_ERROR(WriteTensorData(t, sink));
    RETURN_IF_ERROR(sink(zeros.data(), PadTo(t.size_bytes, alignment_)));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<uint8_t>> GgufWriter::WriteBuffer() const {
  std::vector<uint8_t> out;
  RETURN_IF_ERROR(Write([&](const void* data, size_t n) {
    const auto* p = static_cast<const uint8_t*>(data);
    out.insert(out.end(), p, p + n);
    return absl::OkStatus();
  }));
  return out;
}

absl::Status GgufWriter::WriteFile(const std::string& path) const {
  RETURN_IF_ERROR(Validate());
  std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "wb"), &std::fclose);
  if (f == nullptr) return IoError(path, "cannot create");
  RETURN_IF_ERROR(Write([&](const void* data, size_t n) {
    if (n == 0 || std::fwrite(data, 1, n, f.get()) == n) return absl::OkStatus();
    return IoError(path, "write failed");
  }));
  if (std::fclose(f.release()) != 0) return IoError(path, "close failed");
  return absl::OkStatus();
}

}  // namespace xkv
