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
    // K-quants (ggml-common.h): 256 elements per super-block.
    case GgmlType::kQ2_K:  // 16 4-bit scale/min pairs + 64 bytes of 2-bit quants + fp16 d, dmin
      return GgmlTypeTraits{GgmlType::kQ2_K, "Q2_K", 256, 84};
    case GgmlType::kQ3_K:  // 32 bytes high bits + 64 bytes low 2 bits + 12 bytes 6-bit scales + d
      return GgmlTypeTraits{GgmlType::kQ3_K, "Q3_K", 256, 110};
    case GgmlType::kQ4_K:  // fp16 d, dmin + 12 bytes 6-bit scales/mins + 128 bytes of nibbles
      return GgmlTypeTraits{GgmlType::kQ4_K, "Q4_K", 256, 144};
    case GgmlType::kQ5_K:  // as Q4_K + 32 bytes of fifth bits
      return GgmlTypeTraits{GgmlType::kQ5_K, "Q5_K", 256, 176};
    case GgmlType::kQ6_K:  // 128 bytes low nibbles + 64 bytes high 2 bits + 16 int8 scales + d
      return GgmlTypeTraits{GgmlType::kQ6_K, "Q6_K", 256, 210};
  }
  return std::nullopt;
}

}  // namespace xkv
