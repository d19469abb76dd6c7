// The fused QKV RoPE + cache write gives exactly what LaunchRope on Q, LaunchRope on K and
// LaunchKvCacheWrite give (same bits), and agrees with the CPU RoPE reference; tokens with a
// negative slot write Q only.
#include "kernels/cuda/qkv_rope_write.cuh"

#include <algorithm>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/rope.h"
#include "kernels/cuda/paged_kv.cuh"
#include "kernels/cuda/rope.cuh"
#include "tests/gpu/gpu_test_util.h"

namespace xkv::gpu_test {
namespace {

struct QkvCase {
  int n_heads, n_kv_heads, head_dim, rope_dims;
  cpu::RopeMode mode;
};

class QkvRopeWriteTest : public ::testing::TestWithParam<QkvCase> {};

TEST_P(QkvRopeWriteTest, EqualsTheUnfusedKernels) {
  XKV_SKIP_WITHOUT_GPU();
  const QkvCase c = GetParam();
  const int64_t n = 37, q_dim = int64_t{c.n_heads} * c.head_dim;
  const int64_t kv_dim = int64_t{c.n_kv_heads} * c.head_dim, stride = q_dim + 2 * kv_dim;
  const int64_t blocks = 5, block_elems = int64_t{c.n_kv_heads} * 16 * c.head_dim;
  std::vector<int64_t> pos(n), slots(blocks * 16);
  std::mt19937 rng(3);
  for (int64_t& p : pos) p = std::uniform_int_distribution<int64_t>(0, 30000)(rng);
  std::iota(slots.begin(), slots.end(), 0);
  std::shuffle(slots.begin(), slots.end(), rng);
  slots.resize(n);
  slots[4] = -1;
  const std::vector<float> qkv = RandomVector(n * stride, 11);
  DeviceBuffer<int64_t> d_pos(pos), d_slots(slots);
  DeviceBuffer<float> d_cs(n * c.rope_dims), d_qkv(qkv), d_q(n * q_dim), d_q2(n * q_dim);
  DeviceBuffer<__nv_bfloat16> kc(blocks * block_elems), vc(blocks * block_elems),
      kc2(blocks * block_elems), vc2(blocks * block_elems);
  for (auto* b : {&kc, &vc, &kc2, &vc2}) b->Fill(0);
  XKV_ASSERT_OK(cuda::LaunchRopeCache(d_pos.get(), n, c.rope_dims, 10000.f, d_cs.get(), nullptr));
  const cuda::PagedKvLayer fused{kc.get(), vc.get(), blocks, c.n_kv_heads, c.head_dim};
  XKV_ASSERT_OK(cuda::LaunchQkvRopeWrite(d_qkv.get(), stride, n, c.n_heads, c.rope_dims, c.mode,
                                         d_cs.get(), d_q.get(), q_dim, d_slots.get(), fused,
                                         /*pdl=*/true, nullptr));
  // The unfused path (ropes K in place inside a copy of qkv).
  DeviceBuffer<float> d_qkv2(qkv);
  float* k2 = d_qkv2.get() + q_dim;
  const cuda::PagedKvLayer unfused{kc2.get(), vc2.get(), blocks, c.n_kv_heads, c.head_dim};
  XKV_ASSERT_OK(cuda::LaunchRope(d_qkv2.get(), stride, n, c.n_heads, c.head_dim, c.rope_dims,
                                 c.mode, d_cs.get(), d_q2.get(), q_dim, nullptr));
  XKV_ASSERT_OK(cuda::LaunchRope(k2, stride, n, c.n_kv_heads, c.head_dim, c.rope_dims, c.mode,
                                 d_cs.get(), k2, stride, nullptr));
  XKV_ASSERT_OK(cuda::LaunchKvCacheWrite(k2, stride, k2 + kv_dim, stride, n, d_slots.get(), unfused,
                                         nullptr));
  EXPECT_EQ(d_q.Download(), d_q2.Download());
  EXPECT_EQ(kc.Download<uint16_t>(), kc2.Download<uint16_t>());
  EXPECT_EQ(vc.Download<uint16_t>(), vc2.Download<uint16_t>());
  // And the CPU reference for Q and K (bf16-rounded in the cache).
  std::vector<float> cs(n * c.rope_dims), want(n * stride);
  XKV_ASSERT_OK(cpu::LaunchRopeCache(pos.data(), n, c.rope_dims, 10000.f, cs.data()));
  XKV_ASSERT_OK(cpu::LaunchRope(qkv.data(), stride, n, c.n_heads + c.n_kv_heads, c.head_dim,
                                c.rope_dims, c.mode, cs.data(), want.data(), stride));
  std::vector<float> q_want(n * q_dim);
  for (int64_t t = 0; t < n; ++t) {
    std::copy_n(want.begin() + t * stride, q_dim, q_want.begin() + t * q_dim);
  }
  EXPECT_TRUE(AllClose(d_q.Download(), q_want, 1e-5f, 1e-5f));
  const std::vector<float> kh = FromBf16Bits(kc.Download<uint16_t>());
  const std::vector<float> vh = FromBf16Bits(vc.Download<uint16_t>());
  int64_t written = 0;
  for (int64_t t = 0; t < n; ++t) {
    if (slots[t] < 0) continue;
    ++written;
    const int64_t b = slots[t] / 16, r = slots[t] % 16;
    for (int g = 0; g < c.n_kv_heads; ++g) {
      for (int d = 0; d < c.head_dim; ++d) {
        const int64_t at = ((b * c.n_kv_heads + g) * 16 + r) * c.head_dim + d;
        const float k_want = want[t * stride + q_dim + g * c.head_dim + d];
        ASSERT_NEAR(kh[at], k_want, 1e-5f + std::fabs(k_want) / 128) << t << " " << g << " " << d;
        ASSERT_EQ(vh[at], RoundBf16({qkv[t * stride + q_dim + kv_dim + g * c.head_dim + d]})[0]);
      }
    }
  }
  EXPECT_EQ(written, n - 1);
}

INSTANTIATE_TEST_SUITE_P(Shapes, QkvRopeWriteTest,
                         ::testing::Values(QkvCase{9, 3, 64, 64, cpu::RopeMode::kNorm},
                                           QkvCase{9, 3, 64, 64, cpu::RopeMode::kNeox},
                                           QkvCase{32, 8, 128, 128, cpu::RopeMode::kNorm},
                                           QkvCase{8, 2, 128, 64, cpu::RopeMode::kNeox}));

TEST(QkvRopeWriteArgsTest, RejectsBadShapes) {
  XKV_SKIP_WITHOUT_GPU();
  DeviceBuffer<__nv_bfloat16> kc(1024), vc(1024);
  const cuda::PagedKvLayer cache{kc.get(), vc.get(), 1, 1, 64};
  DeviceBuffer<float> qkv(1024), q(1024), cs(1024);
  DeviceBuffer<int64_t> slots(4);
  auto run = [&](int64_t stride, int rope_dims) {
    return cuda::LaunchQkvRopeWrite(qkv.get(), stride, 2, 2, rope_dims, cpu::RopeMode::kNorm,
                                    cs.get(), q.get(), 128, slots.get(), cache, false, nullptr)
        .code();
  };
  EXPECT_EQ(run(255, 64), absl::StatusCode::kInvalidArgument);  // < q_dim + 2 kv_dim = 256
  EXPECT_EQ(run(256, 65), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(run(256, 128), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace xkv::gpu_test
