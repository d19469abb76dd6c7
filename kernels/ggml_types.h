// GGML tensor element types as numbered in the GGUF format, with their block geometry.
#ifndef XKV_KERNELS_GGML_TYPES_H_
#define XKV_KERNELS_GGML_TYPES_H_

#include <cstdint>
#include <optional>
#include <string_view>

namespace xkv {

enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ8_0 = 8,
  kQ2_K = 10,  // K-quants: super-blocks of 256 elements (ggml's QK_K)
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kBF16 = 30,
};

struct GgmlTypeTraits {
  GgmlType type;
  std::string_view name;
  int64_t block_elements;  // elements per block (1 for plain floats)
  int64_t block_bytes;     // bytes per block
};

// Traits of a supported type, or nullopt for a type number xkv does not read.
std::optional<GgmlTypeTraits> GetGgmlTypeTraits(uint32_t type);

}  // namespace xkv

#endif  // XKV_KERNELS_GGML_TYPES_H_
