#include "kernels/cpu/ggml_exact.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/half.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define XKV_GGML_EXACT_AVX2 1
#endif

// Every rounding step below is spelled out; the build must not fuse a * b + c on its own
// (CMake compiles this file with -ffp-contract=off).

namespace xkv::cpu::ggml {
namespace {

constexpr int64_t kLanes = 16;  // tinyBLAS / vec_dot_f16 vector width (AVX-512)

float Half(uint16_t h) { return F16ToF32(h); }
float RoundF16(float x) { return F16ToF32(F32ToF16(x)); }

uint16_t ReadU16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// Q4_1 × Q8_1: Sum8(lanes) + Σ m_w·s_a, the minimum term accumulated with fma.
float DotQ4_1(const QuantMatrix::Block* w, const ActBlock* a, int64_t nb) {
  float summs = 0.f;
#ifdef XKV_GGML_EXACT_AVX2
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    summs = std::fma(w[b].m, a[b].s, summs);
    const __m256i wq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[b].q));
    const __m256i aq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a[b].q));
    // u8 × s8 pairs → s16 (at most 2·15·127, no saturation), then pairs → s32: lane k holds
    // elements 4k..4k+3.
    const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(wq, aq), ones);
    acc = _mm256_fmadd_ps(_mm256_set1_ps(w[b].d * a[b].d), _mm256_cvtepi32_ps(p), acc);
  }
  float lanes[8];
  _mm256_storeu_ps(lanes, acc);
#else
  float lanes[8] = {};
  for (int64_t b = 0; b < nb; ++b) {
    summs = std::fma(w[b].m, a[b].s, summs);
    const float dd = w[b].d * a[b].d;
    for (int k = 0; k < 8; ++k) {
      int32_t s = 0;
      for (int i = 4 * k; i < 4 * k + 4; ++i) {
        s += static_cast<uint8_t>(w[b].q[i]) * static_cast<int32_t>(a[b].q[i]);
      }
      lanes[k] = std::fma(dd, static_cast<float>(s), lanes[k]);
    }
  }
#endif
  return Sum8(lanes) + summs;
}

// Q8_0 × Q8_0: Sum8(lanes).
float DotQ8_0(const QuantMatrix::Block* w, const ActBlock* a, int64_t nb) {
#ifdef XKV_GGML_EXACT_AVX2
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const __m256i wq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[b].q));
    const __m256i aq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a[b].q));
    // |w| × (a with w's sign): the same products, as u8 × s8.
    const __m256i p = _mm256_madd_epi16(
        _mm256_maddubs_epi16(_mm256_sign_epi8(wq, wq), _mm256_sign_epi8(aq, wq)), ones);
    acc = _mm256_fmadd_ps(_mm256_set1_ps(w[b].d * a[b].d), _mm256_cvtepi32_ps(p), acc);
  }
  float lanes[8];
  _mm256_storeu_ps(lanes, acc);
#else
  float lanes[8] = {};
  for (int64_t b = 0; b < nb; ++b) {
    const float dd = w[b].d * a[b].d;
    for (int k = 0; k < 8; ++k) {
      int32_t s = 0;
      for (int i = 4 * k; i < 4 * k + 4; ++i) {
        s += static_cast<int32_t>(w[b].q[i]) * static_cast<int32_t>(a[b].q[i]);
      }
      lanes[k] = std::fma(dd, static_cast<float>(s), lanes[k]);
    }
  }
#endif
  return Sum8(lanes);
}

// tinyBLAS (n_new > 1): lane j accumulates products j, j + 16, ... with fma; then Sum16.
float DotF16Batched(const float* a, const float* b, int64_t n) {
  float lanes[kLanes] = {};
  for (int64_t l = 0; l < n; l += kLanes) {
    for (int64_t j = 0; j < kLanes; ++j) lanes[j] = std::fma(a[l + j], b[l + j], lanes[j]);
  }
  return Sum16(lanes);
}

