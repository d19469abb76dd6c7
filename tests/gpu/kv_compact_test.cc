// Device top-k selection of kept slots vs allocator's SelectKeptTokens (+ window), compaction
// into fresh blocks (bit-exact copies), and decode attention over the compacted cache vs the CPU
// decode over the gathered kept rows.
#include "kernels/cuda/kv_compact.cuh"

#include <cmath>
#include <vector>

#include "allocator/kv_policy.h"
#include "gtest/gtest.h"
#include "kernels/cpu/attention.h"
#include "kernels/cuda/decode_attention.cuh"
#include "tests/gpu/gpu_test_util.h"
#include "tests/gpu/paged_fixture.h"

namespace xkv::gpu_test {
namespace {

// Scores with many exact ties (values on a coarse grid) so the tie rule is exercised.
std::vector<float> TiedScores(int heads, int64_t prefix, uint32_t seed) {
  std::vector<float> s = RandomVector(heads * prefix, seed, 0.f, 1.f);
  for (float& x : s) x = std::floor(x * 64.f) / 64.f + 1.f / 128;
  return s;
}

std::vector<int32_t> CpuKept(const std::vector<float>& scores, int heads, int64_t prefix,
                             int64_t budget, int64_t seq_len) {
  auto sel = SelectKeptTokens(scores, heads, prefix, budget, SelectionRule::kTopScore, 0);
  EXPECT_TRUE(sel.ok()) << sel.status();
  std::vector<int32_t> out;
  for (int h = 0; h < heads; ++h) {
    for (int64_t j : (*sel)[h]) out.push_back(static_cast<int32_t>(j));
    for (int64_t j = prefix; j < seq_len; ++j) out.push_back(static_cast<int32_t>(j));
  }
  return out;
}

TEST(SelectKeptSlotsTest, MatchesAllocatorRule) {
  XKV_SKIP_WITHOUT_GPU();
  struct Case {
    int heads;
    int64_t prefix, budget, window;
  };
  for (const Case c : {Case{3, 292, 40, 8}, Case{3, 292, 0, 8}, Case{3, 292, 292, 8},
                       Case{8, 8184, 1000, 8}, Case{8, 32760, 4096, 8}, Case{1, 5000, 1, 0}}) {
    const int64_t seq_len = c.prefix + c.window, keep = c.budget + c.window;
    const std::vector<float> scores = TiedScores(c.heads, c.prefix, 41);
    DeviceBuffer<float> d_scores(scores);
    DeviceBuffer<int32_t> d_kept(c.heads * keep);
    XKV_ASSERT_OK(cuda::LaunchSelectKeptSlots(d_scores.get(), c.heads, c.prefix, c.budget, seq_len,
                                              d_kept.get(), nullptr));
    XKV_ASSERT_CUDA(cudaDeviceSynchronize());
    EXPECT_EQ(d_kept.Download(), CpuKept(scores, c.heads, c.prefix, c.budget, seq_len))
        << "prefix " << c.prefix << " budget " << c.budget;
  }
}

TEST(CompactKvTest, CopiesKeptRowsAndDecodeMatchesCpu) {
  XKV_SKIP_WITHOUT_GPU();
  for (auto [heads, kv_heads, hd] : {std::tuple{9, 3, 64}, std::tuple{32, 8, 128}}) {
    const int64_t seq_len = 1000, window = 8, prefix = seq_len - window, budget = 301;
    const int64_t keep = budget + window, dst_blocks = (keep + 15) / 16;
    // Pool: the sequence's blocks, then fresh destination blocks (ids after the source ones).
    HostPagedLayer host = MakePagedLayer(kv_heads, hd, {seq_len, keep}, 51);
    const std::vector<int32_t>& src_table = host.tables[0];
    const std::vector<int32_t>& dst_table = host.tables[1];
    ASSERT_EQ(static_cast<int64_t>(dst_table.size()), dst_blocks);
    const std::vector<float> scores = TiedScores(kv_heads, prefix, 52);
    DevicePagedLayer dev(host);
    DeviceBuffer<float> d_scores(scores);
    DeviceBuffer<int32_t> d_kept(kv_heads * keep), d_src(src_table), d_dst(dst_table);
    XKV_ASSERT_OK(cuda::LaunchSelectKeptSlots(d_scores.get(), kv_heads, prefix, budget, seq_len,
                                              d_kept.get(), nullptr));
    XKV_ASSERT_OK(
        cuda::LaunchCompactKv(dev.view, d_src.get(), d_kept.get(), keep, d_dst.get(), nullptr));
    XKV_ASSERT_CUDA(cudaDeviceSynchronize());
    const std::vector<int32_t> kept = d_kept.Download();
    ASSERT_EQ(kept, CpuKept(scores, kv_heads, prefix, budget, seq_len));
    const std::vector<float> kpool = FromBf16Bits(dev.k.Download<uint16_t>());
    const std::vector<float> vpool = FromBf16Bits(dev.v.Download<uint16_t>());
    // The compacted rows, and the CPU view of them: [kv_heads][keep][hd].
    std::vector<float> kg(kv_heads * keep * hd), vg(kv_heads * keep * hd);
    for (int g = 0; g < kv_heads; ++g) {
      for (int64_t s = 0; s < keep; ++s) {
        const int64_t src = host.At(src_table[kept[g * keep + s] / 16], g, kept[g * keep + s] % 16);
        const int64_t dst = host.At(dst_table[s / 16], g, s % 16);
        for (int d = 0; d < hd; ++d) {
          ASSERT_EQ(kpool[dst + d], host.k[src + d]);
          ASSERT_EQ(vpool[dst + d], host.v[src + d]);
          kg[(g * keep + s) * hd + d] = host.k[src + d];
          vg[(g * keep + s) * hd + d] = host.v[src + d];
        }
      }
    }
    // Decode over the compacted cache.
    const cpu::AttentionShape shape{heads, kv_heads, hd, 1.0f / std::sqrt(float(hd)), false};
    const std::vector<float> q = RandomVector(heads * hd, 53);
    std::vector<float> want(heads * hd);
    XKV_ASSERT_OK(cpu::LaunchDecodeAttention(shape, q.data(), kg.data(), vg.data(), keep * hd, keep,
                                             want.data(), nullptr));
    const std::vector<int32_t> len = {static_cast<int32_t>(keep)};
    DeviceBuffer<int32_t> d_len(len);
    DeviceBuffer<float> d_q(q), d_out(heads * hd);
    const size_t ws_bytes = cuda::DecodeAttentionWorkspaceBytes(1, heads, hd, keep);
    DeviceBuffer<uint8_t> ws(ws_bytes);
    XKV_ASSERT_OK(cuda::LaunchDecodeAttention(shape, d_q.get(), 1, dev.view, d_dst.get(),
                                              dst_blocks, d_len.get(), keep, d_out.get(),
                                              heads * hd, ws.get(), ws_bytes, nullptr));
    EXPECT_TRUE(AllClose(d_out.Download(), want, 1e-4f, 1e-3f));
  }
}

}  // namespace
}  // namespace xkv::gpu_test
