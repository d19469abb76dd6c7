// Device dequant, embedding, RMSNorm, RoPE, SwiGLU and KV-cache writes vs the CPU references, at
// the real model's shapes (hidden 576, 9/3 heads x 64, FFN 1536, vocab 49152) and Llama-3-8B's
// (4096, 32/8 x 128, FFN 14336).
#include <cuda_runtime_api.h>

#include <numeric>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/dequant.h"
#include "kernels/cpu/embedding.h"
#include "kernels/cpu/rms_norm.h"
#include "kernels/cpu/rope.h"
#include "kernels/cpu/swiglu.h"
#include "kernels/cuda/dequant.cuh"
#include "kernels/cuda/embedding.cuh"
#include "kernels/cuda/paged_kv.cuh"
#include "kernels/cuda/rms_norm.cuh"
#include "kernels/cuda/rope.cuh"
#include "kernels/cuda/swiglu.cuh"
#include "tests/gpu/gpu_test_util.h"

namespace xkv::gpu_test {
namespace {

// --- dequant: every GGUF type; bf16 output within 1 bf16 ulp of bf16(cpu fp32) (FMA contraction
// may differ in Q4_1), fp32 output within 1e-6 relative.
class DequantTest : public ::testing::TestWithParam<GgmlType> {};

TEST_P(DequantTest, MatchesCpu) {
  XKV_SKIP_WITHOUT_GPU();
  const GgmlType type = GetParam();
  for (int64_t n : {int64_t{576} * 1536, int64_t{4096} * 256}) {
    const std::vector<float> x = RandomVector(n, 11, -2.f, 2.f);
    const auto traits = GetGgmlTypeTraits(static_cast<uint32_t>(type));
    ASSERT_TRUE(traits.has_value());
    std::vector<uint8_t> raw(n / traits->block_elements * traits->block_bytes);
    XKV_ASSERT_OK(cpu::QuantizeFromF32(type, x.data(), n, raw.data()));
    std::vector<float> want(n);
    XKV_ASSERT_OK(cpu::DequantizeToF32(type, raw.data(), n, want.data()));
    // Unaligned source (offset 1 byte) to exercise GGUF data at any offset.
    std::vector<uint8_t> shifted = {0};
    shifted.insert(shifted.end(), raw.begin(), raw.end());
    DeviceBuffer<uint8_t> src(shifted);
    DeviceBuffer<__nv_bfloat16> out16(n);
    DeviceBuffer<float> out32(n);
    XKV_ASSERT_OK(cuda::DequantizeToBf16(type, src.get() + 1, n, out16.get(), nullptr));
    XKV_ASSERT_OK(cuda::DequantizeToF32(type, src.get() + 1, n, out32.get(), nullptr));
    XKV_ASSERT_CUDA(cudaDeviceSynchronize());
    EXPECT_TRUE(AllClose(out32.Download(), want, 0.f, 1e-6f)) << traits->name << " fp32";
    EXPECT_TRUE(AllClose(FromBf16Bits(out16.Download<uint16_t>()), RoundBf16(want), 0.f, 1.f / 128))
        << traits->name << " bf16";
  }
}

INSTANTIATE_TEST_SUITE_P(AllTypes, DequantTest,
                         ::testing::Values(GgmlType::kF32, GgmlType::kF16, GgmlType::kBF16,
                                           GgmlType::kQ4_0, GgmlType::kQ4_1, GgmlType::kQ8_0));

TEST(DequantArgsTest, RejectsPartialBlocks) {
  EXPECT_EQ(cuda::DequantizeToBf16(GgmlType::kQ4_0, nullptr, 33, nullptr, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
}

// --- embedding: exact (bf16 -> fp32 is exact).
TEST(EmbeddingTest, MatchesCpuAndFlagsBadTokens) {
  XKV_SKIP_WITHOUT_GPU();
  for (auto [vocab, dim] : {std::pair<int64_t, int64_t>{49152, 576}, {1000, 4096}}) {
    const std::vector<float> table = RoundBf16(RandomVector(vocab * dim, 3));
    std::vector<int32_t> tokens = {0, 1, static_cast<int32_t>(vocab - 1), 17, 17, 999};
    std::vector<float> want(tokens.size() * dim);
    XKV_ASSERT_OK(
        cpu::LaunchEmbedding(table.data(), vocab, dim, tokens.data(), tokens.size(), want.data()));
    tokens.push_back(static_cast<int32_t>(vocab));  // out of range -> NaN row
    DeviceBuffer<__nv_bfloat16> d_table(ToBf16Bits(table));
    DeviceBuffer<int32_t> d_tokens(tokens);
    DeviceBuffer<float> d_out(tokens.size() * dim);
    XKV_ASSERT_OK(cuda::LaunchEmbedding(d_table.get(), vocab, dim, d_tokens.get(), tokens.size(),
                                        d_out.get(), nullptr));
    std::vector<float> got = d_out.Download();
    for (int64_t i = 0; i < dim; ++i) EXPECT_TRUE(std::isnan(got[want.size() + i]));
    got.resize(want.size());
    EXPECT_TRUE(AllClose(got, want, 0.f, 0.f));
  }
}

// --- RMSNorm: fp32 out within 1e-5 relative (fp32 tree sum vs double sum); bf16 out 1 ulp.
// Dims that take the register-resident kernel (multiples of 4 up to 16384) and the loop kernel.
TEST(RmsNormTest, MatchesCpu) {
  XKV_SKIP_WITHOUT_GPU();
  for (int64_t dim : {576, 4096, 14336, 1030, 20000}) {
    const int64_t rows = 37;
    const std::vector<float> x = RandomVector(rows * dim, 5, -3.f, 3.f);
    const std::vector<float> w = RandomVector(dim, 6, 0.5f, 1.5f);
    std::vector<float> want(rows * dim);
    XKV_ASSERT_OK(cpu::LaunchRmsNorm(x.data(), w.data(), rows, dim, 1e-5f, want.data()));
    DeviceBuffer<float> d_x(x), d_w(w), d_out(rows * dim);
    DeviceBuffer<__nv_bfloat16> d_out16(rows * dim);
    XKV_ASSERT_OK(
        cuda::LaunchRmsNorm(d_x.get(), d_w.get(), rows, dim, 1e-5f, d_out.get(), nullptr));
    XKV_ASSERT_OK(
        cuda::LaunchRmsNorm(d_x.get(), d_w.get(), rows, dim, 1e-5f, d_out16.get(), nullptr));
    EXPECT_TRUE(AllClose(d_out.Download(), want, 1e-6f, 1e-5f)) << dim;
    EXPECT_TRUE(AllClose(FromBf16Bits(d_out16.Download<uint16_t>()), want, 1e-6f, 1.f / 128))
        << dim;
    // In place.
    XKV_ASSERT_OK(cuda::LaunchRmsNorm(d_x.get(), d_w.get(), rows, dim, 1e-5f, d_x.get(), nullptr));
    EXPECT_TRUE(AllClose(d_x.Download(), want, 1e-6f, 1e-5f)) << dim;
  }
}

// --- RoPE: cos/sin within 1e-6 absolute (double math on both sides); rotation within 1e-5.
struct RopeCase {
  int n_heads, head_dim, rope_dims;
  cpu::RopeMode mode;
};

class RopeTest : public ::testing::TestWithParam<RopeCase> {};

TEST_P(RopeTest, MatchesCpu) {
  XKV_SKIP_WITHOUT_GPU();
  const RopeCase c = GetParam();
  const int64_t n = 50, row = int64_t{c.n_heads} * c.head_dim, stride = row + 8;
  std::vector<int64_t> pos(n);
  std::mt19937 rng(9);
  for (int64_t& p : pos) p = std::uniform_int_distribution<int64_t>(0, 8191)(rng);
  pos[0] = 0;
  const std::vector<float> x = RandomVector(n * stride, 10);
  std::vector<float> cs(n * c.rope_dims), want(n * stride, 0.f);
  XKV_ASSERT_OK(cpu::LaunchRopeCache(pos.data(), n, c.rope_dims, 500000.f, cs.data()));
  XKV_ASSERT_OK(cpu::LaunchRope(x.data(), stride, n, c.n_heads, c.head_dim, c.rope_dims, c.mode,
                                cs.data(), want.data(), stride));
  DeviceBuffer<int64_t> d_pos(pos);
  DeviceBuffer<float> d_cs(n * c.rope_dims), d_x(x), d_out(n * stride);
  d_out.Fill(0);
  XKV_ASSERT_OK(cuda::LaunchRopeCache(d_pos.get(), n, c.rope_dims, 500000.f, d_cs.get(), nullptr));
  XKV_ASSERT_OK(cuda::LaunchRope(d_x.get(), stride, n, c.n_heads, c.head_dim, c.rope_dims, c.mode,
                                 d_cs.get(), d_out.get(), stride, nullptr));
  EXPECT_TRUE(AllClose(d_cs.Download(), cs, 1e-6f, 0.f));
  EXPECT_TRUE(AllClose(d_out.Download(), want, 1e-5f, 1e-5f));
  // In place over x.
  XKV_ASSERT_OK(cuda::LaunchRope(d_x.get(), stride, n, c.n_heads, c.head_dim, c.rope_dims, c.mode,
                                 d_cs.get(), d_x.get(), stride, nullptr));
  std::vector<float> got = d_x.Download();
  for (int64_t t = 0; t < n; ++t) {  // the padding past each row is untouched
    for (int64_t i = row; i < stride; ++i) want[t * stride + i] = x[t * stride + i];
  }
  EXPECT_TRUE(AllClose(got, want, 1e-5f, 1e-5f));
}

INSTANTIATE_TEST_SUITE_P(Shapes, RopeTest,
                         ::testing::Values(RopeCase{9, 64, 64, cpu::RopeMode::kNorm},
                                           RopeCase{9, 64, 64, cpu::RopeMode::kNeox},
                                           RopeCase{32, 128, 128, cpu::RopeMode::kNorm},
                                           RopeCase{8, 128, 128, cpu::RopeMode::kNeox},
                                           RopeCase{4, 128, 64, cpu::RopeMode::kNeox}));

// --- SwiGLU on a fused gate|up buffer: fp32 within 1e-5 relative (expf vs FastExp), bf16 1 ulp.
TEST(SwiGluTest, MatchesCpu) {
  XKV_SKIP_WITHOUT_GPU();
  for (int64_t dim : {1536, 14336}) {
    const int64_t rows = 9;
    const std::vector<float> gu = RandomVector(rows * 2 * dim, 12, -6.f, 6.f);
    std::vector<float> want(rows * dim);
    XKV_ASSERT_OK(cpu::LaunchSwiGlu(gu.data(), 2 * dim, gu.data() + dim, 2 * dim, rows, dim,
                                    want.data(), dim));
    DeviceBuffer<float> d_gu(gu), d_out(rows * dim);
    DeviceBuffer<__nv_bfloat16> d_out16(rows * dim);
    XKV_ASSERT_OK(cuda::LaunchSwiGlu(d_gu.get(), 2 * dim, d_gu.get() + dim, 2 * dim, rows, dim,
                                     d_out.get(), dim, nullptr));
    XKV_ASSERT_OK(cuda::LaunchSwiGlu(d_gu.get(), 2 * dim, d_gu.get() + dim, 2 * dim, rows, dim,
                                     d_out16.get(), dim, nullptr));
    EXPECT_TRUE(AllClose(d_out.Download(), want, 1e-6f, 1e-5f));
    EXPECT_TRUE(AllClose(FromBf16Bits(d_out16.Download<uint16_t>()), want, 1e-6f, 1.f / 128));
  }
}

// --- KV cache write: every written row equals bf16(input); skipped (-1) tokens write nothing.
TEST(KvCacheWriteTest, ScattersToSlots) {
  XKV_SKIP_WITHOUT_GPU();
  const int heads = 8, hd = 128;
  const int64_t blocks = 10, n = 40, row = heads * hd;
  const std::vector<float> k = RandomVector(n * row, 20), v = RandomVector(n * row, 21);
  std::vector<int64_t> slots(blocks * cuda::kKvBlockTokens);
  std::iota(slots.begin(), slots.end(), 0);
  std::shuffle(slots.begin(), slots.end(), std::mt19937(4));
  slots.resize(n);
  slots[5] = -1;
  DeviceBuffer<float> d_k(k), d_v(v);
  DeviceBuffer<int64_t> d_slots(slots);
  DeviceBuffer<__nv_bfloat16> kc(blocks * heads * 16 * hd), vc(blocks * heads * 16 * hd);
  kc.Fill(0);
  vc.Fill(0);
  const cuda::PagedKvLayer cache{kc.get(), vc.get(), blocks, heads, hd};
  XKV_ASSERT_OK(
      cuda::LaunchKvCacheWrite(d_k.get(), row, d_v.get(), row, n, d_slots.get(), cache, nullptr));
  const std::vector<float> kh = FromBf16Bits(kc.Download<uint16_t>());
  const std::vector<float> vh = FromBf16Bits(vc.Download<uint16_t>());
  const std::vector<float> kr = RoundBf16(k), vr = RoundBf16(v);
  int64_t checked = 0;
  for (int64_t t = 0; t < n; ++t) {
    if (slots[t] < 0) continue;
    const int64_t b = slots[t] / 16, r = slots[t] % 16;
    for (int g = 0; g < heads; ++g) {
      for (int d = 0; d < hd; ++d) {
        const int64_t at = ((b * heads + g) * 16 + r) * hd + d;
        ASSERT_EQ(kh[at], kr[t * row + g * hd + d]);
        ASSERT_EQ(vh[at], vr[t * row + g * hd + d]);
        ++checked;
      }
    }
  }
  EXPECT_EQ(checked, (n - 1) * row);
  const double total =
      std::accumulate(kh.begin(), kh.end(), 0.0, [](double a, float x) { return a + (x != 0.f); });
  EXPECT_EQ(static_cast<int64_t>(total), (n - 1) * row);  // nothing else was written
}

}  // namespace
}  // namespace xkv::gpu_test
