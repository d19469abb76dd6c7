// ggml_exact's LaunchAttention: against double-precision causal softmax attention, a scalar
// re-derivation of the emulated build's lane layouts, causality, threads and bad shapes.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <iterator>
#include <limits>
#include <random>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "kernels/cpu/ggml_exact.h"
#include "kernels/cpu/half.h"
#include "kernels/cpu/parallel_for.h"
#include "tests/unit/kernels/ggml_exact_test_util.h"

namespace xkv::cpu::ggml {
namespace {

using test_util::kInf;
using test_util::LeftToRight;
using test_util::Mul;
using test_util::RoundF16;
using test_util::Tree16;
using test_util::Tree8;

// ---------------------------------------------------------------------------------------------
// LaunchAttention

struct AttnCase {
  int n_heads, n_kv_heads, head_dim;
  int64_t past, n_new;
};

const AttnCase kAttnCases[] = {
    {4, 2, 32, 5, 1},                       // one token, head_dim < 64 (dot all in the double tail)
    {4, 2, 64, 0, 1},                       // one token, one key
    {4, 2, 64, 70, 1},                      // one token, more keys than the 64 P·V lanes
    {4, 2, 128, 130, 1}, {4, 2, 32, 3, 9},  // batched, short
    {4, 2, 64, 20, 40},                     // batched, several 16-key chunks
    {2, 2, 48, 7, 3},                       // MHA, head_dim of three 16-lane groups
};

// fp16-valued q, k, v with NaN in every gap the kernel must not read.
struct AttnData {
  AttentionShape shape;
  int64_t len, q_stride, head_stride, out_stride;
  std::vector<float> q, k, v;
};

AttnData MakeAttn(const AttnCase& c, uint32_t seed) {
  AttnData a;
  a.shape = {c.n_heads, c.n_kv_heads, c.head_dim, 1.0f / std::sqrt(float(c.head_dim))};
  a.len = c.past + c.n_new;
  a.q_stride = c.n_heads * c.head_dim + 5;
  a.head_stride = (a.len + 3) * c.head_dim;
  a.out_stride = c.n_heads * c.head_dim + 2;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  a.q.assign(c.n_new * a.q_stride, nan);
  a.k.assign(c.n_kv_heads * a.head_stride, nan);
  a.v.assign(a.k.size(), nan);
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  for (int64_t i = 0; i < c.n_new; ++i) {
    for (int64_t j = 0; j < c.n_heads * c.head_dim; ++j) {
      a.q[i * a.q_stride + j] = RoundF16(2.f * u(rng));
    }
  }
  for (int64_t g = 0; g < c.n_kv_heads; ++g) {
    for (int64_t j = 0; j < a.len * c.head_dim; ++j) {
      a.k[g * a.head_stride + j] = RoundF16(2.f * u(rng));
      a.v[g * a.head_stride + j] = RoundF16(u(rng));
    }
  }
  return a;
}

// Query i's head h: its q row, its kv head's keys and values, and the keys it sees.
struct HeadView {
  const float *q, *k, *v;
  int64_t visible;
};

HeadView Head(const AttnCase& c, const AttnData& a, int64_t i, int h) {
  const int64_t kv = h / (c.n_heads / c.n_kv_heads);
  return {a.q.data() + i * a.q_stride + h * c.head_dim, a.k.data() + kv * a.head_stride,
          a.v.data() + kv * a.head_stride, c.past + i + 1};
}

std::vector<float> RunAttn(const AttnCase& c, const AttnData& a, ThreadPool* pool) {
  std::vector<float> out(c.n_new * a.out_stride, 7.f);
  const absl::Status s =
      LaunchAttention(a.shape, a.q.data(), a.q_stride, c.n_new, a.k.data(), a.v.data(),
                      a.head_stride, a.len, out.data(), a.out_stride, pool);
  EXPECT_TRUE(s.ok()) << s;
  return out;
}

TEST(GgmlExactAttentionTest, MatchesDoubleSoftmaxAttention) {
  ThreadPool pool(2);
  uint32_t seed = 60;
  for (const AttnCase& c : kAttnCases) {
    SCOPED_TRACE(testing::Message() << "heads " << c.n_heads << "/" << c.n_kv_heads << " hd "
                                    << c.head_dim << " past " << c.past << " n_new " << c.n_new);
    const AttnData a = MakeAttn(c, ++seed);
    const std::vector<float> out = RunAttn(c, a, nullptr);
    const std::vector<float> out_pool = RunAttn(c, a, &pool);
    const int hd = c.head_dim;
    for (int64_t i = 0; i < c.n_new; ++i) {
      for (int h = 0; h < c.n_heads; ++h) {
        const auto [q, k, v, visible] = Head(c, a, i, h);
        std::vector<double> p(visible);
        double mx = -1e300, sum = 0;
        for (int64_t j = 0; j < visible; ++j) {
          double dot = 0;
          for (int d = 0; d < hd; ++d) dot += double(q[d]) * k[j * hd + d];
          p[j] = dot * a.shape.scale;
          mx = std::max(mx, p[j]);
        }
        for (double& x : p) sum += (x = std::exp(x - mx));
        for (int d = 0; d < hd; ++d) {
          double want = 0, mag = 0, vmax = 0;
          for (int64_t j = 0; j < visible; ++j) {
            want += p[j] / sum * v[j * hd + d];
            mag += p[j] / sum * std::fabs(v[j * hd + d]);
            vmax = std::max(vmax, std::fabs(double(v[j * hd + d])));
          }
          // The probabilities are rounded to fp16 (2^-11 relative, 2^-25 absolute below 2^-14);
          // the fp32 steps add ~1e-6.
          const double tol = 5.2e-4 * mag + (visible * 3e-8 + 1e-6) * vmax;
          const int64_t o = i * a.out_stride + h * hd + d;
          ASSERT_NEAR(out[o], want, tol) << "i=" << i << " h=" << h << " d=" << d;
          ASSERT_EQ(FloatBits(out_pool[o]), FloatBits(out[o])) << "i=" << i << " h=" << h;
        }
      }
      for (int64_t j = c.n_heads * hd; j < a.out_stride; ++j) {
        EXPECT_EQ(out[i * a.out_stride + j], 7.f);
      }
    }
  }
}

// ---- Scalar re-derivation of the documented attention order, from the header's description.

// kDocumented is the header's order; the others change one step, to show that the test data is
// sensitive to it.
enum class AttnOrder { kDocumented, kSequentialKq, kFloatSoftmaxSum };

// The emulated build's vector width (16 lanes for AVX-512, 8 for AVX2) and its lane trees.
constexpr int kL = static_cast<int>(kEmulatedLanes);
float LaneTree(const float* l) { return kL == 16 ? Tree16(l) : Tree8(l); }
// AVX2 ggml_vec_dot_f16's last step: (l0 + l4) + (l1 + l5), then ... as two horizontal adds.
float HaddTree8(const float* l) {
  return ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]));
}
float SingleTree(const float* l) { return kL == 16 ? Tree16(l) : HaddTree8(l); }

