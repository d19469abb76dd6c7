// ggml_exact's K-quant products (ggml_exact.h): Q8_K activation blocks and Q4_K / Q5_K / Q6_K
// weight rows multiplied as llama.cpp's CPU backend does on an AVX2 (or AVX-512) x86 host.
//
// Every integer sum below is exact (the SIMD code's int16 steps cannot overflow for |q8| <= 127),
// so only the fp32 steps decide the bits, and they are reproduced one by one:
//  - ggml_vec_dot_q{4,5,6}_K_q8_K (arch/x86/quants.c, the AVX2 branch, also taken by AVX-512
//    builds): per super-block an int32 vector of 8 lanes, lane k summing sc · w · q8 over the
//    elements e with (e mod 32) / 4 == k (maddubs pairs, then madd with the sub-block scale); then
//    acc[k] = fma(d_a · d_w, float(lane k), acc[k]) and hsum_float_8 (Sum8) at the end. Q4_K adds
//    its minimums in 4 lanes, acc_m[t] = fma(-d_a · dmin_w, float(mins · bsums of sub-blocks 2t,
//    2t + 1), acc_m[t]), reduced as (m0 + m2) + (m1 + m3); Q5_K adds them as one running fma
//    (GCC contracts `summs += dmin * M`); Q6_K subtracts 32 · Σ sc · bsums from lane t per pair of
//    16-element groups 2t, 2t + 1 before the fma.
//  - Q4_K tensors with a row count divisible by 8 are repacked by llama.cpp (repack.cpp,
//    block_q4_Kx8) and multiplied by ggml_gemv/gemm_q4_K_8x8_q8_K: per output one chain over the
//    super-blocks, acc = fma(float(I), d_w · d_a, acc) and acc_min = fma(float(M), dmin_w · d_a,
//    acc_min) with I = Σ sc · Σ w · q8 and M = Σ min · Σ q8, and the output is acc - acc_min.
//    The 4-row gemm quantizes its activations with the same Q8_K rule, so one or many rows give
//    the same bits.
// Compiled with -ffp-contract=off like every ggml_exact*.cc (kernels/CMakeLists.txt).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/ggml_exact.h"
#include "kernels/cpu/ggml_exact_lanes.h"

