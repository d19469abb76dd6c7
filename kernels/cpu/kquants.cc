// K-quant super-block layouts (ggml-common.h; little-endian; 256 elements each):
//   Q2_K (84 B):  uint8 scales[16] (low nibble: scale, high: min), uint8 qs[64] (2-bit),
//                 fp16 d, fp16 dmin.      x = d * sc * q - dmin * m          16 sub-blocks of 16
//   Q3_K (110 B): uint8 hmask[32] (high bit), uint8 qs[64] (low 2 bits), uint8 scales[12] (6-bit,
//                 biased by 32), fp16 d.  x = d * (sc - 32) * (q - (hbit ? 0 : 4))
//   Q4_K (144 B): fp16 d, fp16 dmin, uint8 scales[12] (6-bit scales and mins), uint8 qs[128]
//                 (nibbles).              x = d * sc * q - dmin * m           8 sub-blocks of 32
//   Q5_K (176 B): as Q4_K with uint8 qh[32] (fifth bits) before qs.
//   Q6_K (210 B): uint8 ql[128] (low nibbles), uint8 qh[64] (high 2 bits), int8 scales[16],
//                 fp16 d.                 x = d * sc * (q - 32)              16 sub-blocks of 16
// Within each 128 (Q2_K, Q3_K, Q6_K) or 64 (Q4_K, Q5_K) elements, the bit fields of one byte belong
// to elements 32 apart; the index arithmetic below follows ggml's loops.
#include "kernels/cpu/kquants.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/cpu/half.h"

namespace xkv::cpu {
namespace {

constexpr int kQK = static_cast<int>(kKQuantBlock);

float LoadF16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, sizeof(v));
  return F16ToF32(v);
}

// Stores fp16(v) and returns the stored value as fp32.
float StoreF16(uint8_t* p, float v) {
  const uint16_t h = F32ToF16(v);
  std::memcpy(p, &h, sizeof(h));
  return F16ToF32(h);
}

// ggml's nearest_int (round half to even) clamped to [lo, hi]; total for any float.
int NearestClamped(float v, int lo, int hi) {
  if (!(v >= static_cast<float>(lo))) return v != v ? 0 : lo;
  if (v >= static_cast<float>(hi)) return hi;
  return static_cast<int>(std::nearbyint(v));
}

