// GGUF reader. File layout (little-endian; v2 and v3 share it, v1 used 32-bit counts):
//   u32 magic "GGUF" | u32 version | u64 tensor_count | u64 kv_count
//   kv_count x { string key | u32 value_type | value }       string = u64 length + bytes
//   tensor_count x { string name | u32 n_dims | u64 dims[n_dims] | u32 ggml_type | u64 offset }
//   padding to `general.alignment` (default 32) | tensor data (offsets relative to this point)
// Every read is bounds-checked; every count is checked against the bytes left before allocating.
#include "model/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <numeric>
#include <unordered_set>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "kernels/cpu/dequant.h"

namespace xkv {
namespace {

constexpr uint32_t kGgufMagic = 0x46554747;  // "GGUF" read as little-endian u32
constexpr int kMaxArrayDepth = 8;            // nested arrays deeper than this are rejected
constexpr uint64_t kMaxKeyLength = 65535;
constexpr uint64_t kMaxTensorNameLength = 65535;
constexpr uint32_t kMaxDims = 4;
constexpr uint64_t kMaxAlignment = uint64_t{1} << 30;
constexpr int64_t kMaxInt64 = std::numeric_limits<int64_t>::max();

// Smallest encoded size of a value of `type` (used to bound counts before allocating).
uint64_t MinEncodedSize(GgufValueType type) {
  switch (type) {
    case GgufValueType::kUint8:
    case GgufValueType::kInt8:
    case GgufValueType::kBool:
      return 1;
    case GgufValueType::kUint16:
    case GgufValueType::kInt16:
      return 2;
    case GgufValueType::kUint32:
    case GgufValueType::kInt32:
    case GgufValueType::kFloat32:
      return 4;
    case GgufValueType::kUint64:
    case GgufValueType::kInt64:
    case GgufValueType::kFloat64:
    case GgufValueType::kString:  // u64 length
      return 8;
    case GgufValueType::kArray:  // u32 element type + u64 count
      return 12;
  }
  return 1;
}

bool IsKnownValueType(uint32_t t) { return t <= static_cast<uint32_t>(GgufValueType::kFloat64); }

// Bounds-checked little-endian cursor over the file image.
class Reader {
 public:
  Reader(const uint8_t* data, uint64_t size, const std::string& path)
      : data_(data), size_(size), path_(path) {}

  uint64_t pos() const { return pos_; }
  uint64_t remaining() const { return size_ - pos_; }

  absl::Status Error(absl::string_view field, absl::string_view problem) const {
    return absl::InvalidArgumentError(
        absl::StrCat(path_, ": ", field, ": ", problem, " (at byte ", pos_, ")"));
  }

  absl::Status Need(uint64_t n, absl::string_view field) const {
    if (n <= remaining()) return absl::OkStatus();
    return Error(field, absl::StrCat("truncated file: needs ", n, " bytes, ", remaining(),
                                     " left of ", size_));
  }

