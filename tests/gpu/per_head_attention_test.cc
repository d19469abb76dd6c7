// KV heads of one layer holding different token counts (per-KV-head tables of head-blocks,
// kernels/cuda/paged_kv.cuh): flash prefill with per-head lengths and decode on the one-head view
// against the CPU references run head by head (each KV head's query group over that head's own
// rows); and, for a full cache, the per-head layout giving bit-identical results to the shared
// table (prefill, decode, importance, the cache writes). Tolerances as in attention_test.cc.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <ostream>
#include <tuple>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/importance.h"
#include "kernels/cuda/decode_attention.cuh"
#include "kernels/cuda/importance.cuh"
#include "kernels/cuda/paged_kv.cuh"
#include "kernels/cuda/prefill_attention.cuh"
#include "kernels/cuda/qkv_rope_write.cuh"
#include "tests/gpu/gpu_test_util.h"
#include "tests/gpu/paged_fixture.h"

namespace xkv::gpu_test {
namespace {

constexpr float kAtol = 1e-4f, kRtol = 1e-3f;
constexpr float kBf16U = 1.f / 256;

cpu::AttentionShape Shape(int heads, int kv_heads, int hd) {
  return {heads, kv_heads, hd, 1.0f / std::sqrt(static_cast<float>(hd)), false};
}

float MaxAbs(const std::vector<float>& v) {
  float m = 0.f;
  for (float x : v) m = std::max(m, std::fabs(x));
  return m;
}

double RelL2(const std::vector<float>& got, const std::vector<float>& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double e = double(got[i]) - want[i];
    if (std::isnan(e)) return INFINITY;
    num += e * e;
    den += double(want[i]) * want[i];
  }
  return std::sqrt(num / den);
}

// Rows [token][heads * hd]: query heads [g * group, (g + 1) * group) of every token.
std::vector<float> GroupRows(const std::vector<float>& rows, int64_t tokens, int heads, int group,
                             int g, int hd) {
  std::vector<float> out(tokens * group * hd);
  for (int64_t t = 0; t < tokens; ++t) {
    std::copy_n(rows.begin() + (t * heads + g * group) * hd, group * hd,
                out.begin() + t * group * hd);
  }
  return out;
}

void ScatterGroup(const std::vector<float>& part, int64_t tokens, int heads, int group, int g,
                  int hd, std::vector<float>* rows) {
  for (int64_t t = 0; t < tokens; ++t) {
    std::copy_n(part.begin() + t * group * hd, group * hd,
                rows->begin() + (t * heads + g * group) * hd);
  }
}

bool BitEqual(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// ---- prefill with per-head lengths -----------------------------------------------------------

struct HeadPrefillCase {
  int heads, kv_heads, head_dim;
  std::vector<int64_t> past;  // [KV head]: slots before the chunk (a compacted prefix + window)
  int64_t n_new;
};

// Stable test names (ctest lists the parameter): shape and the first two head lengths.
void PrintTo(const HeadPrefillCase& c, std::ostream* os) {
  *os << c.heads << "q" << c.kv_heads << "kv" << c.head_dim << "d_past" << c.past[0] << "_"
      << c.past[1] << "_new" << c.n_new;
}

class PerHeadPrefillTest : public ::testing::TestWithParam<HeadPrefillCase> {};

TEST_P(PerHeadPrefillTest, MatchesCpuHeadByHead) {
  XKV_SKIP_WITHOUT_GPU();
  const HeadPrefillCase c = GetParam();
  ASSERT_EQ(static_cast<int>(c.past.size()), c.kv_heads);
  const int group = c.heads / c.kv_heads;
  const int64_t row = int64_t{c.heads} * c.head_dim;
  std::vector<int64_t> lens;
  for (int64_t p : c.past) lens.push_back(p + c.n_new);
  const int64_t max_len = *std::max_element(lens.begin(), lens.end());
  const int64_t width = (max_len + 15) / 16 + 1;
  const HostHeadPagedLayer host = MakeHeadPagedLayer(c.kv_heads, c.head_dim, {lens}, 11);
  const std::vector<float> q = RandomVector(c.n_new * row, 12);
  std::vector<float> want(c.n_new * row);
  for (int g = 0; g < c.kv_heads; ++g) {
    const std::vector<float> kg = host.Gather(host.k, 0, g), vg = host.Gather(host.v, 0, g);
    const std::vector<float> qg = GroupRows(q, c.n_new, c.heads, group, g, c.head_dim);
    std::vector<float> out(c.n_new * group * c.head_dim);
    XKV_ASSERT_OK(cpu::LaunchPrefillAttention(Shape(group, 1, c.head_dim), qg.data(), c.n_new,
                                              kg.data(), vg.data(), lens[g] * c.head_dim, lens[g],
                                              out.data(), int64_t{group} * c.head_dim, nullptr));
    ScatterGroup(out, c.n_new, c.heads, group, g, c.head_dim, &want);
  }
  DevicePagedLayer dev(host, width);
  DeviceBuffer<int32_t> tables(host.FlatTables(width)), d_lens(host.FlatLens());
  DeviceBuffer<float> d_q(q), d_out(c.n_new * row);
  d_out.Fill(0xff);
  XKV_ASSERT_OK(cuda::LaunchPrefillAttention(Shape(c.heads, c.kv_heads, c.head_dim), d_q.get(),
                                             c.n_new, dev.view, tables.get(), max_len, d_out.get(),
                                             row, nullptr, d_lens.get()));
  XKV_ASSERT_CUDA(cudaDeviceSynchronize());
  const std::vector<float> got = d_out.Download();
  EXPECT_TRUE(AllClose(got, want, kBf16U * MaxAbs(want), 0.f));
  EXPECT_LE(RelL2(got, want), kBf16U);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, PerHeadPrefillTest,
    ::testing::Values(
        // SmolLM2 (group 3): a head with no prefix token left (window only), unaligned lengths
        HeadPrefillCase{9, 3, 64, {8, 300, 41}, 37}, HeadPrefillCase{9, 3, 64, {0, 16, 17}, 1},
        HeadPrefillCase{9, 3, 64, {8, 1234, 100}, 200},
        // Llama-3 (group 4): every head its own count, one at 0 prefix tokens + window
        HeadPrefillCase{32, 8, 128, {8, 1, 15, 16, 33, 100, 700, 5}, 129},
        HeadPrefillCase{32, 8, 128, {2000, 31, 32, 8, 8, 8, 1024, 63}, 64},
        // group 8, head_dim 64
        HeadPrefillCase{16, 2, 64, {1000, 3}, 17}));

// ---- decode with per-head lengths (one-head view) --------------------------------------------

struct HeadDecodeCase {
  int heads, kv_heads, head_dim;
  std::vector<std::vector<int64_t>> lens;  // [sequence][KV head], the new token included
};

void PrintTo(const HeadDecodeCase& c, std::ostream* os) {
  *os << c.heads << "q" << c.kv_heads << "kv" << c.head_dim << "d_seqs" << c.lens.size() << "_len"
      << c.lens[0][0] << "_" << c.lens[0][1];
}

class PerHeadDecodeTest : public ::testing::TestWithParam<HeadDecodeCase> {};

TEST_P(PerHeadDecodeTest, MatchesCpuHeadByHead) {
  XKV_SKIP_WITHOUT_GPU();
  const HeadDecodeCase c = GetParam();
  const int group = c.heads / c.kv_heads;
  const int64_t row = int64_t{c.heads} * c.head_dim, batch = c.lens.size();
  int64_t max_len = 0;
  for (const std::vector<int64_t>& heads : c.lens) {
    ASSERT_EQ(static_cast<int>(heads.size()), c.kv_heads);
    max_len = std::max(max_len, *std::max_element(heads.begin(), heads.end()));
  }
  const int64_t width = (max_len + 15) / 16 + 1;
  const HostHeadPagedLayer host = MakeHeadPagedLayer(c.kv_heads, c.head_dim, c.lens, 21);
  const std::vector<float> q = RandomVector(batch * row, 22);
  std::vector<float> want(batch * row);
  for (int64_t b = 0; b < batch; ++b) {
    for (int g = 0; g < c.kv_heads; ++g) {
      const std::vector<float> kg = host.Gather(host.k, b, g), vg = host.Gather(host.v, b, g);
      const int64_t at = (b * c.heads + g * group) * c.head_dim;
      XKV_ASSERT_OK(cpu::LaunchDecodeAttention(Shape(group, 1, c.head_dim), q.data() + at,
                                               kg.data(), vg.data(), c.lens[b][g] * c.head_dim,
                                               c.lens[b][g], want.data() + at, nullptr));
    }
  }
  DevicePagedLayer dev(host, width);
  DeviceBuffer<int32_t> tables(host.FlatTables(width)), d_lens(host.FlatLens());
  DeviceBuffer<float> d_q(q), d_out(batch * row);
  const int64_t rows = batch * c.kv_heads;
  const size_t ws_bytes = cuda::DecodeAttentionWorkspaceBytes(rows, group, c.head_dim, max_len);
  DeviceBuffer<uint8_t> ws(ws_bytes);
  // The per-head cache itself is refused: decode runs on the one-head view.
  EXPECT_EQ(cuda::LaunchDecodeAttention(Shape(c.heads, c.kv_heads, c.head_dim), d_q.get(), batch,
                                        dev.view, tables.get(), width, d_lens.get(), max_len,
                                        d_out.get(), row, ws.get(), ws_bytes, nullptr)
                .code(),
            absl::StatusCode::kInvalidArgument);
  XKV_ASSERT_OK(cuda::LaunchDecodeAttention(
      Shape(group, 1, c.head_dim), d_q.get(), rows, cuda::OneHeadView(dev.view), tables.get(),
      width, d_lens.get(), max_len, d_out.get(), int64_t{group} * c.head_dim, ws.get(), ws_bytes,
      nullptr));
  XKV_ASSERT_CUDA(cudaDeviceSynchronize());
  EXPECT_TRUE(AllClose(d_out.Download(), want, kAtol, kRtol));
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, PerHeadDecodeTest,
    ::testing::Values(
        HeadDecodeCase{9, 3, 64, {{9, 301, 42}, {1, 16, 17}, {2000, 8, 257}}},
        HeadDecodeCase{32, 8, 128, {{9, 2, 16, 17, 34, 101, 701, 6}}},
        HeadDecodeCase{
            32, 8, 128, {{4097, 9, 9, 9, 1, 4096, 33, 512}, {15, 15, 15, 15, 15, 15, 15, 15}}},
        HeadDecodeCase{16, 2, 64, {{1001, 4}, {4, 1001}}}));

// ---- a full cache: the per-head layout is bit-identical to the shared table -----------------

// Per-head tables over the same pool as a shared-table HostPagedLayer: head-block blk * kvh + g.
std::vector<int32_t> PerHeadOfShared(const HostPagedLayer& host, int64_t width) {
  std::vector<int32_t> flat(host.tables.size() * host.kv_heads * width, -1);
  for (size_t s = 0; s < host.tables.size(); ++s) {
    for (int g = 0; g < host.kv_heads; ++g) {
      for (size_t j = 0; j < host.tables[s].size(); ++j) {
        flat[(s * host.kv_heads + g) * width + j] = host.tables[s][j] * host.kv_heads + g;
      }
    }
  }
  return flat;
}

TEST(PerHeadTablesTest, FullCacheIsBitIdenticalToTheSharedTable) {
  XKV_SKIP_WITHOUT_GPU();
  for (const auto& [heads, kvh, hd] : {std::tuple{9, 3, 64}, std::tuple{32, 8, 128}}) {
    const int group = heads / kvh;
    const cpu::AttentionShape shape = Shape(heads, kvh, hd);
    const std::vector<int64_t> lens = {700, 33, 1};
    const int64_t batch = lens.size(), row = int64_t{heads} * hd, max_len = 700;
    const int64_t width = (max_len + 15) / 16;
    const HostPagedLayer host = MakePagedLayer(kvh, hd, lens, 31);
    DevicePagedLayer shared(host);
    cuda::PagedKvLayer per_head = shared.view;
    per_head.head_table_stride = width;
    std::vector<int32_t> shared_tables(batch * width, -1), lens32, head_lens;
    for (int64_t b = 0; b < batch; ++b) {
      std::copy(host.tables[b].begin(), host.tables[b].end(), shared_tables.begin() + b * width);
      lens32.push_back(static_cast<int32_t>(lens[b]));
      for (int g = 0; g < kvh; ++g) head_lens.push_back(static_cast<int32_t>(lens[b]));
    }
    DeviceBuffer<int32_t> d_shared(shared_tables), d_heads(PerHeadOfShared(host, width));
    DeviceBuffer<int32_t> d_lens(lens32), d_head_lens(head_lens);

    // Prefill of sequence 0's last 300 slots.
    const int64_t n_new = 300;
    DeviceBuffer<float> d_q(RandomVector(n_new * row, 32)), a(n_new * row), b(n_new * row);
    XKV_ASSERT_OK(cuda::LaunchPrefillAttention(shape, d_q.get(), n_new, shared.view, d_shared.get(),
                                               max_len, a.get(), row, nullptr));
    XKV_ASSERT_OK(cuda::LaunchPrefillAttention(shape, d_q.get(), n_new, per_head, d_heads.get(),
                                               max_len, b.get(), row, nullptr, d_head_lens.get()));
    XKV_ASSERT_CUDA(cudaDeviceSynchronize());
    EXPECT_TRUE(BitEqual(a.Download(), b.Download())) << "prefill " << heads << "/" << kvh;

    // Decode of the batch.
    DeviceBuffer<float> dq(RandomVector(batch * row, 33)), da(batch * row), db(batch * row);
    const size_t ws_bytes = cuda::DecodeAttentionWorkspaceBytes(batch, heads, hd, max_len);
    DeviceBuffer<uint8_t> ws(ws_bytes);
    XKV_ASSERT_OK(cuda::LaunchDecodeAttention(shape, dq.get(), batch, shared.view, d_shared.get(),
                                              width, d_lens.get(), max_len, da.get(), row, ws.get(),
                                              ws_bytes, nullptr));
    XKV_ASSERT_OK(cuda::LaunchDecodeAttention(Shape(group, 1, hd), dq.get(), batch * kvh,
                                              cuda::OneHeadView(per_head), d_heads.get(), width,
                                              d_head_lens.get(), max_len, db.get(),
                                              int64_t{group} * hd, ws.get(), ws_bytes, nullptr));
    XKV_ASSERT_CUDA(cudaDeviceSynchronize());
    EXPECT_TRUE(BitEqual(da.Download(), db.Download())) << "decode " << heads << "/" << kvh;

    // Importance of sequence 0's prompt (its last 16 queries).
    const ImportanceShape ishape{heads, kvh, hd, max_len};
    ImportanceOptions options;
    options.window = 16;
    const size_t iws = cuda::ImportanceWorkspaceBytes(ishape, options);
    DeviceBuffer<uint8_t> iw(iws);
    DeviceBuffer<float> iq(RandomVector(16 * row, 34)), sa(kvh * (max_len - 16)),
        sb(kvh * (max_len - 16));
    XKV_ASSERT_OK(cuda::LaunchImportancePaged(iq.get(), shared.view, d_shared.get(), ishape,
                                              options, sa.get(), iw.get(), iws, nullptr));
    XKV_ASSERT_OK(cuda::LaunchImportancePaged(iq.get(), per_head, d_heads.get(), ishape, options,
                                              sb.get(), iw.get(), iws, nullptr));
    XKV_ASSERT_CUDA(cudaDeviceSynchronize());
    EXPECT_TRUE(BitEqual(sa.Download(), sb.Download())) << "importance " << heads << "/" << kvh;
  }
}

// The fused RoPE + cache write with head-slots (per-head tables) fills the same bytes as with
// block slots when head-block = block * kvh + g; LaunchKvCacheWrite alike.
TEST(PerHeadTablesTest, CacheWritesWithHeadSlotsMatchBlockSlots) {
  XKV_SKIP_WITHOUT_GPU();
  const int heads = 9, kvh = 3, hd = 64, rope_dims = 64;
  const int64_t n = 40, num_blocks = 8, kv_dim = int64_t{kvh} * hd;
  const int64_t qkv_dim = int64_t{heads} * hd + 2 * kv_dim;
  std::vector<int64_t> slots(n), head_slots(n * kvh);
  for (int64_t t = 0; t < n; ++t) {
    const int64_t blk = (t / 16 * 3 + 5) % num_blocks, row = t % 16;  // scattered blocks
    slots[t] = t == 7 ? -1 : blk * 16 + row;                          // token 7: skipped
    for (int g = 0; g < kvh; ++g)
      head_slots[t * kvh + g] = t == 7 ? -1 : ((blk * kvh + g) * 16 + row);
  }
  DeviceBuffer<int64_t> d_slots(slots), d_head_slots(head_slots);
  const std::vector<float> qkv = RandomVector(n * qkv_dim, 41);
  DeviceBuffer<float> d_qkv(qkv), d_cs(RandomVector(n * rope_dims, 42)), d_q(n * heads * hd);
  const size_t pool = static_cast<size_t>(num_blocks) * kvh * 16 * hd;
  for (int writer = 0; writer < 2; ++writer) {
    DeviceBuffer<__nv_bfloat16> ka(pool), va(pool), kb(pool), vb(pool);
    for (auto* buf : {&ka, &va, &kb, &vb}) buf->Fill(0);
    const cuda::PagedKvLayer a{ka.get(), va.get(), num_blocks, kvh, hd};
    const cuda::PagedKvLayer b{kb.get(), vb.get(), num_blocks, kvh, hd, /*head_table_stride=*/4};
    if (writer == 0) {
      XKV_ASSERT_OK(cuda::LaunchQkvRopeWrite(
          d_qkv.get(), qkv_dim, n, heads, rope_dims, cuda::RopeMode::kNeox, d_cs.get(), d_q.get(),
          int64_t{heads} * hd, d_slots.get(), a, false, nullptr));
      XKV_ASSERT_OK(cuda::LaunchQkvRopeWrite(
          d_qkv.get(), qkv_dim, n, heads, rope_dims, cuda::RopeMode::kNeox, d_cs.get(), d_q.get(),
          int64_t{heads} * hd, d_head_slots.get(), b, false, nullptr));
    } else {
      const float* k = d_qkv.get() + int64_t{heads} * hd;
      XKV_ASSERT_OK(
          cuda::LaunchKvCacheWrite(k, qkv_dim, k + kv_dim, qkv_dim, n, d_slots.get(), a, nullptr));
      XKV_ASSERT_OK(cuda::LaunchKvCacheWrite(k, qkv_dim, k + kv_dim, qkv_dim, n, d_head_slots.get(),
                                             b, nullptr));
    }
    XKV_ASSERT_CUDA(cudaDeviceSynchronize());
    const std::vector<uint16_t> k1 = ka.Download<uint16_t>(), k2 = kb.Download<uint16_t>();
    EXPECT_EQ(k1, k2) << "writer " << writer;
    EXPECT_EQ(va.Download<uint16_t>(), vb.Download<uint16_t>()) << "writer " << writer;
    // Something was written, and not token 7 (its rows stay zero in both).
    EXPECT_NE(std::count(k1.begin(), k1.end(), uint16_t{0}), static_cast<long>(k1.size()));
  }
}

}  // namespace
}  // namespace xkv::gpu_test
