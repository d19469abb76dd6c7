// Flash prefill and paged batched decode attention vs the CPU references (kernels/cpu/attention.h)
// on the same bf16 K/V values (inputs in [-1, 1]; outputs are convex mixes of V rows).
// Decode tolerance: atol 1e-4 + rtol 1e-3 (both sides fp32, different summation orders and exp
// implementations).
// Prefill tolerance: the tensor-core kernel rounds Q * scale and the probabilities P to bf16
// (unit roundoff u = 2^-8) for its MMAs (fp32 accumulation, fp32 softmax). An output is
// sum_j p_j v_j / sum_j p_j, so rounding P moves it by at most u * max|v| (reached only on rows
// that see a couple of keys, where max|out| ~ max|v|; on long rows the errors average out), and
// the rounded Q shifts each score by ~u * |score| with random signs. Hence elementwise
// |got - want| <= u * max|want| (+ u * |want| more for a bf16 output: its own rounding), and
// overall ||got - want||_2 <= u * ||want||_2. A wrong key, row, block or mask moves outputs by
// O(0.1 * max|want|) and fails both. The CPU's emulation of the kernel's rounding
// (AttentionShape::emulate_bf16_flash, the kBf16 numerics) must come within 1e-4 rel L2.
#include "kernels/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda/decode_attention.cuh"
#include "kernels/cuda/prefill_attention.cuh"
#include "tests/gpu/gpu_test_util.h"
#include "tests/gpu/paged_fixture.h"