  template <typename T>
  absl::StatusOr<T> Read(absl::string_view field) {
    RETURN_IF_ERROR(Need(sizeof(T), field));
    T v;
    std::memcpy(&v, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }

  absl::StatusOr<std::string> ReadString(absl::string_view field, uint64_t max_length) {
    ASSIGN_OR_RETURN(const uint64_t n, Read<uint64_t>(field));
    if (n > max_length) {
      pos_ -= sizeof(uint64_t);
      return Error(field, absl::StrCat("string length ", n, " exceeds the limit ", max_length));
    }
    if (n > remaining()) {
      pos_ -= sizeof(uint64_t);
      return Error(field, absl::StrCat("string length ", n, " exceeds the ", remaining() - 8,
                                       " bytes left in the file"));
    }
    std::string s(reinterpret_cast<const char*>(data_ + pos_), n);
    pos_ += n;
    return s;
  }

 private:
  const uint8_t* data_;
  uint64_t size_;
  uint64_t pos_ = 0;
  const std::string& path_;
};

absl::Status AddContext(const absl::Status& s, absl::string_view context) {
  return absl::Status(s.code(), absl::StrCat(s.message(), " ", context));
}

absl::StatusOr<GgufValue> ReadValue(Reader& r, GgufValueType type, absl::string_view field,
                                    int depth);

absl::StatusOr<GgufValue> ReadArray(Reader& r, absl::string_view field, int depth) {
  if (depth >= kMaxArrayDepth) {
    return r.Error(field, absl::StrCat("arrays nested deeper than ", kMaxArrayDepth));
  }
  ASSIGN_OR_RETURN(const uint32_t raw_type, r.Read<uint32_t>(field));
  if (!IsKnownValueType(raw_type)) {
    return r.Error(field, absl::StrCat("unknown array element value type ", raw_type));
  }
  const auto element_type = static_cast<GgufValueType>(raw_type);
  ASSIGN_OR_RETURN(const uint64_t count, r.Read<uint64_t>(field));
  const uint64_t min_size = MinEncodedSize(element_type);
  if (count > r.remaining() / min_size) {
    return r.Error(field,
                   absl::StrCat("array of ", count, " ", GgufValueTypeName(element_type),
                                " elements cannot fit in the ", r.remaining(), " bytes left"));
  }
  GgufArray array{element_type, {}};
  array.elements.reserve(count);
  for (uint64_t i = 0; i < count; ++i) {
    absl::StatusOr<GgufValue> v = ReadValue(r, element_type, field, depth + 1);
    if (!v.ok()) return AddContext(v.status(), absl::StrCat("[array element ", i, "]"));
    array.elements.push_back(*std::move(v));
  }
  return GgufValue{GgufValueType::kArray, std::move(array)};
}

absl::StatusOr<GgufValue> ReadValue(Reader& r, GgufValueType type, absl::string_view field,
                                    int depth) {
  switch (type) {
    case GgufValueType::kUint8: {
      ASSIGN_OR_RETURN(const uint8_t v, r.Read<uint8_t>(field));
      return GgufValue::Uint8(v);
    }
    case GgufValueType::kInt8: {
      ASSIGN_OR_RETURN(const int8_t v, r.Read<int8_t>(field));
      return GgufValue::Int8(v);
    }
    case GgufValueType::kUint16: {
      ASSIGN_OR_RETURN(const uint16_t v, r.Read<uint16_t>(field));
      return GgufValue::Uint16(v);
    }
    case GgufValueType::kInt16: {
      ASSIGN_OR_RETURN(const int16_t v, r.Read<int16_t>(field));
      return GgufValue::Int16(v);
    }
    case GgufValueType::kUint32: {
      ASSIGN_OR_RETURN(const uint32_t v, r.Read<uint32_t>(field));
      return GgufValue::Uint32(v);
    }
    case GgufValueType::kInt32: {
      ASSIGN_OR_RETURN(const int32_t v, r.Read<int32_t>(field));
      return GgufValue::Int32(v);
    }
    case GgufValueType::kUint64: {
      ASSIGN_OR_RETURN(const uint64_t v, r.Read<uint64_t>(field));
      return GgufValue::Uint64(v);
    }
    case GgufValueType::kInt64: {
      ASSIGN_OR_RETURN(const int64_t v, r.Read<int64_t>(field));
      return GgufValue::Int64(v);
    }
    case GgufValueType::kFloat32: {
      ASSIGN_OR_RETURN(const float v, r.Read<float>(field));
      return GgufValue::Float32(v);
    }
    case GgufValueType::kFloat64: {
      ASSIGN_OR_RETURN(const double v, r.Read<double>(field));
      return GgufValue::Float64(v);
    }
    case GgufValueType::kBool: {
      ASSIGN_OR_RETURN(const uint8_t v, r.Read<uint8_t>(field));
      if (v > 1) return r.Error(field, absl::StrCat("bool value ", int{v}, " is not 0 or 1"));
      return GgufValue::Bool(v != 0);
    }
    case GgufValueType::kString: {
      ASSIGN_OR_RETURN(std::string s, r.ReadString(field, std::numeric_limits<uint64_t>::max()));
      return GgufValue::String(std::move(s));
    }
    case GgufValueType::kArray:
      return ReadArray(r, field, depth);
  }
  return r.Error(field, absl::StrCat("unknown value type ", static_cast<uint32_t>(type)));
}

bool IsPowerOfTwo(uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

}  // namespace

// ---------------------------------------------------------------------------------------------
// GgufValue

std::string GgufValueTypeName(GgufValueType type) {
  switch (type) {
    case GgufValueType::kUint8:
      return "uint8";
    case GgufValueType::kInt8:
      return "int8";
    case GgufValueType::kUint16:
      return "uint16";
    case GgufValueType::kInt16:
      return "int16";
    case GgufValueType::kUint32:
      return "uint32";
    case GgufValueType::kInt32:
      return "int32";
    case GgufValueType::kFloat32:
      return "float32";
    case GgufValueType::kBool:
      return "bool";
    case GgufValueType::kString:
      return "string";
    case GgufValueType::kArray:
      return "array";
    case GgufValueType::kUint64:
      return "uint64";
    case GgufValueType::kInt64:
      return "int64";
    case GgufValueType::kFloat64:
      return "float64";
  }
  return absl::StrCat("type ", static_cast<uint32_t>(type));
}

GgufValue GgufValue::StringArray(const std::vector<std::string>& strings) {
  std::vector<GgufValue> elements;
  elements.reserve(strings.size());
  for (const std::string& s : strings) elements.push_back(String(s));
  return Array(GgufValueType::kString, std::move(elements));
}

absl::StatusOr<int64_t> GgufValue::AsInt() const {
  if (const auto* u = std::get_if<uint64_t>(&value)) {
    if (*u > static_cast<uint64_t>(kMaxInt64)) {
      return absl::InvalidArgumentError(absl::StrCat("value ", *u, " does not fit in int64"));
    }
    return static_cast<int64_t>(*u);
  }
  if (const auto* i = std::get_if<int64_t>(&value)) return *i;
  return absl::InvalidArgumentError(
      absl::StrCat("expected an integer, found ", GgufValueTypeName(type)));
}

absl::StatusOr<double> GgufValue::AsFloat() const {
  if (const auto* d = std::get_if<double>(&value)) return *d;
  constexpr int64_t kExact = int64_t{1} << 53;  // integers up to 2^53 convert exactly
  if (const auto* u = std::get_if<uint64_t>(&value); u && *u <= static_cast<uint64_t>(kExact)) {
    return static_cast<double>(*u);
  }
  if (const auto* i = std::get_if<int64_t>(&value); i && *i <= kExact && *i >= -kExact) {
    return static_cast<double>(*i);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("expected a number, found ", GgufValueTypeName(type)));
}

absl::StatusOr<std::string_view> GgufValue::AsString() const {
  if (const auto* s = std::get_if<std::string>(&value)) return std::string_view(*s);
  return absl::InvalidArgumentError(
      absl::StrCat("expected a string, found ", GgufValueTypeName(type)));
}

absl::StatusOr<bool> GgufValue::AsBool() const {
  if (const auto* b = std::get_if<bool>(&value)) return *b;
  return absl::InvalidArgumentError(
      absl::StrCat("expected a bool, found ", GgufValueTypeName(type)));
}

absl::StatusOr<const GgufArray*> GgufValue::AsArray() const {
  if (const auto* a = std::get_if<GgufArray>(&value)) return a;
  return absl::InvalidArgumentError(
      absl::StrCat("expected an array, found ", GgufValueTypeName(type)));
}

int64_t GgufTensorInfo::NumElements() const {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;  // checked against overflow when parsed
  return n;
}

// ---------------------------------------------------------------------------------------------
// Parsing

class GgufFile::Parser {
 public:
  explicit Parser(GgufFile& f) : f_(f), r_(f.base_, f.file_size_, f.path_) {}