// ggml_vec_dot_f16 (one token): 4 accumulators of 16 lanes over 64-element steps, reduced as
// (acc0 + acc2) + (acc1 + acc3), then Sum16; a tail beyond the last full step is added in double.
float DotF16Single(const float* a, const float* b, int64_t n) {
  float acc[4 * kLanes] = {};
  const int64_t full = n - n % (4 * kLanes);
  for (int64_t l = 0; l < full; l += 4 * kLanes) {
    for (int64_t j = 0; j < 4 * kLanes; ++j) acc[j] = std::fma(a[l + j], b[l + j], acc[j]);
  }
  float lanes[kLanes];
  for (int64_t j = 0; j < kLanes; ++j) {
    lanes[j] = (acc[j] + acc[2 * kLanes + j]) + (acc[kLanes + j] + acc[3 * kLanes + j]);
  }
  double sum = Sum16(lanes);
  for (int64_t i = full; i < n; ++i) sum += static_cast<double>(a[i] * b[i]);
  return static_cast<float>(sum);
}

// One (query, head) of LaunchAttention. scores: scratch of at least RoundUp16(visible) floats;
// lanes: scratch of 4 * 16 * head_dim floats.
void AttendOne(const AttentionShape& s, const float* q, const float* k, const float* v,
               int64_t visible, bool batched, float* scores, float* lanes, float* out) {
  const int64_t hd = s.head_dim;
  float max = -std::numeric_limits<float>::infinity();
  for (int64_t p = 0; p < visible; ++p) {
    const float* kp = k + p * hd;
    scores[p] = (batched ? DotF16Batched(kp, q, hd) : DotF16Single(kp, q, hd)) * s.scale;
    max = std::max(max, scores[p]);
  }
  // Softmax in 16-element chunks; masked keys (beyond `visible`) are exact zeros in every chunk.
  const int64_t padded = (visible + kLanes - 1) / kLanes * kLanes;
  double sum = 0;
  for (int64_t c = 0; c < padded; c += kLanes) {
    float chunk[kLanes];
    for (int64_t j = 0; j < kLanes; ++j) {
      chunk[j] = c + j < visible ? Expf(scores[c + j] - max) : 0.f;
      scores[c + j] = chunk[j];
    }
    sum += static_cast<double>(Sum16(chunk));
  }
  const float inv = static_cast<float>(1.0 / sum);
  for (int64_t p = 0; p < visible; ++p) scores[p] = RoundF16(scores[p] * inv);
  // P·V: lane (p mod 16) — or (p mod 64) for one token — accumulates p's product per dimension.
  const int64_t n_lanes = batched ? kLanes : 4 * kLanes;
  std::fill(lanes, lanes + n_lanes * hd, 0.f);
  for (int64_t p = 0; p < visible; ++p) {
    float* acc = lanes + (p % n_lanes) * hd;
    const float* vp = v + p * hd;
    const float pr = scores[p];
    for (int64_t d = 0; d < hd; ++d) acc[d] = std::fma(pr, vp[d], acc[d]);
  }
  for (int64_t d = 0; d < hd; ++d) {
    float l16[kLanes];
    for (int64_t j = 0; j < kLanes; ++j) {
      const float* a = lanes + j * hd + d;
      l16[j] = batched ? a[0] : (a[0] + a[2 * kLanes * hd]) + (a[kLanes * hd] + a[3 * kLanes * hd]);
    }
    out[d] = Sum16(l16);
  }
}

}  // namespace

float Sum8(const float* l) {
  const float r0 = l[4] + l[0], r1 = l[5] + l[1], r2 = l[6] + l[2], r3 = l[7] + l[3];
  return (r0 + r2) + (r1 + r3);
}

float Sum16(const float* l) {
  float t[8];
  for (int i = 0; i < 8; ++i) t[i] = l[i + 8] + l[i];
  return Sum8(t);
}

float Expf(float x) {
  const float r = 0x1.8p23f;
  const float z = std::fma(x, 0x1.715476p+0f, r);
  const float n = z - r;
  const float b = std::fma(-n, 0x1.7f7d1cp-20f, std::fma(-n, 0x1.62e4p-1f, x));
  const float u = b * b;
  const float j = std::fma(std::fma(std::fma(0x1.0e4020p-7f, b, 0x1.573e2ep-5f), u,
                                    std::fma(0x1.555e66p-3f, b, 0x1.fffdb6p-2f)),
                           u, std::fma(0x1.ffffecp-1f, b, 1.0f));
  if (std::isnan(n)) return n;
  if (std::fabs(n) > 192.f) return n <= 0.f ? 0.f : std::numeric_limits<float>::infinity();
  return std::ldexp(j, static_cast<int>(n));  // _mm512_scalef_ps: j · 2^n, rounded once
}

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

