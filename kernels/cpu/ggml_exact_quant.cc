// ggml_exact's quantized products: activation rows to Q8_0/Q8_1 blocks, Q4_1/Q8_0 weight
// matrices kept in their blocks, and their integer dot products (ggml_exact.h says how).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/ggml_exact.h"
#include "kernels/cpu/ggml_exact_lanes.h"

namespace xkv::cpu::ggml {

namespace {

#ifdef XKV_GGML_EXACT_AVX2
// Lane k of the result: Σ u[4k..4k+3] · s[4k..4k+3] (u unsigned, s signed bytes), exact.
inline __m256i DotBytes(__m256i u, __m256i s) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#else
  // u8 × s8 pairs → s16 (the products here stay far from saturation), then pairs → s32.
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}
#endif

float Half(uint16_t h) { return F16ToF32(h); }

uint16_t ReadU16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// Weight rows as the dot kernels read them: per row its block scales, minimums (Q4_1) and values,
// `stride` bytes per block. Q4_1 values are packed nibbles (stride 16) or, for a chunk unpacked
// once and reused over many activation rows, one value per byte (stride 32).
struct RowSpan {
  const float* d;
  const float* m;
  const uint8_t* q;
};

// Dot products of activation row `a` with R weight rows at once (R independent fma chains).
// Q4_1 × Q8_1: Sum8(lanes) + Σ fma(m_w, s_a); Q8_0 × Q8_0: Sum8(lanes). Lane k of a block takes the
// integer sum of its elements 4k..4k+3, scaled by d_w·d_a with one fma.
template <bool kQ4_1, bool kPackedNibbles, int R>
void DotRows(const RowSpan* w, int64_t nb, const ActBlock* a, float* out) {
  constexpr int64_t kStride = kPackedNibbles ? kQBlock / 2 : kQBlock;
#ifdef XKV_GGML_EXACT_AVX2
  __m256 acc[R];
  float summs[R];
  for (int r = 0; r < R; ++r) {
    acc[r] = _mm256_setzero_ps();
    summs[r] = 0.f;
  }
  const __m128i low4 = _mm_set1_epi8(0x0f);
  for (int64_t b = 0; b < nb; ++b) {
    const __m256i aq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a[b].q));
    for (int r = 0; r < R; ++r) {
      const uint8_t* q = w[r].q + b * kStride;
      __m256i wq;
      if constexpr (kPackedNibbles) {
        const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q));
        wq =
            _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(raw, 4), low4), _mm_and_si128(raw, low4));
      } else {
        wq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q));
      }
      __m256i p;
      if constexpr (kQ4_1) {
        summs[r] = std::fma(w[r].m[b], a[b].s, summs[r]);
        p = DotBytes(wq, aq);
      } else {  // |w| × (a with w's sign): the same products, as u8 × s8
        p = DotBytes(_mm256_sign_epi8(wq, wq), _mm256_sign_epi8(aq, wq));
      }
      acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(w[r].d[b] * a[b].d), _mm256_cvtepi32_ps(p), acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) out[r] = kQ4_1 ? HSum8(acc[r]) + summs[r] : HSum8(acc[r]);
#else
  for (int r = 0; r < R; ++r) {
    float lanes[8] = {};
    float summs = 0.f;
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* q = w[r].q + b * kStride;
      if constexpr (kQ4_1) summs = std::fma(w[r].m[b], a[b].s, summs);
      const float dd = w[r].d[b] * a[b].d;
      for (int k = 0; k < 8; ++k) {
        int32_t sum = 0;
        for (int i = 4 * k; i < 4 * k + 4; ++i) {
          int32_t wq;
          if constexpr (kPackedNibbles) {
            wq = i < 16 ? q[i] & 0x0f : q[i - 16] >> 4;
          } else {
            wq = kQ4_1 ? q[i] : static_cast<int8_t>(q[i]);
          }
          sum += wq * static_cast<int32_t>(a[b].q[i]);
        }
        lanes[k] = std::fma(dd, static_cast<float>(sum), lanes[k]);
      }
    }
    out[r] = kQ4_1 ? Sum8(lanes) + summs : Sum8(lanes);
  }
#endif
}

// Products of one activation row with `n` weight rows, four rows at a time.
template <bool kQ4_1, bool kPackedNibbles>
void DotSpans(const RowSpan* w, int64_t n, int64_t nb, const ActBlock* a, float* out) {
  int64_t r = 0;
  for (; r + 4 <= n; r += 4) DotRows<kQ4_1, kPackedNibbles, 4>(w + r, nb, a, out + r);
  for (; r < n; ++r) DotRows<kQ4_1, kPackedNibbles, 1>(w + r, nb, a, out + r);
}

}  // namespace

void QuantizeRow(const float* x, int64_t k, ActBlock* out) {
  for (int64_t b = 0; b < k / kQBlock; ++b) {
    const float* xb = x + b * kQBlock;
    float amax = 0.f;
    for (int64_t i = 0; i < kQBlock; ++i) amax = std::max(amax, std::fabs(xb[i]));
    const float d = amax / 127.f;
    const float id = amax != 0.f ? 127.f / amax : 0.f;
    int32_t sum = 0;
    for (int64_t i = 0; i < kQBlock; ++i) {
      const int32_t q = static_cast<int32_t>(std::nearbyint(xb[i] * id));
      out[b].q[i] = static_cast<int8_t>(q);
      sum += q;
    }
    out[b].d = RoundF16(d);
    out[b].s = RoundF16(d * static_cast<float>(sum));
  }
}

bool IsExactQuantType(GgmlType type) {
  return type == GgmlType::kQ4_1 || type == GgmlType::kQ8_0 || IsExactKQuantType(type);
}