namespace xkv::cpu::ggml {

namespace {

constexpr int64_t kQ4KBytes = 144;  // fp16 d, dmin; 12 bytes of 6-bit scales/mins; 128 bytes qs
constexpr int64_t kQ5KBytes = 176;  // as Q4_K + 32 bytes of fifth bits (before qs)
constexpr int64_t kQ6KBytes = 210;  // 128 bytes ql; 64 bytes qh; 16 int8 scales; fp16 d
// ggml-cpu takes its tiled matmul from this many activation rows on (ggml_tiled_min_batch).
constexpr int64_t kTiledMinRows = 8;

int64_t SuperBlockBytes(GgmlType type) {
  switch (type) {
    case GgmlType::kQ4_K:
      return kQ4KBytes;
    case GgmlType::kQ5_K:
      return kQ5KBytes;
    case GgmlType::kQ6_K:
      return kQ6KBytes;
    default:
      return 0;
  }
}

float Half(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, sizeof(h));
  return F16ToF32(h);
}

// Q4_K / Q5_K: the 6-bit scales and minimums of the 8 sub-blocks (ggml's get_scale_min_k4).
void ScalesMins(const uint8_t* q, int32_t* sc, int32_t* mn) {
  for (int j = 0; j < 8; ++j) {
    if (j < 4) {
      sc[j] = q[j] & 63;
      mn[j] = q[j + 4] & 63;
    } else {
      sc[j] = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
      mn[j] = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
  }
}

// The 256 unsigned weight values of one super-block, in element order.
void Values(GgmlType type, const uint8_t* b, uint8_t* w) {
  if (type == GgmlType::kQ6_K) {
    const uint8_t* ql = b;
    const uint8_t* qh = b + 128;
    for (int half = 0; half < 2; ++half) {
      for (int l = 0; l < 32; ++l) {
        const uint8_t* L = ql + 64 * half;
        const uint8_t h = qh[32 * half + l];
        uint8_t* o = w + 128 * half;
        o[l] = (L[l] & 0xF) | ((h & 3) << 4);
        o[l + 32] = (L[l + 32] & 0xF) | (((h >> 2) & 3) << 4);
        o[l + 64] = (L[l] >> 4) | (((h >> 4) & 3) << 4);
        o[l + 96] = (L[l + 32] >> 4) | (((h >> 6) & 3) << 4);
      }
    }
    return;
  }
  const bool q5 = type == GgmlType::kQ5_K;
  const uint8_t* qh = b + 16;
  const uint8_t* qs = b + (q5 ? 48 : 16);
  for (int j = 0; j < 4; ++j) {  // 64 elements per pair of sub-blocks
    for (int l = 0; l < 32; ++l) {
      const uint8_t byte = qs[32 * j + l];
      w[64 * j + l] = (byte & 0xF) | (q5 ? ((qh[l] >> (2 * j)) & 1) << 4 : 0);
      w[64 * j + 32 + l] = (byte >> 4) | (q5 ? ((qh[l] >> (2 * j + 1)) & 1) << 4 : 0);
    }
  }
}

// ggml_vec_dot_q{4,5,6}_K_q8_K, AVX2 lanes (see the top of the file).
// row: the raw super-blocks; values: their unpacked weights (Values, once per row).
float DotVec(GgmlType type, const uint8_t* row, const uint8_t* values, const Q8KBlock* a,
             int64_t nb) {
  const int64_t bytes = SuperBlockBytes(type);
  float acc[8] = {}, acc_m[4] = {}, summs = 0.f;
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* blk = row + b * bytes;
    const uint8_t* w = values + b * kKBlock;
    const Q8KBlock& y = a[b];
    int32_t lane[8] = {};
    float d;
    if (type == GgmlType::kQ6_K) {
      const int8_t* sc = reinterpret_cast<const int8_t*>(blk + 192);
      d = y.d * Half(blk + 208);
      for (int e = 0; e < kKBlock; ++e) lane[(e % 32) / 4] += sc[e / 16] * w[e] * y.q[e];
      for (int t = 0; t < 8; ++t) {
        lane[t] -= 32 * (y.bsums[2 * t] * sc[2 * t] + y.bsums[2 * t + 1] * sc[2 * t + 1]);
      }
    } else {
      int32_t sc[8], mn[8];
      ScalesMins(blk + 4, sc, mn);
      d = y.d * Half(blk);
      const float dmin = -y.d * Half(blk + 2);
      int32_t prod[4];
      for (int t = 0; t < 4; ++t) {
        prod[t] = mn[2 * t] * (y.bsums[4 * t] + y.bsums[4 * t + 1]) +
                  mn[2 * t + 1] * (y.bsums[4 * t + 2] + y.bsums[4 * t + 3]);
      }
      if (type == GgmlType::kQ4_K) {
        for (int t = 0; t < 4; ++t)
          acc_m[t] = std::fma(dmin, static_cast<float>(prod[t]), acc_m[t]);
      } else {
        summs = std::fma(dmin, static_cast<float>(prod[0] + prod[1] + prod[2] + prod[3]), summs);
      }
      for (int e = 0; e < kKBlock; ++e) lane[(e % 32) / 4] += sc[e / 32] * w[e] * y.q[e];
    }
    for (int k = 0; k < 8; ++k) acc[k] = std::fma(d, static_cast<float>(lane[k]), acc[k]);
  }
  const float sum = Sum8(acc);
  if (type == GgmlType::kQ4_K) return sum + ((acc_m[0] + acc_m[2]) + (acc_m[1] + acc_m[3]));
  if (type == GgmlType::kQ5_K) return sum + summs;
  return sum;
}

// ggml_gemv/gemm_q4_K_8x8_q8_K on repacked Q4_K: one chain per output (top of the file).
float DotRepackedQ4K(const uint8_t* row, const uint8_t* values, const Q8KBlock* a, int64_t nb) {
  float acc = 0.f, acc_min = 0.f;
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* blk = row + b * kQ4KBytes;
    const uint8_t* w = values + b * kKBlock;
    const Q8KBlock& y = a[b];
    int32_t sc[8], mn[8];
    ScalesMins(blk + 4, sc, mn);
    int32_t dot = 0, mins = 0;
    for (int s = 0; s < 8; ++s) {
      int32_t sub = 0;
      for (int l = 0; l < 32; ++l) sub += w[32 * s + l] * y.q[32 * s + l];
      dot += sc[s] * sub;
      mins += mn[s] * (y.bsums[2 * s] + y.bsums[2 * s + 1]);
    }
    acc = std::fma(static_cast<float>(dot), Half(blk) * y.d, acc);
    acc_min = std::fma(static_cast<float>(mins), Half(blk + 2) * y.d, acc_min);
  }
  return acc - acc_min;
}

