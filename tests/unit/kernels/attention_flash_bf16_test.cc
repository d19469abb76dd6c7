// AttentionShape::emulate_bf16_flash: the CPU prefill reproducing the rounding points of the CUDA
// tensor-core flash prefill (FlashPrefillKernel, kernels/cuda/prefill_attention.cu).
//
// The reference below does not run an online softmax: it writes the kernel's result in closed
// form. Tile j holds slots [64 j, 64 j + 64); m_j is the max of the row's visible scores in tiles
// 0..j (the running max after tile j); s_c = bf16(q * scale * log2 e) · bf16(k_c). The kernel's
// probability of slot c in tile j is local to that tile's running max, P_c = 2^(s_c - m_j), and
// with f_c = 2^(m_j - m_last) its output is
//   sum_c bf16(P_c) f_c bf16(v_c) / sum_c P_c f_c.
#include <algorithm>
#include <cmath>
#include <random>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/half.h"

namespace xkv::cpu {
namespace {

constexpr int kTile = 64;  // the kernel's kBk
constexpr float kLog2e = 1.4426950408889634f;

float Bf16(float x) { return Bf16ToF32(F32ToBf16(x)); }

struct Problem {
  int n_heads = 6, n_kv_heads = 2, head_dim = 32;  // GQA, group 3
  int64_t past = 0, n_new = 0, capacity = 0;
  std::vector<float> q, k, v;  // q [n_new][n_heads][hd]; k, v [n_kv_heads][capacity][hd]
  AttentionShape shape() const {
    return {n_heads, n_kv_heads, head_dim, 1.0f / std::sqrt(static_cast<float>(head_dim))};
  }
  int64_t kv_len() const { return past + n_new; }
  int64_t head_stride() const { return capacity * head_dim; }
};

// Random non-zero inputs, 5 spare cache rows. With `exact_scores`, |k| and |q * scale * log2 e|
// lie in [0.5, 1), so their bf16 roundings sit on a 2^-9 grid and every score (a sum of head_dim
// products on a 2^-17 grid, |s| <= 2^5) is exact in fp32 in any summation order: the bf16
// rounding of P then sees the same fp32 P here and in the launcher, and the comparison can be
// tight. The scores still spread over several units (std ~3), so the running max moves.
Problem MakeProblem(int64_t past, int64_t n_new, bool exact_scores, uint32_t seed) {
  Problem p;
  p.past = past;
  p.n_new = n_new;
  p.capacity = p.kv_len() + 5;
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.f, 1.f), mag(0.5f, 1.f);
  auto sign = [&] { return u(rng) < 0 ? -1.f : 1.f; };
  const float scale_log2 = p.shape().scale * kLog2e;
  p.q.resize(p.n_new * p.n_heads * p.head_dim);
  p.k.resize(p.n_kv_heads * p.head_stride());
  p.v.resize(p.k.size());
  for (float& x : p.q) x = exact_scores ? sign() * mag(rng) / scale_log2 : 3.f * u(rng);
  for (float& x : p.k) x = exact_scores ? sign() * mag(rng) : u(rng);
  for (float& x : p.v) x = u(rng);
  return p;
}

// Closed-form reference (see the top comment); doubles except the rounded quantities, which the
// kernel forms in fp32: s_c (exact by construction), P_c = exp2f(s_c - m_j) and bf16(P_c).
// `rescaled_rows` counts rows whose running max grew after their first tile.
std::vector<double> Reference(const Problem& p, int* rescaled_rows) {
  const int group = p.n_heads / p.n_kv_heads, hd = p.head_dim;
  const float scale_log2 = p.shape().scale * kLog2e;
  std::vector<double> out(p.n_new * p.n_heads * hd, 0.0);
  *rescaled_rows = 0;
  for (int64_t t = 0; t < p.n_new; ++t) {
    for (int h = 0; h < p.n_heads; ++h) {
      const float* kg = p.k.data() + (h / group) * p.head_stride();
      const float* vg = p.v.data() + (h / group) * p.head_stride();
      const float* qh = p.q.data() + (t * p.n_heads + h) * hd;
      const int64_t visible = p.past + t + 1;
      std::vector<float> s(visible);
      for (int64_t c = 0; c < visible; ++c) {
        double dot = 0;
        for (int d = 0; d < hd; ++d) dot += double(Bf16(qh[d] * scale_log2)) * Bf16(kg[c * hd + d]);
        s[c] = static_cast<float>(dot);
      }
      std::vector<float> running_max(visible);  // m_j of the tile holding slot c
      for (int64_t c0 = 0; c0 < visible; c0 += kTile) {
        const int64_t c1 = std::min<int64_t>(visible, c0 + kTile);
        float m = c0 == 0 ? -INFINITY : running_max[c0 - 1];
        for (int64_t c = c0; c < c1; ++c) m = std::max(m, s[c]);
        std::fill(running_max.begin() + c0, running_max.begin() + c1, m);
      }
      const double m_last = running_max[visible - 1];
      if (m_last > running_max[0]) ++*rescaled_rows;
      std::vector<double> num(hd, 0.0);
      double den = 0;
      for (int64_t c = 0; c < visible; ++c) {
        const float pc = std::exp2(s[c] - running_max[c]);
        const double f = std::exp2(double(running_max[c]) - m_last);
        den += double(pc) * f;
        for (int d = 0; d < hd; ++d) num[d] += double(Bf16(pc)) * f * Bf16(vg[c * hd + d]);
      }
      for (int d = 0; d < hd; ++d) out[(t * p.n_heads + h) * hd + d] = num[d] / den;
    }
  }
  return out;
}

std::vector<float> RunPrefill(const Problem& p, bool emulate, ThreadPool* pool,
                              int64_t out_stride) {
  AttentionShape shape = p.shape();
  shape.emulate_bf16_flash = emulate;
  std::vector<float> out(p.n_new * out_stride, 7.f);
  EXPECT_TRUE(LaunchPrefillAttention(shape, p.q.data(), p.n_new, p.k.data(), p.v.data(),
                                     p.head_stride(), p.kv_len(), out.data(), out_stride, pool)
                  .ok());
  return out;
}

// Tolerance 3e-6 absolute, i.e. of the output range (|out| <= max|v| = 1): what is left is fp32
// summation order (~5e-7 seen). Each rounding point matters more: leaving out the Q, K/V or P
// rounding, rounding Q before the scale, tiles of 32 or 128 keys, or a row sum of bf16 P each
// move some output by 1.4e-5 to 2.8e-4.
TEST(AttentionFlashBf16Test, MatchesTheClosedFormOfTheKernel) {
  ThreadPool pool(2);
  // (past, n_new): a chunk after a history, its diagonal crossing two of three tiles; a fresh
  // prompt; one row (the CUDA prefill launcher's flash path for n_new = 1 too).
  for (const auto& [past, n_new] : {std::pair<int64_t, int64_t>{70, 90}, {0, 90}, {130, 1}}) {
    const Problem p = MakeProblem(past, n_new, /*exact_scores=*/true, 11 + past);
    int rescaled = 0;
    const std::vector<double> want = Reference(p, &rescaled);
    if (p.kv_len() > kTile) {
      EXPECT_GT(rescaled, 0) << "no row found a new max in a later tile";
    }
    const int64_t row = int64_t{p.n_heads} * p.head_dim, out_stride = row + 3;
    for (ThreadPool* tp : {static_cast<ThreadPool*>(nullptr), &pool}) {
      const std::vector<float> got = RunPrefill(p, true, tp, out_stride);
      for (int64_t t = 0; t < p.n_new; ++t) {
        for (int64_t i = 0; i < row; ++i) {
          ASSERT_NEAR(got[t * out_stride + i], want[t * row + i], 3e-6)
              << "past=" << past << " t=" << t << " i=" << i;
        }
        EXPECT_EQ(got[t * out_stride + row], 7.f);  // padding untouched
      }
    }
  }
}

// On generic fp32 inputs (v in [-1, 1]) the emulation moves outputs from the fp32 path by a
// bf16-sized amount: far above the fp32 path's own error (~1e-6; 2e-5 bound in attention_test),
// within the bound of tests/gpu/attention_test for the kernel itself: rounding P moves an output
// by at most u * max|v| (u = 2^-8), and ||emulated - fp32||_2 <= u ||fp32||_2.
TEST(AttentionFlashBf16Test, DiffersFromFp32ByBf16Rounding) {
  const Problem p = MakeProblem(70, 90, /*exact_scores=*/false, 5);
  const int64_t row = int64_t{p.n_heads} * p.head_dim;
  const std::vector<float> emul = RunPrefill(p, true, nullptr, row),
                           fp32 = RunPrefill(p, false, nullptr, row);
  double max_diff = 0, num = 0, den = 0;
  for (size_t i = 0; i < fp32.size(); ++i) {
    const double e = std::fabs(double(emul[i]) - fp32[i]);
    max_diff = std::max(max_diff, e);
    num += e * e;
    den += double(fp32[i]) * fp32[i];
  }
  EXPECT_GT(max_diff, 1e-4);  // the option does something (1.3e-3 seen)
  EXPECT_LE(max_diff, 1. / 256);
  EXPECT_LE(std::sqrt(num / den), 1. / 256);  // 2.8e-3 seen
}

TEST(AttentionFlashBf16Test, RejectsBothRoundings) {
  const Problem p = MakeProblem(0, 4, false, 1);
  AttentionShape shape = p.shape();
  shape.emulate_bf16_flash = shape.round_probs_f16 = true;
  std::vector<float> out(p.n_new * p.n_heads * p.head_dim);
  EXPECT_FALSE(LaunchPrefillAttention(shape, p.q.data(), p.n_new, p.k.data(), p.v.data(),
                                      p.head_stride(), p.kv_len(), out.data(),
                                      int64_t{p.n_heads} * p.head_dim, nullptr)
                   .ok());
}

}  // namespace
}  // namespace xkv::cpu
