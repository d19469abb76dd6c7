// Host model of one layer's paged KV pool for the GPU attention tests: random bf16-representable
// K/V for several sequences in shuffled blocks, NaN in every row no sequence owns (so a kernel
// that reads an unwritten row shows up as NaN), and the CPU reference's contiguous view.
#ifndef XKV_TESTS_GPU_PAGED_FIXTURE_H_
#define XKV_TESTS_GPU_PAGED_FIXTURE_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/cuda/paged_kv.cuh"
#include "tests/gpu/gpu_test_util.h"

namespace xkv::gpu_test {

struct HostPagedLayer {
  int kv_heads = 0, head_dim = 0;
  int64_t num_blocks = 0;
  std::vector<float> k, v;                   // [num_blocks, kv_heads, 16, head_dim]
  std::vector<int64_t> lens;                 // per sequence
  std::vector<std::vector<int32_t>> tables;  // per sequence: ceil(len / 16) block ids

  int64_t At(int32_t block, int g, int64_t row) const {
    return ((int64_t{block} * kv_heads + g) * 16 + row) * head_dim;
  }
  // The CPU reference's view of sequence s: [kv_heads][len][head_dim].
  std::vector<float> Gather(const std::vector<float>& pool, size_t s) const {
    const int64_t len = lens[s];
    std::vector<float> out(int64_t{kv_heads} * len * head_dim);
    for (int g = 0; g < kv_heads; ++g) {
      for (int64_t j = 0; j < len; ++j) {
        const float* src = pool.data() + At(tables[s][j / 16], g, j % 16);
        std::copy(src, src + head_dim, out.data() + (g * len + j) * head_dim);
      }
    }
    return out;
  }
};

inline HostPagedLayer MakePagedLayer(int kv_heads, int head_dim, const std::vector<int64_t>& lens,
                                     uint32_t seed) {
  HostPagedLayer L;
  L.kv_heads = kv_heads;
  L.head_dim = head_dim;
  L.lens = lens;
  int64_t need = 3;  // a few spare blocks nobody owns
  for (int64_t len : lens) need += (len + 15) / 16;
  L.num_blocks = need;
  std::vector<int32_t> ids(need);
  std::iota(ids.begin(), ids.end(), 0);
  std::mt19937 rng(seed);
  std::shuffle(ids.begin(), ids.end(), rng);
  const size_t pool = static_cast<size_t>(need) * kv_heads * 16 * head_dim;
  L.k.assign(pool, std::numeric_limits<float>::quiet_NaN());
  L.v.assign(pool, std::numeric_limits<float>::quiet_NaN());
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  size_t next = 0;
  for (int64_t len : lens) {
    std::vector<int32_t> table;
    for (int64_t b = 0; b < (len + 15) / 16; ++b) table.push_back(ids[next++]);
    for (int64_t j = 0; j < len; ++j) {
      for (int g = 0; g < kv_heads; ++g) {
        const int64_t at = L.At(table[j / 16], g, j % 16);
        for (int d = 0; d < head_dim; ++d) {
          L.k[at + d] = cpu::Bf16ToF32(cpu::F32ToBf16(u(rng)));
          L.v[at + d] = cpu::Bf16ToF32(cpu::F32ToBf16(u(rng)));
        }
      }
    }
    L.tables.push_back(std::move(table));
  }
  return L;
}

// The same pool with per-KV-head tables (paged_kv.cuh): every (sequence, KV head) its own length
// and table of head-blocks (16 rows of one head), shuffled over the pool; NaN in every row nobody
// owns. num_blocks counts whole blocks (num_blocks * kv_heads head-blocks).
struct HostHeadPagedLayer {
  int kv_heads = 0, head_dim = 0;
  int64_t num_blocks = 0;
  std::vector<float> k, v;                                // [num_blocks * kv_heads, 16, head_dim]
  std::vector<std::vector<int64_t>> lens;                 // [sequence][KV head]
  std::vector<std::vector<std::vector<int32_t>>> tables;  // [sequence][KV head]: head-block ids