absl::Status QuantMatrix::AppendRows(GgmlType type, const uint8_t* data, size_t size, int64_t rows,
                                     int64_t cols) {
  if (IsExactKQuantType(type) || (rows_ > 0 && is_kquant())) {
    return AppendKRows(type, data, size, rows, cols);
  }
  if (!IsExactQuantType(type)) {
    return absl::InvalidArgumentError(absl::StrCat("ggml_exact: weight type ",
                                                   static_cast<int>(type),
                                                   " is not Q4_1, Q8_0, Q4_K, Q5_K or Q6_K"));
  }
  if (rows < 0 || cols <= 0 || cols % kQBlock != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("ggml_exact: bad weight shape ", rows, " x ", cols));
  }
  if (rows_ > 0 && (type != type_ || cols != cols_)) {
    return absl::InvalidArgumentError("ggml_exact: fused rows differ in type or width");
  }
  const int64_t nb = cols / kQBlock;
  const int64_t block_bytes = type == GgmlType::kQ4_1 ? 20 : 34;
  if (rows == 0) return absl::OkStatus();
  if (data == nullptr || rows > static_cast<int64_t>(size / (nb * block_bytes))) {
    return absl::InvalidArgumentError(
        absl::StrCat("ggml_exact: ", size, " bytes for ", rows, " x ", cols, " weights"));
  }
  type_ = type;
  cols_ = cols;
  const int64_t packed = packed_bytes(), value_offset = type == GgmlType::kQ4_1 ? 4 : 2;
  d_.reserve(d_.size() + rows * nb);
  if (type == GgmlType::kQ4_1) m_.reserve(m_.size() + rows * nb);
  qs_.reserve(qs_.size() + rows * nb * packed);
  for (int64_t i = 0; i < rows * nb; ++i) {
    const uint8_t* src = data + i * block_bytes;
    d_.push_back(Half(ReadU16(src)));
    if (type == GgmlType::kQ4_1) m_.push_back(Half(ReadU16(src + 2)));
    qs_.insert(qs_.end(), src + value_offset, src + value_offset + packed);
  }
  rows_ += rows;
  return absl::OkStatus();
}

int64_t QuantMatrix::Bytes() const {
  return static_cast<int64_t>((d_.size() + m_.size()) * sizeof(float) + qs_.size() + kdata_.size());
}

QuantMatrix::Block QuantMatrix::block(int64_t r, int64_t b) const {
  Block out;
  out.d = d(r)[b];
  out.m = type_ == GgmlType::kQ4_1 ? m(r)[b] : 0.f;
  const uint8_t* q = qs(r) + b * packed_bytes();
  for (int64_t j = 0; j < kQBlock; ++j) {
    out.q[j] = type_ == GgmlType::kQ4_1 ? static_cast<int8_t>(j < 16 ? q[j] & 0x0f : q[j - 16] >> 4)
                                        : static_cast<int8_t>(q[j]);
  }
  return out;
}

absl::Status LaunchQuantMatmul(const QuantMatrix& w, const ActBlock* a, int64_t m, float* c,
                               int64_t ldc, bool accumulate, ThreadPool* pool) {
  if (w.empty()) return absl::InvalidArgumentError("ggml_exact: empty weight matrix");
  if (w.is_kquant()) {
    return absl::InvalidArgumentError("ggml_exact: K-quant weights take Q8_K activations");
  }
  if (m < 0 || ldc < w.rows() || (m > 0 && (a == nullptr || c == nullptr))) {
    return absl::InvalidArgumentError("ggml_exact: bad matmul arguments");
  }
  const int64_t nb = w.blocks_per_row();
  constexpr int64_t kRowsPerItem = 16;
  const int64_t items = (w.rows() + kRowsPerItem - 1) / kRowsPerItem;
  const bool q4_1 = w.type() == GgmlType::kQ4_1;
  // With several activation rows a Q4_1 chunk is unpacked once (one value per byte) and reused;
  // one row (decode) reads the packed nibbles, half the bytes.
  const bool unpack = q4_1 && m > 1;
  ParallelFor(pool, items, [&](int64_t item) {
    const int64_t r0 = item * kRowsPerItem, n = std::min(w.rows(), r0 + kRowsPerItem) - r0;
    thread_local std::vector<uint8_t> unpacked;
    RowSpan rows[kRowsPerItem];
    if (unpack) unpacked.resize(n * nb * kQBlock);
    for (int64_t r = 0; r < n; ++r) {
      rows[r] = {w.d(r0 + r), q4_1 ? w.m(r0 + r) : nullptr, w.qs(r0 + r)};
      if (!unpack) continue;
      uint8_t* dst = unpacked.data() + r * nb * kQBlock;
      for (int64_t b = 0; b < nb; ++b) {
        for (int64_t j = 0; j < kQBlock / 2; ++j) {
          const uint8_t byte = rows[r].q[b * kQBlock / 2 + j];
          dst[b * kQBlock + j] = byte & 0x0f;
          dst[b * kQBlock + j + kQBlock / 2] = byte >> 4;
        }
      }
      rows[r].q = dst;
    }
    float dots[kRowsPerItem];
    for (int64_t i = 0; i < m; ++i) {
      const ActBlock* ai = a + i * nb;
      if (unpack) {
        DotSpans<true, false>(rows, n, nb, ai, dots);
      } else if (q4_1) {
        DotSpans<true, true>(rows, n, nb, ai, dots);
      } else {
        DotSpans<false, false>(rows, n, nb, ai, dots);
      }
      float* ci = c + i * ldc + r0;
      for (int64_t r = 0; r < n; ++r) ci[r] = accumulate ? ci[r] + dots[r] : dots[r];
    }
  });
  return absl::OkStatus();
}

}  // namespace xkv::cpu::ggml
