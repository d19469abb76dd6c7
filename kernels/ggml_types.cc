#include "kernels/ggml_types.h"

namespace xkv {

std::optional<GgmlTypeTraits> GetGgmlTypeTraits(uint32_t type) {
  switch (static_cast<GgmlType>(type)) {
    case GgmlType::kF32:
      return GgmlTypeTraits{GgmlType::kF32, "F32", 1, 4};
    case GgmlType::kF16:
      return GgmlTypeTraits{GgmlType::kF16, "F16", 1, 2};
    case GgmlType::kBF16:
      return GgmlTypeTraits{GgmlType::kBF16, "BF16", 1, 2};
    case GgmlType::kQ4_0:  // fp16 scale + 16 bytes of nibbles
      return GgmlTypeTraits{GgmlType::kQ4_0, "Q4_0", 32, 18};
    case GgmlType::kQ4_1:  // fp16 scale + fp16 min + 16 bytes of nibbles
      return GgmlTypeTraits{GgmlType::kQ4_1, "Q4_1", 32, 20};
    case GgmlType::kQ8_0:  // fp16 scale + 32 int8
      return GgmlTypeTraits{GgmlType::kQ8_0, "Q8_0", 32, 34};
  }
  return std::nullopt;
}

}  // namespace xkv