  absl::Status Run() {
    uint64_t tensor_count = 0, kv_count = 0;
    RETURN_IF_ERROR(ReadHeader(&tensor_count, &kv_count));
    RETURN_IF_ERROR(ReadMetadata(kv_count));
    RETURN_IF_ERROR(ReadAlignment());
    RETURN_IF_ERROR(ReadTensorInfos(tensor_count));
    return CheckDataSection();
  }

 private:
  absl::Status ReadHeader(uint64_t* tensor_count, uint64_t* kv_count) {
    ASSIGN_OR_RETURN(const uint32_t magic, r_.Read<uint32_t>("magic"));
    if (magic != kGgufMagic) {
      return absl::InvalidArgumentError(absl::StrCat(f_.path_,
                                                     ": magic: not a GGUF file (bad magic 0x",
                                                     absl::Hex(magic, absl::kZeroPad8), ")"));
    }
    ASSIGN_OR_RETURN(const uint32_t version, r_.Read<uint32_t>("version"));
    if (version == 1) {
      return r_.Error("version", "GGUF version 1 is not supported (only versions 2 and 3)");
    }
    if (version != 2 && version != 3) {
      const uint32_t swapped = __builtin_bswap32(version);
      if (swapped >= 1 && swapped <= 3) {
        return r_.Error("version", "big-endian GGUF files are not supported");
      }
      return r_.Error("version", absl::StrCat("unsupported GGUF version ", version,
                                              " (only versions 2 and 3)"));
    }
    f_.version_ = version;
    ASSIGN_OR_RETURN(*tensor_count, r_.Read<uint64_t>("tensor_count"));
    ASSIGN_OR_RETURN(*kv_count, r_.Read<uint64_t>("kv_count"));
    // Smallest encodings: a tensor info is 8 + 4 + 4 + 8 bytes, a key/value 8 + 4 + 1 bytes.
    if (*tensor_count > r_.remaining() / 24) {
      return r_.Error("tensor_count", absl::StrCat(*tensor_count, " tensors cannot fit in the ",
                                                   r_.remaining(), " bytes left"));
    }
    if (*kv_count > r_.remaining() / 13) {
      return r_.Error("kv_count", absl::StrCat(*kv_count, " key/value pairs cannot fit in the ",
                                               r_.remaining(), " bytes left"));
    }
    return absl::OkStatus();
  }