// tinyBLAS: lane j accumulates elements j, j + kL, ... with fma; then the lane tree.
float DotBatched(const float* a, const float* b, int64_t n, AttnOrder order) {
  float lanes[kL] = {};
  for (int64_t l = 0; l < n; l += kL) {
    for (int j = 0; j < kL; ++j) lanes[j] = std::fma(a[l + j], b[l + j], lanes[j]);
  }
  return order == AttnOrder::kSequentialKq ? LeftToRight(lanes, kL) : LaneTree(lanes);
}

// ggml_vec_dot_f16: 4 × kL lanes over 4·kL-element steps, (acc0 + acc2) + (acc1 + acc3), the
// single-token tree, then the elements past the last full step added in double.
float DotSingle(const float* a, const float* b, int64_t n, AttnOrder order) {
  float acc[4][kL] = {};
  const int64_t full = n / (4 * kL) * (4 * kL);
  for (int64_t l = 0; l < full; l += 4 * kL) {
    for (int r = 0; r < 4; ++r) {
      for (int j = 0; j < kL; ++j) {
        acc[r][j] = std::fma(a[l + kL * r + j], b[l + kL * r + j], acc[r][j]);
      }
    }
  }
  float lanes[kL];
  for (int j = 0; j < kL; ++j) lanes[j] = (acc[0][j] + acc[2][j]) + (acc[1][j] + acc[3][j]);
  double sum = order == AttnOrder::kSequentialKq ? LeftToRight(lanes, kL) : SingleTree(lanes);
  for (int64_t i = full; i < n; ++i) sum += static_cast<double>(Mul(a[i], b[i]));
  return static_cast<float>(sum);
}

