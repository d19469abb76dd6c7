// Decode attention is batch-invariant: a sequence's output is bit-for-bit the same alone, next to
// a much longer sequence (another max_kv_len, so other split counts), and with a larger
// max_kv_len bound (a CUDA-graph context bucket). This is what keeps a 2-stage pipeline's text
// identical to 1 stage's: each stage sizes its launches from its own layers' lengths.
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda/decode_attention.cuh"
#include "tests/gpu/gpu_test_util.h"
#include "tests/gpu/paged_fixture.h"

namespace xkv::gpu_test {
namespace {

std::vector<float> Decode(const HostPagedLayer& host, const std::vector<int>& seqs,
                          const std::vector<float>& q_all, int64_t max_len, int heads,
                          int head_dim) {
  const int64_t batch = seqs.size(), row = int64_t{heads} * head_dim;
  const int64_t max_blocks = (max_len + 15) / 16;
  std::vector<int32_t> tables(batch * max_blocks, 0), lens(batch);
  std::vector<float> q(batch * row);
  for (int64_t b = 0; b < batch; ++b) {
    const std::vector<int32_t>& t = host.tables[seqs[b]];
    std::copy(t.begin(), t.end(), tables.begin() + b * max_blocks);
    lens[b] = static_cast<int32_t>(host.lens[seqs[b]]);
    std::copy(q_all.begin() + seqs[b] * row, q_all.begin() + (seqs[b] + 1) * row,
              q.begin() + b * row);
  }
  DevicePagedLayer dev(host);
  DeviceBuffer<int32_t> d_tables(tables), d_lens(lens);
  DeviceBuffer<float> d_q(q), d_out(batch * row);
  const size_t ws_bytes = cuda::DecodeAttentionWorkspaceBytes(batch, heads, head_dim, max_len);
  DeviceBuffer<uint8_t> ws(ws_bytes);
  const cuda::AttentionShape shape{heads, host.kv_heads, head_dim, 0.125f, false};
  EXPECT_TRUE(cuda::LaunchDecodeAttention(shape, d_q.get(), batch, dev.view, d_tables.get(),
                                          max_blocks, d_lens.get(), max_len, d_out.get(), row,
                                          ws.get(), ws_bytes, nullptr)
                  .ok());
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  return d_out.Download();
}

TEST(DecodeInvarianceTest, OutputDoesNotDependOnTheBatchOrTheLengthBound) {
  XKV_SKIP_WITHOUT_GPU();
  for (auto [heads, kv_heads, hd] : {std::tuple{9, 3, 64}, std::tuple{32, 8, 128}}) {
    const HostPagedLayer host = MakePagedLayer(kv_heads, hd, {700, 9000, 33}, 7);
    const int64_t row = int64_t{heads} * hd;
    const std::vector<float> q = RandomVector(3 * row, 8);
    const std::vector<float> alone = Decode(host, {0}, q, 700, heads, hd);
    const std::vector<float> bucket = Decode(host, {0}, q, 8192, heads, hd);
    const std::vector<float> batched = Decode(host, {2, 0, 1}, q, 9000, heads, hd);
    EXPECT_EQ(alone, bucket) << heads;
    EXPECT_EQ(alone, std::vector<float>(batched.begin() + row, batched.begin() + 2 * row)) << heads;
  }
}

}  // namespace
}  // namespace xkv::gpu_test