  absl::Status ReadMetadata(uint64_t kv_count) {
    f_.metadata_.reserve(kv_count);
    std::unordered_set<std::string> seen;
    for (uint64_t i = 0; i < kv_count; ++i) {
      const std::string key_field = absl::StrCat("metadata[", i, "] key");
      ASSIGN_OR_RETURN(std::string key, r_.ReadString(key_field, kMaxKeyLength));
      if (key.empty()) return r_.Error(key_field, "empty key");
      const std::string field = absl::StrCat("metadata '", key, "'");
      if (!seen.insert(key).second) return r_.Error(field, "duplicate key");
      ASSIGN_OR_RETURN(const uint32_t raw_type, r_.Read<uint32_t>(field));
      if (!IsKnownValueType(raw_type)) {
        return r_.Error(field, absl::StrCat("unknown value type ", raw_type));
      }
      ASSIGN_OR_RETURN(GgufValue value,
                       ReadValue(r_, static_cast<GgufValueType>(raw_type), field, 0));
      f_.metadata_.emplace_back(std::move(key), std::move(value));
    }
    return absl::OkStatus();
  }

  absl::Status ReadAlignment() {
    for (const auto& [key, value] : f_.metadata_) {
      if (key != "general.alignment") continue;
      absl::StatusOr<int64_t> a = value.AsInt();
      if (!a.ok() || value.type != GgufValueType::kUint32) {
        return absl::InvalidArgumentError(
            absl::StrCat(f_.path_, ": metadata 'general.alignment': must be uint32, found ",
                         GgufValueTypeName(value.type)));
      }
      if (!IsPowerOfTwo(static_cast<uint64_t>(*a)) || static_cast<uint64_t>(*a) > kMaxAlignment) {
        return absl::InvalidArgumentError(absl::StrCat(
            f_.path_, ": metadata 'general.alignment': ", *a, " is not a power of two <= 2^30"));
      }
      f_.alignment_ = static_cast<uint64_t>(*a);
    }
    return absl::OkStatus();
  }