// Q4_K / Q5_K: the 6-bit scale and minimum of sub-block j (ggml's get_scale_min_k4).
void ScaleMinK4(int j, const uint8_t* q, int* sc, int* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// Q3_K: the biased 6-bit scale of sub-block j (ggml unpacks the same bits with 32-bit masks).
int ScaleQ3K(int j, const uint8_t* scales) {
  const int low = j < 8 ? scales[j] & 0xF : scales[j - 8] >> 4;
  const int high = (scales[8 + j % 4] >> (2 * (j / 4))) & 3;
  return (low | (high << 4)) - 32;
}

void DequantQ2K(const uint8_t* b, float* y) {
  const uint8_t* scales = b;
  const uint8_t* q = b + 16;
  const float d = LoadF16(b + 80), min = LoadF16(b + 82);
  int is = 0;
  for (int n = 0; n < kQK; n += 128, q += 32) {
    for (int shift = 0; shift < 8; shift += 2) {
      for (int half = 0; half < 2; ++half) {
        const uint8_t sc = scales[is++];
        const float dl = d * (sc & 0xF), ml = min * (sc >> 4);
        for (int l = 0; l < 16; ++l) *y++ = dl * ((q[l + 16 * half] >> shift) & 3) - ml;
      }
    }
  }
}

void DequantQ3K(const uint8_t* b, float* y) {
  const uint8_t* hm = b;
  const uint8_t* q = b + 32;
  const uint8_t* scales = b + 96;
  const float d_all = LoadF16(b + 108);
  int is = 0;
  uint8_t m = 1;
  for (int n = 0; n < kQK; n += 128, q += 32) {
    for (int shift = 0; shift < 8; shift += 2, m <<= 1) {
      for (int half = 0; half < 2; ++half) {
        const float dl = d_all * ScaleQ3K(is++, scales);
        for (int l = 16 * half; l < 16 * half + 16; ++l) {
          *y++ = dl * (((q[l] >> shift) & 3) - ((hm[l] & m) ? 0 : 4));
        }
      }
    }
  }
}

// Q4_K (qh == nullptr) and Q5_K.
void DequantQ45K(const uint8_t* b, const uint8_t* qh, const uint8_t* q, float* y) {
  const float d = LoadF16(b), min = LoadF16(b + 2);
  const uint8_t* scales = b + 4;
  uint8_t u1 = 1, u2 = 2;
  for (int j = 0, is = 0; j < kQK; j += 64, q += 32, is += 2, u1 <<= 2, u2 <<= 2) {
    int sc, m;
    ScaleMinK4(is, scales, &sc, &m);
    const float d1 = d * sc, m1 = min * m;
    ScaleMinK4(is + 1, scales, &sc, &m);
    const float d2 = d * sc, m2 = min * m;
    for (int l = 0; l < 32; ++l) {
      const int high = qh != nullptr && (qh[l] & u1) ? 16 : 0;
      *y++ = d1 * ((q[l] & 0xF) + high) - m1;
    }
    for (int l = 0; l < 32; ++l) {
      const int high = qh != nullptr && (qh[l] & u2) ? 16 : 0;
      *y++ = d2 * ((q[l] >> 4) + high) - m2;
    }
  }
}

void DequantQ6K(const uint8_t* b, float* y) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const auto* sc = reinterpret_cast<const int8_t*>(b + 192);
  const float d = LoadF16(b + 208);
  // ggml's loop writes y[l + 32k] (k = 0..3) per l with scale sc[l / 16 + 2k]; here each run of 16
  // outputs with one scale is its own loop (the same arithmetic per element, vectorizable).
  for (int n = 0; n < kQK; n += 128, y += 128, ql += 64, qh += 32, sc += 8) {
    for (int k = 0; k < 4; ++k) {
      const uint8_t* low = ql + (k % 2) * 32;  // groups 0, 2 in ql[0..31]; 1, 3 in ql[32..63]
      const int low_shift = (k / 2) * 4, high_shift = 2 * k;
      for (int half = 0; half < 2; ++half) {
        const float ds = d * sc[half + 2 * k];
        for (int l = 16 * half; l < 16 * half + 16; ++l) {
          const int q = (((low[l] >> low_shift) & 0xF) | (((qh[l] >> high_shift) & 3) << 4)) - 32;
          y[l + 32 * k] = ds * q;
        }
      }
    }
  }
}

// ---- quantizers ----

// Affine sub-block fit: scale spanning [min(0, lo), hi] in `nmax` steps; returns the scale and
// stores the (non-negative) minimum to subtract.
float AffineScale(const float* x, int n, int nmax, float* the_min) {
  float lo = x[0], hi = x[0];
  for (int i = 1; i < n; ++i) {
    lo = std::min(lo, x[i]);
    hi = std::max(hi, x[i]);
  }
  lo = std::min(lo, 0.f);
  *the_min = -lo;
  return (hi - lo) / nmax;
}

// The value of largest magnitude in v[0..n) (the first of equal magnitudes), with its sign.
float SignedMaxOf(const float* v, int n) {
  float amax = 0.f, max = 0.f;
  for (int i = 0; i < n; ++i) {
    if (std::fabs(v[i]) > amax) {
      amax = std::fabs(v[i]);
      max = v[i];
    }
  }
  return max;
}

// Symmetric sub-block fit: the value of largest magnitude maps to -nmax (ggml's make_qx_quants
// convention, which uses the asymmetric range [-nmax, nmax - 1] fully); returns the signed scale.
float SymmetricScale(const float* x, int n, int nmax) { return SignedMaxOf(x, n) / -nmax; }

float MaxOf(const float* v, int n) { return *std::max_element(v, v + n); }

// Values of one affine sub-block against its quantized scale d and minimum dm, in [0, nmax].
void RoundAffine(const float* x, int n, float d, float dm, int nmax, uint8_t* L) {
  for (int i = 0; i < n; ++i) L[i] = d != 0.f ? NearestClamped((x[i] + dm) / d, 0, nmax) : 0;
}

// Q2_K / Q3_K: 2-bit values L[256] into 64 bytes; byte 32n + l holds elements 128n + l + 32k in
// bits 2k (the layout the dequantizers read).
void Pack2Bit(const uint8_t* L, uint8_t* qs) {
  for (int j = 0; j < kQK; j += 128) {
    for (int l = 0; l < 32; ++l) {
      qs[j / 4 + l] = L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6);
    }
  }
}