// The exact integer sums of one super-block: S1 = Σ_s sc_s · Σ (w - bias) · q8 over sub-block s
// (Q6_K's bias 32 is folded in) and, for Q4_K / Q5_K, S2 = Σ_s min_s · Σ q8 over sub-block s.
void SuperBlockSums(GgmlType type, const uint8_t* blk, const uint8_t* w, const Q8KBlock& y,
                    int32_t* s1, int32_t* s2) {
  *s1 = *s2 = 0;
  if (type == GgmlType::kQ6_K) {
    const int8_t* sc = reinterpret_cast<const int8_t*>(blk + 192);
    for (int g = 0; g < 16; ++g) {
      int32_t raw = 0;
      for (int l = 0; l < 16; ++l) raw += w[16 * g + l] * y.q[16 * g + l];
      *s1 += sc[g] * (raw - 32 * y.bsums[g]);
    }
    return;
  }
  int32_t sc[8], mn[8];
  ScalesMins(blk + 4, sc, mn);
  for (int s = 0; s < 8; ++s) {
    int32_t raw = 0;
    for (int l = 0; l < 32; ++l) raw += w[32 * s + l] * y.q[32 * s + l];
    *s1 += sc[s] * raw;
    *s2 += mn[s] * (y.bsums[2 * s] + y.bsums[2 * s + 1]);
  }
}

// ggml-cpu's tiled K-quant matmul (tiled/tiled.cpp), which takes batches of >= 8 activation rows
// on weights that are not repacked: per output one chain over the super-blocks,
// r = float(S1) · d_w, r = fma(-dmin_w, float(S2), r) with minimums, then buf += r · d_a: added
// after rounding in the AVX-512 VNNI kernel, one fma in the AVX2 one.
float DotTiled(GgmlType type, const uint8_t* row, const uint8_t* values, const Q8KBlock* a,
               int64_t nb) {
  const int64_t bytes = SuperBlockBytes(type);
  const bool has_min = type != GgmlType::kQ6_K;
  float buf = 0.f;
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* blk = row + b * bytes;
    int32_t s1, s2;
    SuperBlockSums(type, blk, values + b * kKBlock, a[b], &s1, &s2);
    float r = static_cast<float>(s1) * Half(has_min ? blk : blk + 208);
    if (has_min) r = std::fma(-Half(blk + 2), static_cast<float>(s2), r);
#if defined(__AVX512VNNI__) && defined(__AVX512VL__) && defined(__AVX512DQ__)
    buf = buf + r * a[b].d;
#else
    buf = std::fma(r, a[b].d, buf);
#endif
  }
  return buf;
}

}  // namespace

bool IsExactKQuantType(GgmlType type) { return SuperBlockBytes(type) > 0; }

void QuantizeRowQ8K(const float* x, int64_t k, Q8KBlock* out) {
  for (int64_t b = 0; b < k / kKBlock; ++b) {
    const float* xb = x + b * kKBlock;
    Q8KBlock& y = out[b];
    float amax = 0.f, max = 0.f;
    for (int64_t j = 0; j < kKBlock; ++j) {
      if (std::fabs(xb[j]) > amax) {
        amax = std::fabs(xb[j]);
        max = xb[j];
      }
    }
    if (amax == 0.f) {
      y.d = 0.f;
      std::memset(y.q, 0, sizeof(y.q));
      std::memset(y.bsums, 0, sizeof(y.bsums));
      continue;
    }
    const float iscale = -127.f / max;
    for (int64_t j = 0; j < kKBlock; ++j) {
      y.q[j] = static_cast<int8_t>(std::min(127.f, std::nearbyint(iscale * xb[j])));
    }
    for (int64_t g = 0; g < kKBlock / 16; ++g) {
      int32_t sum = 0;
      for (int64_t i = 0; i < 16; ++i) sum += y.q[16 * g + i];
      y.bsums[g] = static_cast<int16_t>(sum);
    }
    y.d = 1 / iscale;
  }
}