  absl::Status ReadTensorInfos(uint64_t tensor_count) {
    f_.tensors_.reserve(tensor_count);
    std::unordered_set<std::string> seen;
    for (uint64_t i = 0; i < tensor_count; ++i) {
      const std::string name_field = absl::StrCat("tensor[", i, "] name");
      ASSIGN_OR_RETURN(std::string name, r_.ReadString(name_field, kMaxTensorNameLength));
      if (name.empty()) return r_.Error(name_field, "empty tensor name");
      const std::string field = absl::StrCat("tensor '", name, "'");
      if (!seen.insert(name).second) return r_.Error(field, "duplicate tensor name");
      GgufTensorInfo info;
      info.name = std::move(name);
      RETURN_IF_ERROR(ReadTensorShape(field, &info));
      ASSIGN_OR_RETURN(info.offset, r_.Read<uint64_t>(field + " offset"));
      if (info.offset % f_.alignment_ != 0) {
        return r_.Error(field, absl::StrCat("data offset ", info.offset,
                                            " is not a multiple of the alignment ", f_.alignment_));
      }
      f_.tensors_.push_back(std::move(info));
    }
    return absl::OkStatus();
  }

  // n_dims, dims and type; computes size_bytes with overflow checks.
  absl::Status ReadTensorShape(const std::string& field, GgufTensorInfo* info) {
    ASSIGN_OR_RETURN(const uint32_t n_dims, r_.Read<uint32_t>(field + " n_dims"));
    if (n_dims == 0 || n_dims > kMaxDims) {
      return r_.Error(field, absl::StrCat("n_dims ", n_dims, " is not in 1..", kMaxDims));
    }
    int64_t elements = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      ASSIGN_OR_RETURN(const uint64_t dim, r_.Read<uint64_t>(field + " dims"));
      if (dim == 0 || dim > static_cast<uint64_t>(kMaxInt64)) {
        return r_.Error(field, absl::StrCat("dims[", d, "] = ", dim, " is not positive"));
      }
      if (elements > kMaxInt64 / static_cast<int64_t>(dim)) {
        return r_.Error(field, "element count overflows int64");
      }
      elements *= static_cast<int64_t>(dim);
      info->dims.push_back(static_cast<int64_t>(dim));
    }
    ASSIGN_OR_RETURN(const uint32_t raw_type, r_.Read<uint32_t>(field + " type"));
    const std::optional<GgmlTypeTraits> traits = GetGgmlTypeTraits(raw_type);
    if (!traits) {
      return r_.Error(field, absl::StrCat("unknown or unsupported ggml tensor type ", raw_type));
    }
    info->type = traits->type;
    if (info->dims[0] % traits->block_elements != 0) {
      return r_.Error(
          field, absl::StrCat("row length ", info->dims[0], " is not a multiple of the ",
                              std::string(traits->name), " block size ", traits->block_elements));
    }
    const int64_t blocks = elements / traits->block_elements;
    if (blocks > kMaxInt64 / traits->block_bytes) {
      return r_.Error(field, "byte size overflows int64");
    }
    info->size_bytes = static_cast<uint64_t>(blocks * traits->block_bytes);
    return absl::OkStatus();
  }

  absl::Status CheckDataSection() {
    const uint64_t end_of_infos = r_.pos();
    const uint64_t pad = (f_.alignment_ - end_of_infos % f_.alignment_) % f_.alignment_;
    f_.data_offset_ = end_of_infos + pad;
    if (f_.tensors_.empty()) return absl::OkStatus();
    if (f_.data_offset_ > f_.file_size_) {
      return absl::InvalidArgumentError(absl::StrCat(f_.path_, ": data section: starts at byte ",
                                                     f_.data_offset_, " beyond the file size ",
                                                     f_.file_size_));
    }
    const uint64_t data_size = f_.file_size_ - f_.data_offset_;
    for (const GgufTensorInfo& t : f_.tensors_) {
      if (t.offset > data_size || t.size_bytes > data_size - t.offset) {
        return absl::InvalidArgumentError(
            absl::StrCat(f_.path_, ": tensor '", t.name, "': data [", t.offset, ", +", t.size_bytes,
                         ") lies outside the ", data_size, "-byte data section"));
      }
    }
    std::vector<size_t> order(f_.tensors_.size());
    std::iota(order.begin(), order.end(), size_t{0});
    std::sort(order.begin(), order.end(),
              [&](size_t a, size_t b) { return f_.tensors_[a].offset < f_.tensors_[b].offset; });
    for (size_t k = 1; k < order.size(); ++k) {
      const GgufTensorInfo& prev = f_.tensors_[order[k - 1]];
      const GgufTensorInfo& cur = f_.tensors_[order[k]];
      if (prev.offset + prev.size_bytes > cur.offset) {
        return absl::InvalidArgumentError(absl::StrCat(
            f_.path_, ": tensor '", cur.name, "': data overlaps tensor '", prev.name, "'"));
      }
    }
    return absl::OkStatus();
  }