std::vector<float> DocumentedAttention(const AttnCase& c, const AttnData& a,
                                       AttnOrder order = AttnOrder::kDocumented) {
  const int hd = c.head_dim;
  const bool batched = c.n_new > 1;
  std::vector<float> out(c.n_new * a.out_stride, 7.f);
  for (int64_t i = 0; i < c.n_new; ++i) {
    for (int h = 0; h < c.n_heads; ++h) {
      const auto [q, k, v, visible] = Head(c, a, i, h);
      // Scores × scale; Expf over kL-key chunks (masked keys are 0) summed by the tree, chunk
      // sums added in double; probabilities × (float)(1 / sum), rounded to fp16.
      std::vector<float> s(visible);
      float mx = -kInf;
      for (int64_t j = 0; j < visible; ++j) {
        const float dot =
            batched ? DotBatched(k + j * hd, q, hd, order) : DotSingle(k + j * hd, q, hd, order);
        s[j] = Mul(dot, a.shape.scale);
        mx = std::max(mx, s[j]);
      }
      double sum = 0;
      float float_sum = 0;
      for (int64_t c0 = 0; c0 < visible; c0 += kL) {
        float chunk[kL];
        for (int64_t j = 0; j < kL; ++j) {
          chunk[j] = c0 + j < visible ? Expf(s[c0 + j] - mx) : 0.f;
          if (c0 + j < visible) s[c0 + j] = chunk[j];
        }
        sum += static_cast<double>(LaneTree(chunk));
        float_sum += LaneTree(chunk);
      }
      if (order == AttnOrder::kFloatSoftmaxSum) sum = float_sum;
      const float inv = static_cast<float>(1.0 / sum);
      for (float& x : s) x = RoundF16(Mul(x, inv));
      // P·V: key j goes to lane j mod kL (batched) or j mod 4·kL (one token); lanes reduced as
      // in the dot products above.
      const int n_lanes = batched ? kL : 4 * kL;
      std::vector<float> acc(n_lanes * hd, 0.f);
      for (int64_t j = 0; j < visible; ++j) {
        for (int d = 0; d < hd; ++d) {
          float& l = acc[(j % n_lanes) * hd + d];
          l = std::fma(s[j], v[j * hd + d], l);
        }
      }
      for (int d = 0; d < hd; ++d) {
        float lanes[kL];
        for (int j = 0; j < kL; ++j) {
          const float* l = acc.data() + j * hd + d;
          lanes[j] = batched ? l[0] : (l[0] + l[2 * kL * hd]) + (l[kL * hd] + l[3 * kL * hd]);
        }
        out[i * a.out_stride + h * hd + d] = batched ? LaneTree(lanes) : SingleTree(lanes);
      }
    }
  }
  return out;
}

TEST(GgmlExactAttentionTest, MatchesDocumentedOrderBitwise) {
  uint32_t seed = 70;
  int kq_matters = 0, sum_matters = 0;
  std::vector<AttnCase> cases(std::begin(kAttnCases), std::end(kAttnCases));
  // Long rows, where the fp16 rounding of the probabilities lets order changes through.
  cases.push_back({4, 2, 64, 1008, 16});
  cases.push_back({4, 2, 128, 1023, 1});
  for (const AttnCase& c : cases) {
    SCOPED_TRACE(testing::Message() << "heads " << c.n_heads << "/" << c.n_kv_heads << " hd "
                                    << c.head_dim << " past " << c.past << " n_new " << c.n_new);
    const AttnData a = MakeAttn(c, ++seed);
    const std::vector<float> got = RunAttn(c, a, nullptr);
    const std::vector<float> want = DocumentedAttention(c, a);
    for (size_t i = 0; i < got.size(); ++i) {
      ASSERT_EQ(FloatBits(got[i]), FloatBits(want[i])) << "element " << i;
    }
    const std::vector<float> seq_kq = DocumentedAttention(c, a, AttnOrder::kSequentialKq);
    const std::vector<float> float_sum = DocumentedAttention(c, a, AttnOrder::kFloatSoftmaxSum);
    for (size_t i = 0; i < got.size(); ++i) {
      kq_matters += want[i] != seq_kq[i];
      sum_matters += want[i] != float_sum[i];
    }
  }
  EXPECT_GT(kq_matters, 0);
  EXPECT_GT(sum_matters, 0);
}