bool IsExactQuantType(GgmlType type) { return type == GgmlType::kQ4_1 || type == GgmlType::kQ8_0; }

absl::Status QuantMatrix::AppendRows(GgmlType type, const uint8_t* data, size_t size, int64_t rows,
                                     int64_t cols) {
  if (!IsExactQuantType(type)) {
    return absl::InvalidArgumentError(
        absl::StrCat("ggml_exact: weight type ", static_cast<int>(type), " is not Q4_1 or Q8_0"));
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
  if (data == nullptr || static_cast<int64_t>(size) < rows * nb * block_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("ggml_exact: ", size, " bytes for ", rows, " x ", cols, " weights"));
  }
  type_ = type;
  cols_ = cols;
  const size_t first = blocks_.size();
  blocks_.resize(first + rows * nb);
  for (int64_t i = 0; i < rows * nb; ++i) {
    const uint8_t* src = data + i * block_bytes;
    Block& dst = blocks_[first + i];
    dst.d = Half(ReadU16(src));
    if (type == GgmlType::kQ4_1) {  // d, m, 16 bytes: element j low nibble, j + 16 high nibble
      dst.m = Half(ReadU16(src + 2));
      for (int j = 0; j < 16; ++j) {
        dst.q[j] = static_cast<int8_t>(src[4 + j] & 0x0f);
        dst.q[j + 16] = static_cast<int8_t>(src[4 + j] >> 4);
      }
    } else {  // d, 32 int8
      dst.m = 0.f;
      std::memcpy(dst.q, src + 2, kQBlock);
    }
  }
  rows_ += rows;
  return absl::OkStatus();
}

absl::Status LaunchQuantMatmul(const QuantMatrix& w, const ActBlock* a, int64_t m, float* c,
                               int64_t ldc, bool accumulate, ThreadPool* pool) {
  if (w.empty()) return absl::InvalidArgumentError("ggml_exact: empty weight matrix");
  if (m < 0 || ldc < w.rows() || (m > 0 && (a == nullptr || c == nullptr))) {
    return absl::InvalidArgumentError("ggml_exact: bad matmul arguments");
  }
  const int64_t nb = w.cols() / kQBlock;
  constexpr int64_t kRowsPerItem = 16;
  const int64_t items = (w.rows() + kRowsPerItem - 1) / kRowsPerItem;
  const bool q4_1 = w.type() == GgmlType::kQ4_1;
  ParallelFor(pool, items, [&](int64_t item) {
    const int64_t r0 = item * kRowsPerItem, r1 = std::min(w.rows(), r0 + kRowsPerItem);
    for (int64_t i = 0; i < m; ++i) {
      const ActBlock* ai = a + i * nb;
      float* ci = c + i * ldc;
      for (int64_t r = r0; r < r1; ++r) {
        const float dot = q4_1 ? DotQ4_1(w.row(r), ai, nb) : DotQ8_0(w.row(r), ai, nb);
        ci[r] = accumulate ? ci[r] + dot : dot;
      }
    }
  });
  return absl::OkStatus();
}

absl::Status LaunchRmsNorm(const float* x, const float* w, int64_t rows, int64_t cols,
                           int64_t stride, float eps, float* y, int64_t y_stride) {
  if (rows < 0 || cols <= 0 || stride < cols || y_stride < cols) {
    return absl::InvalidArgumentError("ggml_exact: bad rms_norm shape");
  }
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * stride;
    float* yr = y + r * y_stride;
    double sum = 0;
    for (int64_t i = 0; i < cols; ++i) sum += static_cast<double>(xr[i] * xr[i]);
    const float mean = static_cast<float>(sum / static_cast<double>(cols));
    const float scale = 1.0f / std::sqrt(mean + eps);
    for (int64_t i = 0; i < cols; ++i) yr[i] = xr[i] * scale * w[i];
  }
  return absl::OkStatus();
}

