// ggml_exact's lane math and element-wise ops: the horizontal sums, scalar expf, RoPE
// and SwiGLU as the emulated build computes them (ggml_exact.h says how).
#include <cmath>
#include <limits>

#include "kernels/cpu/ggml_exact.h"
#include "kernels/cpu/ggml_exact_lanes.h"

namespace xkv::cpu::ggml {

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
  const float p = std::fma(std::fma(0x1.0e4020p-7f, b, 0x1.573e2ep-5f), u,
                           std::fma(0x1.555e66p-3f, b, 0x1.fffdb6p-2f));
  if constexpr (kAvx512Profile) {  // j · 2^n with _mm512_scalef_ps
    const float j = std::fma(p, u, std::fma(0x1.ffffecp-1f, b, 1.0f));
    if (std::isnan(n)) return n;
    if (std::fabs(n) > 192.f) return n <= 0.f ? 0.f : std::numeric_limits<float>::infinity();
    return std::ldexp(j, static_cast<int>(n));  // rounded once
  } else {  // the AVX2 build: k = 2^n built from z's bits, k + k·j rounded once
    const float j = std::fma(p, u, 0x1.ffffecp-1f * b);
    const uint32_t e = FloatBits(z) << 23;
    const float k = BitsToFloat(e + FloatBits(1.0f));
    if (!(std::fabs(n) > 126.f)) return std::fma(j, k, k);
    const uint32_t g = n <= 0.f ? 0x82000000u : 0u;
    const float s1 = BitsToFloat(g + 0x7f000000u), s2 = BitsToFloat(e - g);
    if (std::fabs(n) > 192.f) return s1 * s1;
    return std::fma(s2, j, s2) * s1;
  }
}

absl::Status RopeCache(const int64_t* positions, int64_t n, int64_t dims, float base, float* cache,
                       float freq_scale, const float* freq_factors) {
  if (n < 0 || dims <= 0 || dims % 2 != 0 || !(base > 0.f)) {
    return absl::InvalidArgumentError("ggml_exact: bad rope cache arguments");
  }
  const float theta_scale = std::pow(base, -2.0f / static_cast<float>(dims));
  for (int64_t r = 0; r < n; ++r) {
    float theta = static_cast<float>(positions[r]);
    float* cr = cache + r * dims;
    for (int64_t i = 0; i < dims; i += 2) {
      const float ff = freq_factors != nullptr ? freq_factors[i / 2] : 1.0f;
      const float scaled = freq_scale * (theta / ff);
      cr[i] = std::cos(scaled);
      cr[i + 1] = std::sin(scaled);
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
    // ggml's SIMD loop covers whole 16-element vectors; its scalar tail uses libm's expf.
    const int64_t simd = cols - cols % kLanes;
    for (int64_t i = 0; i < cols; ++i) {
      const float e = i < simd ? Expf(0.0f - g[i]) : std::exp(-g[i]);
      const float silu = g[i] / (1.0f + e);
      o[i] = silu * u[i];
    }
  }
  return absl::OkStatus();
}

}  // namespace xkv::cpu::ggml