void QuantQ2K(const float* x, uint8_t* b) {
  float scales[16], mins[16];
  for (int j = 0; j < 16; ++j) scales[j] = AffineScale(x + 16 * j, 16, 3, &mins[j]);
  const float max_scale = MaxOf(scales, 16), max_min = MaxOf(mins, 16);
  uint8_t* sc = b;
  std::memset(b, 0, 84);
  float d = 0.f, dmin = 0.f;
  if (max_scale > 0) {
    for (int j = 0; j < 16; ++j) sc[j] = NearestClamped(15.f / max_scale * scales[j], 0, 15);
    d = StoreF16(b + 80, max_scale / 15.f);
  }
  if (max_min > 0) {
    for (int j = 0; j < 16; ++j) sc[j] |= NearestClamped(15.f / max_min * mins[j], 0, 15) << 4;
    dmin = StoreF16(b + 82, max_min / 15.f);
  }
  uint8_t L[kQK];
  for (int j = 0; j < 16; ++j) {
    RoundAffine(x + 16 * j, 16, d * (sc[j] & 0xF), dmin * (sc[j] >> 4), 3, L + 16 * j);
  }
  Pack2Bit(L, b + 16);
}

void QuantQ3K(const float* x, uint8_t* b) {
  float scales[16];
  for (int j = 0; j < 16; ++j) scales[j] = SymmetricScale(x + 16 * j, 16, 4);
  const float max_scale = SignedMaxOf(scales, 16);
  std::memset(b, 0, 110);
  uint8_t* hmask = b;
  uint8_t* qs = b + 32;
  uint8_t* sc = b + 96;
  float d = 0.f;
  if (max_scale != 0.f) {
    const float iscale = -32.f / max_scale;
    for (int j = 0; j < 16; ++j) {
      const int l = NearestClamped(iscale * scales[j], -32, 31) + 32;
      if (j < 8) {
        sc[j] = l & 0xF;
      } else {
        sc[j - 8] |= (l & 0xF) << 4;
      }
      sc[j % 4 + 8] |= (l >> 4) << (2 * (j / 4));
    }
    d = StoreF16(b + 108, 1.f / iscale);
  }
  uint8_t L[kQK];
  for (int j = 0; j < 16; ++j) {
    const float dl = d * ScaleQ3K(j, sc);
    for (int i = 0; i < 16; ++i) {
      L[16 * j + i] = dl != 0.f ? NearestClamped(x[16 * j + i] / dl, -4, 3) + 4 : 4;
    }
  }
  for (int j = 0, m = 0, hm = 1; j < kQK; ++j) {
    if (L[j] > 3) {
      hmask[m] |= hm;
      L[j] -= 4;
    }
    if (++m == kQK / 8) {
      m = 0;
      hm <<= 1;
    }
  }
  Pack2Bit(L, qs);
}

