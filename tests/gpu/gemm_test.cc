// cuBLAS bf16 GEMM (fp32 accumulation) vs the CPU fp32 GEMM on the same bf16-rounded inputs, at
// the projection shapes of the real model and of Llama-3-8B.
#include "kernels/cpu/gemm.h"

#include <cmath>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda/cublas_handle.h"
#include "kernels/cuda/gemm.cuh"
#include "tests/gpu/gpu_test_util.h"

namespace xkv::gpu_test {
namespace {

struct GemmCase {
  int64_t m, n, k;
};

class GemmTest : public ::testing::TestWithParam<GemmCase> {};

// Tolerance: inputs in [-1, 1]; both sides accumulate in fp32 over k terms in different orders:
// atol 1e-4 * sqrt(k) + rtol 1e-4 for fp32 output, 1 bf16 ulp (1/128 relative) for bf16 output.
TEST_P(GemmTest, MatchesCpu) {
  XKV_SKIP_WITHOUT_GPU();
  const GemmCase c = GetParam();
  const int64_t lda = c.k + 8;  // a padded activation buffer
  const std::vector<float> a = RoundBf16(RandomVector(c.m * lda, 1));
  const std::vector<float> b = RoundBf16(RandomVector(c.n * c.k, 2));
  const std::vector<float> c0 = RandomVector(c.m * c.n, 3);
  std::vector<float> want = c0;
  XKV_ASSERT_OK(cpu::LaunchGemm(a.data(), lda, b.data(), c.k, want.data(), c.n, c.m, c.n, c.k,
                                /*accumulate=*/true));
  auto handle = cuda::CublasHandle::Create();
  XKV_ASSERT_OK(handle.status());
  DeviceBuffer<__nv_bfloat16> d_a(ToBf16Bits(a)), d_b(ToBf16Bits(b)), d_c16(c.m * c.n);
  DeviceBuffer<float> d_c(c0);
  XKV_ASSERT_OK(cuda::LaunchGemm(*handle, d_a.get(), lda, d_b.get(), c.k, d_c.get(), c.n, c.m, c.n,
                                 c.k, /*accumulate=*/true, nullptr));
  const float atol = 1e-4f * std::sqrt(static_cast<float>(c.k));
  EXPECT_TRUE(AllClose(d_c.Download(), want, atol, 1e-4f));

  std::vector<float> plain(c.m * c.n);
  XKV_ASSERT_OK(cpu::LaunchGemm(a.data(), lda, b.data(), c.k, plain.data(), c.n, c.m, c.n, c.k,
                                /*accumulate=*/false));
  XKV_ASSERT_OK(cuda::LaunchGemm(*handle, d_a.get(), lda, d_b.get(), c.k, d_c16.get(), c.n, c.m,
                                 c.n, c.k, /*accumulate=*/false, nullptr));
  EXPECT_TRUE(AllClose(FromBf16Bits(d_c16.Download<uint16_t>()), plain, atol, 1.f / 128));
}

INSTANTIATE_TEST_SUITE_P(ModelShapes, GemmTest,
                         ::testing::Values(GemmCase{1, 576, 576}, GemmCase{7, 1536, 576},
                                           GemmCase{64, 576, 1536}, GemmCase{33, 960, 576},
                                           GemmCase{1, 4096, 4096}, GemmCase{16, 1024, 4096},
                                           GemmCase{5, 4096, 14336}, GemmCase{128, 2048, 4096}));

TEST(GemmArgsTest, RejectsBadLeadingDimensions) {
  XKV_SKIP_WITHOUT_GPU();  // creating a handle needs a device
  auto handle = cuda::CublasHandle::Create(0);
  XKV_ASSERT_OK(handle.status());
  EXPECT_EQ(cuda::LaunchGemm(*handle, static_cast<const __nv_bfloat16*>(nullptr), 4,
                             static_cast<const __nv_bfloat16*>(nullptr), 8,
                             static_cast<float*>(nullptr), 8, 2, 8, 8, false, nullptr)
                .code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace xkv::gpu_test