  GgufFile& f_;
  Reader r_;
};

// ---------------------------------------------------------------------------------------------
// GgufFile

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::Parse(std::unique_ptr<GgufFile> file) {
  Parser parser(*file);
  RETURN_IF_ERROR(parser.Run());
  file->BuildIndex();
  return file;
}

void GgufFile::BuildIndex() {
  metadata_index_.clear();
  tensor_index_.clear();
  for (size_t i = 0; i < metadata_.size(); ++i) metadata_index_.emplace(metadata_[i].first, i);
  for (size_t i = 0; i < tensors_.size(); ++i) tensor_index_.emplace(tensors_[i].name, i);
}

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT) return absl::NotFoundError(absl::StrCat(path, ": no such file"));
    return absl::Status(absl::ErrnoToStatusCode(err),
                        absl::StrCat(path, ": cannot open: ", std::strerror(err)));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
  }
  if (st.st_size == 0) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, ": magic: empty file"));
  }
  const auto size = static_cast<uint64_t>(st.st_size);
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_errno = errno;
  ::close(fd);
  if (map == MAP_FAILED) {
    return absl::InternalError(absl::StrCat(path, ": mmap failed: ", std::strerror(map_errno)));
  }
  std::unique_ptr<GgufFile> file(new GgufFile());
  file->path_ = path;
  file->mapping_ = map;
  file->base_ = static_cast<const uint8_t*>(map);
  file->file_size_ = size;
  return Parse(std::move(file));
}

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::FromBuffer(absl::Span<const uint8_t> bytes) {
  std::unique_ptr<GgufFile> file(new GgufFile());
  file->path_ = "<buffer>";
  file->owned_.assign(bytes.begin(), bytes.end());
  file->base_ = file->owned_.data();
  file->file_size_ = file->owned_.size();
  return Parse(std::move(file));
}

GgufFile::~GgufFile() {
  if (mapping_ != nullptr) ::munmap(mapping_, file_size_);
}

const GgufValue* GgufFile::Find(std::string_view key) const {
  const auto it = metadata_index_.find(key);
  return it == metadata_index_.end() ? nullptr : &metadata_[it->second].second;
}

const GgufTensorInfo* GgufFile::FindTensor(std::string_view name) const {
  const auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

absl::Span<const uint8_t> GgufFile::TensorData(const GgufTensorInfo& info) const {
  if (data_offset_ > file_size_) return {};
  const uint64_t data_size = file_size_ - data_offset_;
  if (info.offset > data_size || info.size_bytes > data_size - info.offset) return {};
  return absl::Span<const uint8_t>(base_ + data_offset_ + info.offset, info.size_bytes);
}

absl::StatusOr<std::vector<float>> GgufFile::ReadTensorF32(std::string_view name) const {
  const GgufTensorInfo* info = FindTensor(name);
  if (info == nullptr) {
    return absl::NotFoundError(absl::StrCat(path_, ": tensor '", std::string(name), "' not found"));
  }
  const absl::Span<const uint8_t> bytes = TensorData(*info);
  std::vector<float> out(static_cast<size_t>(info->NumElements()));
  absl::Status s = cpu::DequantizeToF32(info->type, bytes.data(), info->NumElements(), out.data());
  if (!s.ok())
    return AddContext(s, absl::StrCat("(", path_, ": tensor '", std::string(name), "')"));
  return out;
}

}  // namespace xkv