  int64_t At(int32_t head_block, int64_t row) const {
    return (int64_t{head_block} * 16 + row) * head_dim;
  }
  // The CPU reference's view of (sequence s, KV head g): [len][head_dim].
  std::vector<float> Gather(const std::vector<float>& pool, size_t s, int g) const {
    const int64_t len = lens[s][g];
    std::vector<float> out(len * head_dim);
    for (int64_t j = 0; j < len; ++j) {
      const float* src = pool.data() + At(tables[s][g][j / 16], j % 16);
      std::copy(src, src + head_dim, out.data() + j * head_dim);
    }
    return out;
  }
  // Device tables int32 [sequence][KV head][width], -1 past each table (never dereferenced).
  std::vector<int32_t> FlatTables(int64_t width) const {
    std::vector<int32_t> flat(tables.size() * kv_heads * width, -1);
    for (size_t s = 0; s < tables.size(); ++s) {
      for (int g = 0; g < kv_heads; ++g) {
        std::copy(tables[s][g].begin(), tables[s][g].end(),
                  flat.begin() + (s * kv_heads + g) * width);
      }
    }
    return flat;
  }
  // int32 [sequence][KV head].
  std::vector<int32_t> FlatLens() const {
    std::vector<int32_t> flat;
    for (const std::vector<int64_t>& heads : lens) {
      for (int64_t n : heads) flat.push_back(static_cast<int32_t>(n));
    }
    return flat;
  }
};

inline HostHeadPagedLayer MakeHeadPagedLayer(int kv_heads, int head_dim,
                                             const std::vector<std::vector<int64_t>>& lens,
                                             uint32_t seed) {
  HostHeadPagedLayer L;
  L.kv_heads = kv_heads;
  L.head_dim = head_dim;
  L.lens = lens;
  int64_t need = 3 * kv_heads;  // a few spare head-blocks nobody owns
  for (const std::vector<int64_t>& heads : lens) {
    for (int64_t len : heads) need += (len + 15) / 16;
  }
  L.num_blocks = (need + kv_heads - 1) / kv_heads;
  std::vector<int32_t> ids(L.num_blocks * kv_heads);
  std::iota(ids.begin(), ids.end(), 0);
  std::mt19937 rng(seed);
  std::shuffle(ids.begin(), ids.end(), rng);
  const size_t pool = ids.size() * 16 * head_dim;
  L.k.assign(pool, std::numeric_limits<float>::quiet_NaN());
  L.v.assign(pool, std::numeric_limits<float>::quiet_NaN());
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  size_t next = 0;
  for (const std::vector<int64_t>& heads : lens) {
    std::vector<std::vector<int32_t>> seq_tables;
    for (int64_t len : heads) {
      std::vector<int32_t> table;
      for (int64_t b = 0; b < (len + 15) / 16; ++b) table.push_back(ids[next++]);
      for (int64_t j = 0; j < len; ++j) {
        const int64_t at = L.At(table[j / 16], j % 16);
        for (int d = 0; d < head_dim; ++d) {
          L.k[at + d] = cpu::Bf16ToF32(cpu::F32ToBf16(u(rng)));
          L.v[at + d] = cpu::Bf16ToF32(cpu::F32ToBf16(u(rng)));
        }
      }
      seq_tables.push_back(std::move(table));
    }
    L.tables.push_back(std::move(seq_tables));
  }
  return L;
}

// Device copy of a HostPagedLayer.
struct DevicePagedLayer {
  explicit DevicePagedLayer(const HostPagedLayer& h) : k(ToBf16Bits(h.k)), v(ToBf16Bits(h.v)) {
    view = cuda::PagedKvLayer{k.get(), v.get(), h.num_blocks, h.kv_heads, h.head_dim};
  }
  // The same pool with per-KV-head tables `width` ints apart (HostHeadPagedLayer).
  explicit DevicePagedLayer(const HostHeadPagedLayer& h, int64_t width)
      : k(ToBf16Bits(h.k)), v(ToBf16Bits(h.v)) {
    view = cuda::PagedKvLayer{k.get(), v.get(), h.num_blocks, h.kv_heads, h.head_dim, width};
  }
  DeviceBuffer<__nv_bfloat16> k, v;
  cuda::PagedKvLayer view;
};

}  // namespace xkv::gpu_test

#endif  // XKV_TESTS_GPU_PAGED_FIXTURE_H_