// Q4_K (nmax 15) and Q5_K (nmax 31).
void QuantQ45K(const float* x, int nmax, uint8_t* b) {
  float scales[8], mins[8];
  for (int j = 0; j < 8; ++j) scales[j] = AffineScale(x + 32 * j, 32, nmax, &mins[j]);
  const float max_scale = MaxOf(scales, 8), max_min = MaxOf(mins, 8);
  const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
  const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
  std::memset(b, 0, nmax == 15 ? 144 : 176);
  uint8_t* sc = b + 4;
  for (int j = 0; j < 8; ++j) {
    const int ls = NearestClamped(inv_scale * scales[j], 0, 63);
    const int lm = NearestClamped(inv_min * mins[j], 0, 63);
    if (j < 4) {
      sc[j] = ls;
      sc[j + 4] = lm;
    } else {
      sc[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
      sc[j - 4] |= (ls >> 4) << 6;
      sc[j] |= (lm >> 4) << 6;
    }
  }
  const float d = StoreF16(b, max_scale / 63.f), dmin = StoreF16(b + 2, max_min / 63.f);
  uint8_t L[kQK];
  for (int j = 0; j < 8; ++j) {
    int ls, lm;
    ScaleMinK4(j, sc, &ls, &lm);
    RoundAffine(x + 32 * j, 32, d * ls, dmin * lm, nmax, L + 32 * j);
  }
  if (nmax == 15) {
    uint8_t* q = b + 16;
    for (int j = 0; j < kQK; j += 64, q += 32) {
      for (int l = 0; l < 32; ++l) q[l] = L[j + l] | (L[j + l + 32] << 4);
    }
    return;
  }
  uint8_t* qh = b + 16;
  uint8_t* ql = b + 48;
  uint8_t m1 = 1, m2 = 2;
  for (int n = 0; n < kQK; n += 64, ql += 32, m1 <<= 2, m2 <<= 2) {
    for (int j = 0; j < 32; ++j) {
      int l1 = L[n + j], l2 = L[n + j + 32];
      if (l1 > 15) {
        l1 -= 16;
        qh[j] |= m1;
      }
      if (l2 > 15) {
        l2 -= 16;
        qh[j] |= m2;
      }
      ql[j] = l1 | (l2 << 4);
    }
  }
}

void QuantQ6K(const float* x, uint8_t* b) {
  float scales[16];
  for (int j = 0; j < 16; ++j) scales[j] = SymmetricScale(x + 16 * j, 16, 32);
  const float max_scale = SignedMaxOf(scales, 16);
  std::memset(b, 0, 210);
  auto* sc = reinterpret_cast<int8_t*>(b + 192);
  float d = 0.f;
  if (max_scale != 0.f) {
    const float iscale = -128.f / max_scale;
    for (int j = 0; j < 16; ++j)
      sc[j] = static_cast<int8_t>(NearestClamped(iscale * scales[j], -128, 127));
    d = StoreF16(b + 208, 1.f / iscale);
  }
  uint8_t L[kQK];
  for (int j = 0; j < 16; ++j) {
    const float dl = d * sc[j];
    for (int i = 0; i < 16; ++i) {
      L[16 * j + i] = dl != 0.f ? NearestClamped(x[16 * j + i] / dl, -32, 31) + 32 : 32;
    }
  }
  uint8_t* ql = b;
  uint8_t* qh = b + 128;
  for (int j = 0; j < kQK; j += 128, ql += 64, qh += 32) {
    for (int l = 0; l < 32; ++l) {
      const uint8_t* e = L + j + l;
      ql[l] = (e[0] & 0xF) | ((e[64] & 0xF) << 4);
      ql[l + 32] = (e[32] & 0xF) | ((e[96] & 0xF) << 4);
      qh[l] = (e[0] >> 4) | ((e[32] >> 4) << 2) | ((e[64] >> 4) << 4) | ((e[96] >> 4) << 6);
    }
  }
}

}  // namespace

bool IsKQuant(GgmlType type) {
  return type == GgmlType::kQ2_K || type == GgmlType::kQ3_K || type == GgmlType::kQ4_K ||
         type == GgmlType::kQ5_K || type == GgmlType::kQ6_K;
}

void DequantizeKQuant(GgmlType type, const uint8_t* src, int64_t blocks, float* dst) {
  for (int64_t i = 0; i < blocks; ++i, dst += kQK) {
    switch (type) {
      case GgmlType::kQ2_K:
        DequantQ2K(src + i * 84, dst);
        break;
      case GgmlType::kQ3_K:
        DequantQ3K(src + i * 110, dst);
        break;
      case GgmlType::kQ4_K:
        DequantQ45K(src + i * 144, nullptr, src + i * 144 + 16, dst);
        break;
      case GgmlType::kQ5_K:
        DequantQ45K(src + i * 176, src + i * 176 + 16, src + i * 176 + 48, dst);
        break;
      case GgmlType::kQ6_K:
        DequantQ6K(src + i * 210, dst);
        break;
      default:
        return;
    }
  }
}

void QuantizeKQuant(GgmlType type, const float* x, int64_t blocks, uint8_t* dst) {
  for (int64_t i = 0; i < blocks; ++i, x += kQK) {
    switch (type) {
      case GgmlType::kQ2_K:
        QuantQ2K(x, dst + i * 84);
        break;
      case GgmlType::kQ3_K:
        QuantQ3K(x, dst + i * 110);
        break;
      case GgmlType::kQ4_K:
        QuantQ45K(x, 15, dst + i * 144);
        break;
      case GgmlType::kQ5_K:
        QuantQ45K(x, 31, dst + i * 176);
        break;
      case GgmlType::kQ6_K:
        QuantQ6K(x, dst + i * 210);
        break;
      default:
        return;
    }
  }
}

}  // namespace xkv::cpu