absl::Status QuantMatrix::AppendKRows(GgmlType type, const uint8_t* data, size_t size, int64_t rows,
                                      int64_t cols) {
  if (!IsExactKQuantType(type)) {
    return absl::InvalidArgumentError(absl::StrCat("ggml_exact: weight type ",
                                                   static_cast<int>(type),
                                                   " joins K-quant rows (Q4_K, Q5_K, Q6_K)"));
  }
  if (rows_ > 0 && !is_kquant()) {
    return absl::InvalidArgumentError("ggml_exact: K-quant rows join Q4_1/Q8_0 rows");
  }
  if (rows < 0 || cols <= 0 || cols % kKBlock != 0 || (rows_ > 0 && cols != cols_)) {
    return absl::InvalidArgumentError(
        absl::StrCat("ggml_exact: bad K-quant weight shape ", rows, " x ", cols));
  }
  const int64_t row_bytes = cols / kKBlock * SuperBlockBytes(type);
  if (rows == 0) return absl::OkStatus();
  if (data == nullptr || rows > static_cast<int64_t>(size) / row_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("ggml_exact: ", size, " bytes for ", rows, " x ", cols, " weights"));
  }
  Segment seg;
  seg.type = type;
  seg.row0 = rows_;
  seg.rows = rows;
  seg.row_bytes = row_bytes;
  seg.offset = kdata_.size();
  seg.repacked = type == GgmlType::kQ4_K && rows % 8 == 0;
  kdata_.insert(kdata_.end(), data, data + rows * row_bytes);
  segments_.push_back(seg);
  type_ = segments_.front().type;
  cols_ = cols;
  rows_ += rows;
  return absl::OkStatus();
}

absl::Status LaunchKQuantMatmul(const QuantMatrix& w, const Q8KBlock* a, int64_t m, float* c,
                                int64_t ldc, bool accumulate, ThreadPool* pool) {
  if (w.empty() || !w.is_kquant()) {
    return absl::InvalidArgumentError("ggml_exact: not a K-quant weight matrix");
  }
  if (m < 0 || ldc < w.rows() || (m > 0 && (a == nullptr || c == nullptr))) {
    return absl::InvalidArgumentError("ggml_exact: bad matmul arguments");
  }
  const int64_t nb = w.cols() / kKBlock;
  constexpr int64_t kRowsPerItem = 16;
  const int64_t items = (w.rows() + kRowsPerItem - 1) / kRowsPerItem;
  ParallelFor(pool, items, [&](int64_t item) {
    const int64_t r0 = item * kRowsPerItem, r1 = std::min(w.rows(), r0 + kRowsPerItem);
    thread_local std::vector<uint8_t> values;  // one row's unpacked weights, reused over a's rows
    values.resize(nb * kKBlock);
    for (int64_t r = r0; r < r1; ++r) {
      const QuantMatrix::Segment* seg = &w.segments_.front();
      for (const QuantMatrix::Segment& s : w.segments_) {
        if (r >= s.row0 && r < s.row0 + s.rows) seg = &s;
      }
      const uint8_t* row = w.kdata_.data() + seg->offset + (r - seg->row0) * seg->row_bytes;
      const int64_t block_bytes = SuperBlockBytes(seg->type);
      for (int64_t b = 0; b < nb; ++b) {
        Values(seg->type, row + b * block_bytes, values.data() + b * kKBlock);
      }
      for (int64_t i = 0; i < m; ++i) {
        const Q8KBlock* ai = a + i * nb;
        const float dot = seg->repacked        ? DotRepackedQ4K(row, values.data(), ai, nb)
                          : m >= kTiledMinRows ? DotTiled(seg->type, row, values.data(), ai, nb)
                                               : DotVec(seg->type, row, values.data(), ai, nb);
        float& out = c[i * ldc + r];
        out = accumulate ? out + dot : dot;
      }
    }
  });
  return absl::OkStatus();
}

}  // namespace xkv::cpu::ggml