namespace xkv::gpu_test {
namespace {

constexpr float kAtol = 1e-4f, kRtol = 1e-3f;
constexpr float kBf16U = 1.f / 256;  // bf16 unit roundoff (8-bit significand)

// ||got - want||_2 / ||want||_2 and max|got - want| / max|want| (NaN anywhere: +inf).
struct PrefillError {
  double rel_l2 = 0, rel_max = 0;
};
PrefillError MeasureError(const std::vector<float>& got, const std::vector<float>& want) {
  double num = 0, den = 0, max_err = 0, max_ref = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double e = std::fabs(double(got[i]) - want[i]);
    if (std::isnan(e)) return {INFINITY, INFINITY};
    num += e * e;
    den += double(want[i]) * want[i];
    max_err = std::max(max_err, e);
    max_ref = std::max(max_ref, std::fabs(double(want[i])));
  }
  return {std::sqrt(num / den), max_err / max_ref};
}

float MaxAbs(const std::vector<float>& v) {
  float m = 0.f;
  for (float x : v) m = std::max(m, std::fabs(x));
  return m;
}

cpu::AttentionShape Shape(int heads, int kv_heads, int hd) {
  return {heads, kv_heads, hd, 1.0f / std::sqrt(static_cast<float>(hd)), false};
}

struct PrefillCase {
  int heads, kv_heads, head_dim;
  int64_t past, n_new;
};

class PrefillAttentionTest : public ::testing::TestWithParam<PrefillCase> {};

TEST_P(PrefillAttentionTest, MatchesCpu) {
  XKV_SKIP_WITHOUT_GPU();
  const PrefillCase c = GetParam();
  const int64_t len = c.past + c.n_new, row = int64_t{c.heads} * c.head_dim;
  const cpu::AttentionShape shape = Shape(c.heads, c.kv_heads, c.head_dim);
  const HostPagedLayer host = MakePagedLayer(c.kv_heads, c.head_dim, {len}, 7);
  const std::vector<float> q = RandomVector(c.n_new * row, 8);
  const std::vector<float> kg = host.Gather(host.k, 0), vg = host.Gather(host.v, 0);
  std::vector<float> want(c.n_new * row);
  XKV_ASSERT_OK(cpu::LaunchPrefillAttention(shape, q.data(), c.n_new, kg.data(), vg.data(),
                                            len * c.head_dim, len, want.data(), row, nullptr));
  DevicePagedLayer dev(host);
  DeviceBuffer<int32_t> table(host.tables[0]);
  DeviceBuffer<float> d_q(q);
  const int64_t out_stride = row + 64;  // a padded output buffer
  DeviceBuffer<float> d_out(c.n_new * out_stride);
  d_out.Fill(0xff);  // NaN: an element the kernel does not write fails the comparison
  XKV_ASSERT_OK(cuda::LaunchPrefillAttention(shape, d_q.get(), c.n_new, dev.view, table.get(), len,
                                             d_out.get(), out_stride, nullptr));
  XKV_ASSERT_CUDA(cudaDeviceSynchronize());
  const std::vector<float> padded = d_out.Download();
  std::vector<float> got(c.n_new * row);
  for (int64_t t = 0; t < c.n_new; ++t) {
    std::copy_n(padded.begin() + t * out_stride, row, got.begin() + t * row);
  }
  const float atol = kBf16U * MaxAbs(want);
  EXPECT_TRUE(AllClose(got, want, atol, 0.f));
  const PrefillError err = MeasureError(got, want);
  EXPECT_LE(err.rel_l2, kBf16U);
  std::printf("prefill %d/%d x %d past %lld new %lld: rel L2 %.2e, max err / max|ref| %.2e\n",
              c.heads, c.kv_heads, c.head_dim, static_cast<long long>(c.past),
              static_cast<long long>(c.n_new), err.rel_l2, err.rel_max);
  // The CPU emulation of this kernel (kBf16 numerics) rounds where it rounds, so only fp32
  // summation order and ex2.approx remain: a P now and then lands on the other side of a bf16
  // rounding boundary. Bound 1e-4 rel L2, 40x under the fp32 reference's u = 2^-8 (<= 2.5e-5 seen
  // on an H100 and an H200, against ~1.5e-3 for the fp32 reference).
  cpu::AttentionShape emulated = shape;
  emulated.emulate_bf16_flash = true;
  std::vector<float> emul(c.n_new * row);
  cpu::ThreadPool pool(8);  // the emulation runs scalar loops, not BLAS
  XKV_ASSERT_OK(cpu::LaunchPrefillAttention(emulated, q.data(), c.n_new, kg.data(), vg.data(),
                                            len * c.head_dim, len, emul.data(), row, &pool));
  const PrefillError emul_err = MeasureError(got, emul);
  EXPECT_LE(emul_err.rel_l2, 1e-4);
  std::printf("  vs the CPU emulation (emulate_bf16_flash): rel L2 %.2e, max err / max|ref| %.2e\n",
              emul_err.rel_l2, emul_err.rel_max);

  DeviceBuffer<__nv_bfloat16> d_out16(c.n_new * row);
  d_out16.Fill(0xff);
  XKV_ASSERT_OK(cuda::LaunchPrefillAttention(shape, d_q.get(), c.n_new, dev.view, table.get(), len,
                                             d_out16.get(), row, nullptr));
  const std::vector<float> got16 = FromBf16Bits(d_out16.Download<uint16_t>());
  EXPECT_TRUE(AllClose(got16, want, atol, kBf16U));
  EXPECT_LE(MeasureError(got16, want).rel_l2, 2 * kBf16U);
}

INSTANTIATE_TEST_SUITE_P(
    ModelShapes, PrefillAttentionTest,
    ::testing::Values(PrefillCase{9, 3, 64, 0, 1}, PrefillCase{9, 3, 64, 0, 100},
                      PrefillCase{9, 3, 64, 0, 2048}, PrefillCase{9, 3, 64, 700, 300},
                      PrefillCase{9, 3, 64, 5, 63}, PrefillCase{32, 8, 128, 0, 64},
                      PrefillCase{32, 8, 128, 0, 1000}, PrefillCase{32, 8, 128, 0, 2048},
                      PrefillCase{32, 8, 128, 37, 5}, PrefillCase{32, 8, 128, 1500, 129},
                      // later chunks (the queries are the last n_new of kv_len slots), unaligned
                      PrefillCase{9, 3, 64, 1234, 777}, PrefillCase{32, 8, 128, 2085, 1000},
                      // long prompts
                      PrefillCase{9, 3, 64, 0, 4096}, PrefillCase{32, 8, 128, 0, 4096},
                      // head_dim 64 with 128-row CTAs (> 3 CTAs per SM), a group of 8
                      PrefillCase{64, 8, 64, 300, 800}));

struct DecodeCase {
  int heads, kv_heads, head_dim;
  std::vector<std::vector<int64_t>> lens;  // [layer][sequence]
};

class DecodeAttentionTest : public ::testing::TestWithParam<DecodeCase> {};

// Every layer has its own pool and its own length per sequence (XKV budgets).
TEST_P(DecodeAttentionTest, RaggedLayersMatchCpu) {
  XKV_SKIP_WITHOUT_GPU();
  const DecodeCase c = GetParam();
  const cpu::AttentionShape shape = Shape(c.heads, c.kv_heads, c.head_dim);
  const int64_t row = int64_t{c.heads} * c.head_dim;
  for (size_t layer = 0; layer < c.lens.size(); ++layer) {
    const std::vector<int64_t>& lens = c.lens[layer];
    const int64_t batch = lens.size();
    const int64_t max_len = *std::max_element(lens.begin(), lens.end());
    const int64_t max_blocks = (max_len + 15) / 16 + 1;
    const HostPagedLayer host = MakePagedLayer(c.kv_heads, c.head_dim, lens, 100 + layer);
    std::vector<int32_t> tables(batch * max_blocks, -1);  // -1: never dereferenced
    std::vector<int32_t> lens32(batch);
    for (int64_t b = 0; b < batch; ++b) {
      std::copy(host.tables[b].begin(), host.tables[b].end(), tables.begin() + b * max_blocks);
      lens32[b] = static_cast<int32_t>(lens[b]);
    }
    const std::vector<float> q = RandomVector(batch * row, 200 + layer);
    std::vector<float> want(batch * row);
    for (int64_t b = 0; b < batch; ++b) {
      const std::vector<float> kg = host.Gather(host.k, b), vg = host.Gather(host.v, b);
      XKV_ASSERT_OK(cpu::LaunchDecodeAttention(shape, q.data() + b * row, kg.data(), vg.data(),
                                               lens[b] * c.head_dim, lens[b], want.data() + b * row,
                                               nullptr));
    }
    DevicePagedLayer dev(host);
    DeviceBuffer<int32_t> d_tables(tables), d_lens(lens32);
    DeviceBuffer<float> d_q(q), d_out(batch * row);
    const size_t ws_bytes =
        cuda::DecodeAttentionWorkspaceBytes(batch, c.heads, c.head_dim, max_len);
    DeviceBuffer<uint8_t> ws(ws_bytes);
    XKV_ASSERT_OK(cuda::LaunchDecodeAttention(shape, d_q.get(), batch, dev.view, d_tables.get(),
                                              max_blocks, d_lens.get(), max_len, d_out.get(), row,
                                              ws.get(), ws_bytes, nullptr));
    XKV_ASSERT_CUDA(cudaDeviceSynchronize());
    EXPECT_TRUE(AllClose(d_out.Download(), want, kAtol, kRtol)) << "layer " << layer;

    DeviceBuffer<__nv_bfloat16> d_out16(batch * row);
    XKV_ASSERT_OK(cuda::LaunchDecodeAttention(shape, d_q.get(), batch, dev.view, d_tables.get(),
                                              max_blocks, d_lens.get(), max_len, d_out16.get(), row,
                                              ws.get(), ws_bytes, nullptr));
    EXPECT_TRUE(AllClose(FromBf16Bits(d_out16.Download<uint16_t>()), want, kAtol, 1.f / 128))
        << "layer " << layer;
  }
}

INSTANTIATE_TEST_SUITE_P(
    ModelShapes, DecodeAttentionTest,
    ::testing::Values(
        DecodeCase{
            9, 3, 64, {{1, 16, 17, 300, 2000}, {5, 15, 33, 1024, 64}, {100, 1, 16, 4097, 7}}},
        DecodeCase{32, 8, 128, {{8192, 1, 17, 4000, 300}, {2048, 8192, 33, 16, 1}}},
        DecodeCase{32, 8, 128, {std::vector<int64_t>(8, 8192)}},
        DecodeCase{8, 8, 128, {{1, 2, 3, 250}}}, DecodeCase{16, 2, 64, {{777, 31}}}));

TEST(AttentionArgsTest, RejectsUnsupportedShapesAndSmallWorkspace) {
  // Argument checks run before any device call: no GPU needed.
  int dummy = 0;
  auto* fake = reinterpret_cast<__nv_bfloat16*>(&dummy);
  cuda::PagedKvLayer cache{fake, fake, 4, 2, 96};
  float f = 0.f;
  int32_t i = 0;
  EXPECT_EQ(
      cuda::LaunchPrefillAttention(Shape(4, 2, 96), &f, 1, cache, &i, 1, &f, 384, nullptr).code(),
      absl::StatusCode::kUnimplemented);
  cache.head_dim = 64;
  EXPECT_EQ(cuda::LaunchDecodeAttention(Shape(4, 2, 64), &f, 1, cache, &i, 1, &i, 16, &f, 256, &f,
                                        1, nullptr)
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      cuda::LaunchPrefillAttention(Shape(4, 3, 64), &f, 1, cache, &i, 1, &f, 256, nullptr).code(),
      absl::StatusCode::kInvalidArgument);
  // The prefill kernel reads q and the cache 16 bytes at a time.
  alignas(16) float buf[8] = {};
  cuda::PagedKvLayer aligned{reinterpret_cast<__nv_bfloat16*>(buf),
                             reinterpret_cast<__nv_bfloat16*>(buf), 4, 2, 64};
  EXPECT_EQ(
      cuda::LaunchPrefillAttention(Shape(4, 2, 64), buf + 1, 1, aligned, &i, 1, &f, 256, nullptr)
          .code(),
      absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace xkv::gpu_test
