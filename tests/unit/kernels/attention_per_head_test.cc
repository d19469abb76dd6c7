// Per-(layer, KV head) budgets leave the KV heads of a layer with different row counts; the CPU
// model (LlamaModel::AttendRagged) then runs each KV head's group of query heads as its own
// single-KV-head call. These tests pin the property that relies on: on a uniform cache, the
// per-group calls give bit for bit the outputs of the one call over all heads, for the fp32
// decode and prefill kernels (every numerics option) and for ggml's exact kernel.
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/ggml_exact.h"
#include "kernels/cpu/half.h"

namespace xkv::cpu {
namespace {

constexpr int kHeads = 6, kKvHeads = 3, kGroup = kHeads / kKvHeads, kDim = 32;
constexpr int64_t kQDim = int64_t{kHeads} * kDim;

struct Data {
  int64_t n_new = 0, len = 0, stride = 0;
  std::vector<float> q, k, v;  // q [n_new, heads, dim]; k, v [kv_heads][len + 3][dim]
};

Data MakeData(int64_t n_new, int64_t len, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  Data d{n_new, len, (len + 3) * kDim};
  // fp16-representable values, as ggml's exact kernel requires.
  auto fill = [&](std::vector<float>& x, size_t n) {
    x.resize(n);
    for (float& f : x) f = F16ToF32(F32ToF16(u(rng)));
  };
  fill(d.q, n_new * kQDim);
  fill(d.k, kKvHeads * d.stride);
  fill(d.v, kKvHeads * d.stride);
  return d;
}

// The per-group calls AttendRagged makes: head g's rows alone, its queries gathered contiguously
// for the fp32 prefill kernel.
std::vector<float> PerGroup(const Data& d, const AttentionShape& full, bool exact) {
  std::vector<float> out(d.n_new * kQDim, 9.f), q(d.n_new * kGroup * kDim);
  for (int g = 0; g < kKvHeads; ++g) {
    const float* k = d.k.data() + g * d.stride;
    const float* v = d.v.data() + g * d.stride;
    const float* qg = d.q.data() + g * kGroup * kDim;
    float* o = out.data() + g * kGroup * kDim;
    AttentionShape one = full;
    one.n_heads = kGroup;
    one.n_kv_heads = 1;
    absl::Status s;
    if (exact) {
      s = ggml::LaunchAttention({kGroup, 1, kDim, full.scale}, qg, kQDim, d.n_new, k, v,
                                d.len * kDim, d.len, o, kQDim, nullptr);
    } else if (d.n_new == 1) {
      s = LaunchDecodeAttention(one, qg, k, v, d.len * kDim, d.len, o, nullptr);
    } else {
      for (int64_t t = 0; t < d.n_new; ++t) {
        std::memcpy(&q[t * kGroup * kDim], qg + t * kQDim, kGroup * kDim * sizeof(float));
      }
      s = LaunchPrefillAttention(one, q.data(), d.n_new, k, v, d.len * kDim, d.len, o, kQDim,
                                 nullptr);
    }
    EXPECT_TRUE(s.ok()) << s;
  }
  return out;
}

std::vector<float> AllHeads(const Data& d, const AttentionShape& shape, bool exact) {
  std::vector<float> out(d.n_new * kQDim, 7.f);
  absl::Status s;
  if (exact) {
    s = ggml::LaunchAttention({kHeads, kKvHeads, kDim, shape.scale}, d.q.data(), kQDim, d.n_new,
                              d.k.data(), d.v.data(), d.stride, d.len, out.data(), kQDim, nullptr);
  } else if (d.n_new == 1) {
    s = LaunchDecodeAttention(shape, d.q.data(), d.k.data(), d.v.data(), d.stride, d.len,
                              out.data(), nullptr);
  } else {
    s = LaunchPrefillAttention(shape, d.q.data(), d.n_new, d.k.data(), d.v.data(), d.stride, d.len,
                               out.data(), kQDim, nullptr);
  }
  EXPECT_TRUE(s.ok()) << s;
  return out;
}

TEST(AttentionPerHeadTest, PerGroupCallsEqualTheLayerCall) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(kDim));
  for (int64_t n_new : {1, 5}) {
    const Data d = MakeData(n_new, 70, static_cast<uint32_t>(n_new));
    for (int numerics = 0; numerics < 3; ++numerics) {
      AttentionShape shape{kHeads, kKvHeads, kDim, scale};
      shape.round_probs_f16 = numerics == 1;
      shape.emulate_bf16_flash = numerics == 2;
      EXPECT_EQ(PerGroup(d, shape, false), AllHeads(d, shape, false))
          << "n_new " << n_new << " numerics " << numerics;
    }
    const AttentionShape shape{kHeads, kKvHeads, kDim, scale};
    EXPECT_EQ(PerGroup(d, shape, true), AllHeads(d, shape, true)) << "ggml exact, n_new " << n_new;
  }
}

}  // namespace
}  // namespace xkv::cpu