absl::Status RopeCache(const int64_t* positions, int64_t n, int64_t dims, float base,
                       float* cache) {
  if (n < 0 || dims <= 0 || dims % 2 != 0 || !(base > 0.f)) {
    return absl::InvalidArgumentError("ggml_exact: bad rope cache arguments");
  }
  const float theta_scale = std::pow(base, -2.0f / static_cast<float>(dims));
  for (int64_t r = 0; r < n; ++r) {
    float theta = static_cast<float>(positions[r]);
    float* cr = cache + r * dims;
    for (int64_t i = 0; i < dims; i += 2) {
      cr[i] = std::cos(theta);
      cr[i + 1] = std::sin(theta);
      theta *= theta_scale;
    }
  }
  return absl::OkStatus();
}

absl::Status LaunchRope(const float* x, int64_t x_stride, int64_t n, int64_t heads,
                        int64_t head_dim, const float* cache, float* y, int64_t y_stride) {
  if (n < 0 || heads <= 0 || head_dim <= 0 || head_dim % 2 != 0 || x_stride < heads * head_dim ||
      y_stride < heads * head_dim) {
    return absl::InvalidArgumentError("ggml_exact: bad rope shape");
  }
  for (int64_t r = 0; r < n; ++r) {
    const float* cr = cache + r * head_dim;
    for (int64_t h = 0; h < heads; ++h) {
      const float* xr = x + r * x_stride + h * head_dim;
      float* yr = y + r * y_stride + h * head_dim;
      for (int64_t i = 0; i < head_dim; i += 2) {
        const float c = cr[i], s = cr[i + 1], x0 = xr[i], x1 = xr[i + 1];
        yr[i] = std::fma(x0, c, -(x1 * s));
        yr[i + 1] = std::fma(x0, s, x1 * c);
      }
    }
  }
  return absl::OkStatus();
}

absl::Status LaunchSwiGlu(const float* gate, int64_t gate_stride, const float* up,
                          int64_t up_stride, int64_t rows, int64_t cols, float* out,
                          int64_t out_stride) {
  if (rows < 0 || cols <= 0 || gate_stride < cols || up_stride < cols || out_stride < cols) {
    return absl::InvalidArgumentError("ggml_exact: bad swiglu shape");
  }
  for (int64_t r = 0; r < rows; ++r) {
    const float* g = gate + r * gate_stride;
    const float* u = up + r * up_stride;
    float* o = out + r * out_stride;
    for (int64_t i = 0; i < cols; ++i) {
      const float silu = g[i] / (1.0f + Expf(0.0f - g[i]));
      o[i] = silu * u[i];
    }
  }
  return absl::OkStatus();
}

absl::Status LaunchAttention(const AttentionShape& shape, const float* q, int64_t q_stride,
                             int64_t n_new, const float* k, const float* v, int64_t head_stride,
                             int64_t len, float* out, int64_t out_stride, ThreadPool* pool) {
  const int64_t hd = shape.head_dim;
  if (shape.n_heads <= 0 || shape.n_kv_heads <= 0 || shape.n_heads % shape.n_kv_heads != 0 ||
      hd <= 0 || hd % kLanes != 0 || n_new < 1 || len < n_new || head_stride < len * hd ||
      q_stride < shape.n_heads * hd || out_stride < shape.n_heads * hd) {
    return absl::InvalidArgumentError(
        absl::StrCat("ggml_exact: bad attention shape (heads ", shape.n_heads, "/",
                     shape.n_kv_heads, ", head_dim ", hd, ", n_new ", n_new, ", len ", len, ")"));
  }
  const int64_t group = shape.n_heads / shape.n_kv_heads;
  const bool batched = n_new > 1;
  const int64_t padded = (len + kLanes - 1) / kLanes * kLanes;
  ParallelFor(pool, n_new * shape.n_heads, [&](int64_t item) {
    thread_local std::vector<float> scores, lanes;
    scores.resize(padded);
    lanes.resize(4 * kLanes * hd);
    const int64_t i = item / shape.n_heads, h = item % shape.n_heads, g = h / group;
    AttendOne(shape, q + i * q_stride + h * hd, k + g * head_stride, v + g * head_stride,
              len - n_new + i + 1, batched, scores.data(), lanes.data(),
              out + i * out_stride + h * hd);
  });
  return absl::OkStatus();
}

}  // namespace xkv::cpu::ggml