// Changing the first key/value hidden from query i leaves queries 0..i bitwise unchanged and
// changes query i + 1.
TEST(GgmlExactAttentionTest, IsCausal) {
  const AttnCase c{4, 2, 64, 10, 6};
  const AttnData base = MakeAttn(c, 80);
  const std::vector<float> ref = RunAttn(c, base, nullptr);
  const int64_t width = c.n_heads * c.head_dim;
  for (int64_t i = 0; i + 1 < c.n_new; ++i) {
    AttnData changed = base;
    const int64_t key = c.past + i + 1;
    for (int64_t g = 0; g < c.n_kv_heads; ++g) {
      for (int d = 0; d < c.head_dim; ++d) {
        changed.k[g * base.head_stride + key * c.head_dim + d] = 2.f;
        changed.v[g * base.head_stride + key * c.head_dim + d] = -3.f;
      }
    }
    const std::vector<float> out = RunAttn(c, changed, nullptr);
    for (int64_t t = 0; t <= i; ++t) {
      for (int64_t j = 0; j < width; ++j) {
        ASSERT_EQ(FloatBits(out[t * base.out_stride + j]), FloatBits(ref[t * base.out_stride + j]))
            << "changed key " << key << " query " << t << " j " << j;
      }
    }
    int changed_next = 0;
    for (int64_t j = 0; j < width; ++j) {
      changed_next += out[(i + 1) * base.out_stride + j] != ref[(i + 1) * base.out_stride + j];
    }
    EXPECT_GT(changed_next, width / 2) << "changed key " << key;
  }
}

TEST(GgmlExactAttentionTest, RejectsBadShapes) {
  std::vector<float> buf(8 * 4 * 64, 0.5f), out(8 * 4 * 64);
  const auto run = [&](const AttentionShape& s, int64_t n_new, int64_t len, int64_t head_stride) {
    return LaunchAttention(s, buf.data(), s.n_heads * s.head_dim, n_new, buf.data(), buf.data(),
                           head_stride, len, out.data(), s.n_heads * s.head_dim, nullptr);
  };
  const AttentionShape ok{4, 2, 32, 0.25f};
  EXPECT_TRUE(run(ok, 2, 3, 3 * 32).ok());
  EXPECT_FALSE(run({4, 2, 24, 0.25f}, 2, 3, 3 * 24).ok());  // head_dim % 16 != 0
  EXPECT_FALSE(run({4, 2, 8, 0.25f}, 1, 3, 3 * 8).ok());
  EXPECT_FALSE(run({3, 2, 32, 0.25f}, 2, 3, 3 * 32).ok());  // n_heads % n_kv_heads != 0
  EXPECT_FALSE(run({4, 0, 32, 0.25f}, 2, 3, 3 * 32).ok());
  EXPECT_FALSE(run(ok, 3, 2, 3 * 32).ok());      // len < n_new
  EXPECT_FALSE(run(ok, 0, 2, 3 * 32).ok());      // no query
  EXPECT_FALSE(run(ok, 2, 3, 3 * 32 - 1).ok());  // head_stride < len * head_dim
  EXPECT_FALSE(LaunchAttention(ok, buf.data(), 127, 2, buf.data(), buf.data(), 96, 3, out.data(),
                               128, nullptr)
                   .ok());  // q_stride
  EXPECT_FALSE(LaunchAttention(ok, buf.data(), 128, 2, buf.data(), buf.data(), 96, 3, out.data(),
                               127, nullptr)
                   .ok());  // out_stride
}

}  // namespace
}  // namespace xkv::cpu::ggml
