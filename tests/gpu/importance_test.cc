// Device XKV importance scores vs cpu::LaunchImportance, contiguous and paged keys, both
// granularities. Tolerance: atol 1e-6 + rtol 1e-4 (same summation order; expf and dot products
// may round differently).
#include "kernels/cpu/importance.h"

#include <cmath>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda/importance.cuh"
#include "tests/gpu/gpu_test_util.h"
#include "tests/gpu/paged_fixture.h"

namespace xkv::gpu_test {
namespace {

struct ImportanceCase {
  int heads, kv_heads, head_dim;
  int64_t seq_len;
  int window, pool;
  ScoreGranularity granularity;
};

class ImportanceTest : public ::testing::TestWithParam<ImportanceCase> {};

TEST_P(ImportanceTest, MatchesCpu) {
  XKV_SKIP_WITHOUT_GPU();
  const ImportanceCase c = GetParam();
  const ImportanceShape shape{c.heads, c.kv_heads, c.head_dim, c.seq_len};
  const ImportanceOptions options{c.window, c.pool, c.granularity};
  const int64_t prefix = c.seq_len - c.window;
  const int out_heads = ImportanceHeads(shape, c.granularity);
  // Keys live in a paged cache (bf16); the CPU and the contiguous launcher see the same values.
  const HostPagedLayer host = MakePagedLayer(c.kv_heads, c.head_dim, {c.seq_len}, 31);
  const std::vector<float> k = host.Gather(host.k, 0);
  // Larger query scale than [-1, 1] makes the softmax peaky, as real attention is.
  const std::vector<float> q = RandomVector(int64_t{c.window} * c.heads * c.head_dim, 32, -3, 3);
  std::vector<float> want(out_heads * prefix);
  XKV_ASSERT_OK(cpu::LaunchImportance(q.data(), k.data(), shape, options, want.data()));

  const size_t ws_bytes = cuda::ImportanceWorkspaceBytes(shape, options);
  DeviceBuffer<uint8_t> ws(ws_bytes);
  DeviceBuffer<float> d_q(q), d_k(k), d_scores(out_heads * prefix);
  XKV_ASSERT_OK(cuda::LaunchImportance(d_q.get(), d_k.get(), shape, options, d_scores.get(),
                                       ws.get(), ws_bytes, nullptr));
  XKV_ASSERT_CUDA(cudaDeviceSynchronize());
  EXPECT_TRUE(AllClose(d_scores.Download(), want, 1e-6f, 1e-4f)) << "contiguous";

  DevicePagedLayer dev(host);
  DeviceBuffer<int32_t> table(host.tables[0]);
  d_scores.Fill(0);
  XKV_ASSERT_OK(cuda::LaunchImportancePaged(d_q.get(), dev.view, table.get(), shape, options,
                                            d_scores.get(), ws.get(), ws_bytes, nullptr));
  EXPECT_TRUE(AllClose(d_scores.Download(), want, 1e-6f, 1e-4f)) << "paged";
  // Scores are a distribution's mass: the unpooled total is heads * w (each softmax row sums to
  // 1) minus the window's own columns, so the pooled mean must be positive and below w * group.
  double total = 0;
  for (float s : want) total += s;
  EXPECT_GT(total, 0.0);
}

INSTANTIATE_TEST_SUITE_P(
    ModelShapes, ImportanceTest,
    ::testing::Values(ImportanceCase{9, 3, 64, 300, 8, 7, ScoreGranularity::kKvHead},
                      ImportanceCase{9, 3, 64, 300, 8, 7, ScoreGranularity::kQueryHead},
                      ImportanceCase{9, 3, 64, 9, 8, 7, ScoreGranularity::kKvHead},
                      ImportanceCase{9, 3, 64, 2048, 16, 1, ScoreGranularity::kKvHead},
                      ImportanceCase{32, 8, 128, 2048, 8, 7, ScoreGranularity::kKvHead},
                      ImportanceCase{32, 8, 128, 777, 32, 5, ScoreGranularity::kQueryHead}));

TEST(ImportanceArgsTest, RejectsSmallWorkspace) {
  const ImportanceShape shape{9, 3, 64, 100};
  const ImportanceOptions options;
  float f = 0.f;
  EXPECT_EQ(cuda::LaunchImportance(&f, &f, shape, options, &f, &f, 4, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace xkv::gpu_test
