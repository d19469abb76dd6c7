// xkv_gpu_bench: micro-benchmarks of the CUDA kernels on the GPU host (architecture.md §8.9).
//   device-to-device copy bandwidth (the practical HBM ceiling),
//   cuBLAS bf16 GEMM TFLOP/s at 8192^3 (fp32 accumulation),
//   paged decode attention at Llama-3-8B shapes (32/8 heads x 128, 8K context, batch 1/8/32)
//     against the bytes-moved floor (K+V bytes / measured copy bandwidth),
//   causal flash prefill attention at the real model's (9/3 heads x 64) and Llama-3-8B's shapes,
//     T = 1K, 4K, 8K, 16K (TFLOP/s and share of the GEMM rate),
//   the reconstruct profile's scores of one layer (a 2048-token chunk re-read after a 4K prompt
//     at the real model's shape, after a 16K one at Llama-3-8B's).
// Usage: xkv_gpu_bench [--json=PATH]. Prints a Markdown table; --json also writes the rows.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/cublas_handle.h"
#include "kernels/cuda/decode_attention.cuh"
#include "kernels/cuda/gemm.cuh"
#include "kernels/cuda/gemv.cuh"
#include "kernels/cuda/paged_kv.cuh"
#include "kernels/cuda/prefill_attention.cuh"
#include "kernels/cuda/reconstruct_importance.cuh"

namespace {

struct Row {
  std::string name;
  double value;
  std::string unit;
  std::string note;
};

#define BENCH_CHECK_CUDA(expr)                                                                    \
  do {                                                                                            \
    const cudaError_t e_ = (expr);                                                                \
    if (e_ != cudaSuccess) {                                                                      \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr, cudaGetErrorString(e_)); \
      std::exit(1);                                                                               \
    }                                                                                             \
  } while (0)

#define BENCH_CHECK_OK(expr)                                                          \
  do {                                                                                \
    const absl::Status s_ = (expr);                                                   \
    if (!s_.ok()) {                                                                   \
      std::fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, s_.ToString().c_str()); \
      std::exit(1);                                                                   \
    }                                                                                 \
  } while (0)

// Mean milliseconds of `iters` calls after `warmup` calls, timed with events on `stream`.
double TimeMs(cudaStream_t stream, int warmup, int iters, const std::function<void()>& fn) {
  for (int i = 0; i < warmup; ++i) fn();
  cudaEvent_t a, b;
  BENCH_CHECK_CUDA(cudaEventCreate(&a));
  BENCH_CHECK_CUDA(cudaEventCreate(&b));
  BENCH_CHECK_CUDA(cudaEventRecord(a, stream));
  for (int i = 0; i < iters; ++i) fn();
  BENCH_CHECK_CUDA(cudaEventRecord(b, stream));
  BENCH_CHECK_CUDA(cudaEventSynchronize(b));
  float ms = 0.f;
  BENCH_CHECK_CUDA(cudaEventElapsedTime(&ms, a, b));
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return ms / iters;
}

double CopyBandwidth(cudaStream_t stream, std::vector<Row>& rows) {
  const size_t bytes = size_t{1} << 30;
  void *src = nullptr, *dst = nullptr;
  BENCH_CHECK_CUDA(cudaMalloc(&src, bytes));
  BENCH_CHECK_CUDA(cudaMalloc(&dst, bytes));
  BENCH_CHECK_CUDA(cudaMemset(src, 1, bytes));
  const double ms = TimeMs(stream, 3, 20, [&] {
    BENCH_CHECK_CUDA(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream));
  });
  const double gbs = 2.0 * bytes / (ms * 1e-3) / 1e9;  // read + write
  rows.push_back({"d2d copy 1 GiB", gbs, "GB/s", "read+write bytes / time"});
  cudaFree(src);
  cudaFree(dst);
  return gbs;
}

void GemmThroughput(cudaStream_t stream, std::vector<Row>& rows) {
  const int64_t n = 8192;
  __nv_bfloat16 *a = nullptr, *b = nullptr, *c = nullptr;
  BENCH_CHECK_CUDA(cudaMalloc(&a, n * n * 2));
  BENCH_CHECK_CUDA(cudaMalloc(&b, n * n * 2));
  BENCH_CHECK_CUDA(cudaMalloc(&c, n * n * 2));
  BENCH_CHECK_CUDA(cudaMemset(a, 0x3c, n * n * 2));
  BENCH_CHECK_CUDA(cudaMemset(b, 0x3c, n * n * 2));
  auto handle = xkv::cuda::CublasHandle::Create();
  BENCH_CHECK_OK(handle.status());
  const double ms = TimeMs(stream, 3, 20, [&] {
    BENCH_CHECK_OK(xkv::cuda::LaunchGemm(*handle, a, n, b, n, c, n, n, n, n, false, stream));
  });
  rows.push_back({"cuBLAS bf16 GEMM 8192^3", 2.0 * n * n * n / (ms * 1e-3) / 1e12, "TFLOP/s",
                  "bf16 in/out, fp32 accumulate; " + std::to_string(ms) + " ms"});
  cudaFree(a);
  cudaFree(b);
  cudaFree(c);
}

// Decode-time GEMMs of the Llama-3-8B shape (the engine's calls: bf16 activations [m, k] times
// bf16 weights [n, k]ᵀ into fp32 [m, n], the residual ones accumulating), m = 1 and 8 rows:
// weight-read bandwidth (bytes of the weight matrix / time), which decode at batch 1 lives on.
// Weights are random-ish (not constant) and larger than L2 together, cycled so no call hits L2.
void DecodeGemv(cudaStream_t stream, std::vector<Row>& rows) {
  struct Shape {
    const char* name;
    int64_t n, k;
    bool accumulate;
  };
  const Shape shapes[] = {{"qkv", 6144, 4096, false},
                          {"o", 4096, 4096, true},
                          {"gate_up", 28672, 4096, false},
                          {"down", 4096, 14336, true},
                          {"lm_head", 128256, 4096, false}};
  auto handle = xkv::cuda::CublasHandle::Create();
  BENCH_CHECK_OK(handle.status());
  for (const Shape& sh : shapes) {
    const int copies = std::max<int64_t>(2, (512ll << 20) / (sh.n * sh.k * 2) + 1);
    std::vector<__nv_bfloat16*> w(copies);
    for (auto& p : w) {
      BENCH_CHECK_CUDA(cudaMalloc(&p, sh.n * sh.k * 2));
      BENCH_CHECK_CUDA(cudaMemset(p, 0x3b, sh.n * sh.k * 2));
    }
    __nv_bfloat16* a = nullptr;
    float* c = nullptr;
    BENCH_CHECK_CUDA(cudaMalloc(&a, 8 * sh.k * 2));
    BENCH_CHECK_CUDA(cudaMalloc(&c, 8 * sh.n * 4));
    BENCH_CHECK_CUDA(cudaMemset(a, 0x3c, 8 * sh.k * 2));
    BENCH_CHECK_CUDA(cudaMemset(c, 0, 8 * sh.n * 4));
    for (int64_t m : {1, 8}) {
      int i = 0;
      const double ms = TimeMs(stream, 5, 50, [&] {
        BENCH_CHECK_OK(xkv::cuda::LaunchGemm(*handle, a, sh.k, w[i++ % copies], sh.k, c, sh.n, m,
                                             sh.n, sh.k, sh.accumulate, stream));
      });
      const double gbs = sh.n * sh.k * 2.0 / (ms * 1e-3) / 1e9;
      rows.push_back({std::string("cuBLAS decode GEMM ") + sh.name + " m=" + std::to_string(m) +
                          " (" + std::to_string(sh.n) + "x" + std::to_string(sh.k) + ")",
                      gbs, "GB/s", "weight bytes / time; " + std::to_string(ms * 1e3) + " us"});
    }
    // Our small-batch kernels (what the engine runs at <= 4 rows of a model this wide; 8 rows
    // only on models up to 1024 wide: m = 8 shows how far this width is from it), PDL off: one
    // launch alone.
    for (int64_t m : {1, 2, 4, 8}) {
      int i = 0;
      const bool glu = std::string(sh.name) == "gate_up";
      const double ms = TimeMs(stream, 5, 50, [&] {
        if (glu) {
          BENCH_CHECK_OK(xkv::cuda::LaunchGemvSwiGlu(a, sh.k, w[i++ % copies], sh.k,
                                                     reinterpret_cast<__nv_bfloat16*>(c), sh.n / 2,
                                                     m, sh.n / 2, sh.k, false, stream));
        } else {
          BENCH_CHECK_OK(xkv::cuda::LaunchGemv(a, sh.k, w[i++ % copies], sh.k, c, sh.n, m, sh.n,
                                               sh.k, sh.accumulate, false, stream));
        }
      });
      const double gbs = sh.n * sh.k * 2.0 / (ms * 1e-3) / 1e9;
      rows.push_back(
          {std::string("xkv GEMV") + (glu ? "+SwiGLU " : " ") + sh.name + " m=" + std::to_string(m),
           gbs, "GB/s", "weight bytes / time; " + std::to_string(ms * 1e3) + " us"});
    }
    for (auto* p : w) cudaFree(p);
    cudaFree(a);
    cudaFree(c);
  }
}

// Llama-3-8B layer: 32 query heads, 8 KV heads, head_dim 128.
void DecodeAttention(cudaStream_t stream, double copy_gbs, std::vector<Row>& rows) {
  const int heads = 32, kv_heads = 8, hd = 128;
  const int64_t ctx = 8192, blocks_per_seq = ctx / 16;
  const xkv::cuda::AttentionShape shape{heads, kv_heads, hd, 1.0f / std::sqrt(128.f), false};
  for (int64_t batch : {1, 8, 32}) {
    const int64_t blocks = batch * blocks_per_seq;
    const size_t pool_bytes = blocks * kv_heads * 16 * hd * 2;
    __nv_bfloat16 *k = nullptr, *v = nullptr;
    BENCH_CHECK_CUDA(cudaMalloc(&k, pool_bytes));
    BENCH_CHECK_CUDA(cudaMalloc(&v, pool_bytes));
    BENCH_CHECK_CUDA(cudaMemset(k, 0x3c, pool_bytes));
    BENCH_CHECK_CUDA(cudaMemset(v, 0x3c, pool_bytes));
    std::vector<int32_t> table(blocks);
    std::iota(table.begin(), table.end(), 0);
    std::shuffle(table.begin(), table.end(), std::mt19937(1));  // scattered, as a real pool
    std::vector<int32_t> lens(batch, static_cast<int32_t>(ctx));
    int32_t *d_table = nullptr, *d_lens = nullptr;
    float *q = nullptr, *out = nullptr;
    BENCH_CHECK_CUDA(cudaMalloc(&d_table, blocks * 4));
    BENCH_CHECK_CUDA(cudaMalloc(&d_lens, batch * 4));
    BENCH_CHECK_CUDA(cudaMalloc(&q, batch * heads * hd * 4));
    BENCH_CHECK_CUDA(cudaMalloc(&out, batch * heads * hd * 4));
    BENCH_CHECK_CUDA(cudaMemcpy(d_table, table.data(), blocks * 4, cudaMemcpyHostToDevice));
    BENCH_CHECK_CUDA(cudaMemcpy(d_lens, lens.data(), batch * 4, cudaMemcpyHostToDevice));
    BENCH_CHECK_CUDA(cudaMemset(q, 0, batch * heads * hd * 4));
    const size_t ws_bytes = xkv::cuda::DecodeAttentionWorkspaceBytes(batch, heads, hd, ctx);
    void* ws = nullptr;
    BENCH_CHECK_CUDA(cudaMalloc(&ws, ws_bytes));
    const xkv::cuda::PagedKvLayer cache{k, v, blocks, kv_heads, hd};
    const double ms = TimeMs(stream, 5, 50, [&] {
      BENCH_CHECK_OK(xkv::cuda::LaunchDecodeAttention(shape, q, batch, cache, d_table,
                                                      blocks_per_seq, d_lens, ctx, out, heads * hd,
                                                      ws, ws_bytes, stream));
    });
    const double bytes = 2.0 * pool_bytes;                       // every K and V byte once
    const double floor_ms = bytes / (copy_gbs / 2 * 1e9) * 1e3;  // read at half the copy rate
    char note[160];
    std::snprintf(note, sizeof(note),
                  "%.1f us; floor %.1f us (%.0f MB at %.0f GB/s read); %.0f GB/s", ms * 1e3,
                  floor_ms * 1e3, bytes / 1e6, copy_gbs / 2, bytes / (ms * 1e-3) / 1e9);
    rows.push_back({"decode attn L3-8B 8K ctx batch " + std::to_string(batch), floor_ms / ms,
                    "x of floor", note});
    cudaFree(k);
    cudaFree(v);
    cudaFree(d_table);
    cudaFree(d_lens);
    cudaFree(q);
    cudaFree(out);
    cudaFree(ws);
  }
}

// Median milliseconds of `iters` calls after `warmup` calls, each call timed with its own events.
double MedianMs(cudaStream_t stream, int warmup, int iters, const std::function<void()>& fn) {
  for (int i = 0; i < warmup; ++i) fn();
  std::vector<cudaEvent_t> ev(iters + 1);
  for (cudaEvent_t& e : ev) BENCH_CHECK_CUDA(cudaEventCreate(&e));
  BENCH_CHECK_CUDA(cudaEventRecord(ev[0], stream));
  for (int i = 0; i < iters; ++i) {
    fn();
    BENCH_CHECK_CUDA(cudaEventRecord(ev[i + 1], stream));
  }
  BENCH_CHECK_CUDA(cudaEventSynchronize(ev[iters]));
  std::vector<float> ms(iters);
  for (int i = 0; i < iters; ++i) BENCH_CHECK_CUDA(cudaEventElapsedTime(&ms[i], ev[i], ev[i + 1]));
  for (cudaEvent_t& e : ev) cudaEventDestroy(e);
  std::nth_element(ms.begin(), ms.begin() + iters / 2, ms.end());
  return ms[iters / 2];
}

// Uniform [-1, 1) floats from a fixed xorshift stream (random data, never zeros: METHOD.md).
std::vector<float> RandomFloats(size_t n, uint64_t seed) {
  std::vector<float> v(n);
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (float& f : v) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    f = static_cast<float>(static_cast<int32_t>(x >> 32) | 1) * (1.0f / 2147483648.0f);
  }
  return v;
}

std::vector<__nv_bfloat16> RandomBf16(size_t n, uint64_t seed) {
  const std::vector<float> f = RandomFloats(n, seed);
  std::vector<__nv_bfloat16> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = __float2bfloat16_rn(f[i]);
  return out;
}

// Device memory of n elements (uninitialised) or holding `host`, freed with it.
template <typename T>
struct DeviceArray {
  T* p = nullptr;
  explicit DeviceArray(size_t n) { BENCH_CHECK_CUDA(cudaMalloc(&p, n * sizeof(T))); }
  explicit DeviceArray(const std::vector<T>& host) {
    BENCH_CHECK_CUDA(cudaMalloc(&p, host.size() * sizeof(T)));
    BENCH_CHECK_CUDA(cudaMemcpy(p, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  ~DeviceArray() { cudaFree(p); }
};

// A paged layer of `blocks` 16-token blocks of random bf16 K and V, and a table that scatters a
// sequence's blocks through the pool (shuffled, as a real pool's).
struct RandomPagedLayer {
  DeviceArray<__nv_bfloat16> k, v;
  DeviceArray<int32_t> table;
  xkv::cuda::PagedKvLayer cache;
  RandomPagedLayer(int64_t blocks, int kv_heads, int hd, uint64_t seed)
      : k(RandomBf16(static_cast<size_t>(blocks) * kv_heads * 16 * hd, seed)),
        v(RandomBf16(static_cast<size_t>(blocks) * kv_heads * 16 * hd, seed + 1)),
        table(Shuffled(blocks, seed)),
        cache{k.p, v.p, blocks, kv_heads, hd} {}
  static std::vector<int32_t> Shuffled(int64_t blocks, uint64_t seed) {
    std::vector<int32_t> t(blocks);
    std::iota(t.begin(), t.end(), 0);
    std::shuffle(t.begin(), t.end(), std::mt19937(static_cast<uint32_t>(seed)));
    return t;
  }
};

// Causal prefill of a whole prompt (kv_len = n_new = T) at the real model's shape (9 query / 3 KV
// heads x 64) and Llama-3-8B's (32 / 8 x 128): random Q, K, V; K/V blocks shuffled through the
// pool. FLOPs: Q Kᵀ and P V over the T (T + 1) / 2 visible (query, key) pairs, 2 * head_dim each.
void PrefillAttention(cudaStream_t stream, std::vector<Row>& rows) {
  double gemm_tflops = 0;
  for (const Row& r : rows) {
    if (r.name.rfind("cuBLAS bf16 GEMM", 0) == 0) gemm_tflops = r.value;
  }
  struct Model {
    const char* name;
    int heads, kv_heads, hd;
  };
  const int64_t max_t = 16384, blocks = max_t / 16;
  for (const Model& m :
       {Model{"real model 9/3x64", 9, 3, 64}, Model{"L3-8B 32/8x128", 32, 8, 128}}) {
    const xkv::cuda::AttentionShape shape{m.heads, m.kv_heads, m.hd,
                                          1.0f / std::sqrt(static_cast<float>(m.hd)), false};
    const size_t q_elems = static_cast<size_t>(max_t) * m.heads * m.hd;
    const RandomPagedLayer layer(blocks, m.kv_heads, m.hd, 1);
    const DeviceArray<float> q(RandomFloats(q_elems, 3));
    DeviceArray<float> out(q_elems);
    for (int64_t t : {1024, 4096, 8192, 16384}) {
      const double ms = MedianMs(stream, 3, t >= 8192 ? 10 : 30, [&] {
        BENCH_CHECK_OK(xkv::cuda::LaunchPrefillAttention(
            shape, q.p, t, layer.cache, layer.table.p, t, out.p, int64_t{m.heads} * m.hd, stream));
      });
      BENCH_CHECK_CUDA(cudaStreamSynchronize(stream));
      BENCH_CHECK_CUDA(cudaGetLastError());
      const double flops = 4.0 * m.heads * m.hd * (double(t) * (t + 1) / 2);
      const double tflops = flops / (ms * 1e-3) / 1e12;
      char note[160];
      std::snprintf(note, sizeof(note), "%.3f ms; %.0f%% of the cuBLAS GEMM rate", ms,
                    gemm_tflops > 0 ? 100 * tflops / gemm_tflops : 0.0);
      rows.push_back({std::string("prefill attn ") + m.name + " T=" + std::to_string(t), tflops,
                      "TFLOP/s", note});
    }
  }
}

// One layer's reconstruct scores (kernels/cuda/reconstruct_importance.cuh): the chunk [C - 2048,
// C) re-read as R = 2048 + 27 input rows (SmolLM2's repeat instruction) over a C-token paged
// context; FLOPs: the rows' logits over the keys each sees (2 * head_dim each) plus the chunk's
// logits again.
void ReconstructScores(cudaStream_t stream, std::vector<Row>& rows) {
  struct Model {
    const char* name;
    int heads, kv_heads, hd;
    int64_t context;
  };
  for (const Model& m :
       {Model{"real model 9/3x64", 9, 3, 64, 4096}, Model{"L3-8B 32/8x128", 32, 8, 128, 16384}}) {
    const int64_t chunk = 2048, R = chunk + 27, len = m.context + R, blocks = (len + 15) / 16;
    const xkv::ReconstructShape shape{m.heads,   m.kv_heads,        m.hd,      R,
                                      m.context, m.context - chunk, m.context, 4};
    const RandomPagedLayer layer(blocks, m.kv_heads, m.hd, 4);
    const DeviceArray<float> q(RandomFloats(static_cast<size_t>(R) * m.heads * m.hd, 6));
    DeviceArray<float> scores(static_cast<size_t>(m.kv_heads * chunk));
    const double ms = MedianMs(stream, 2, 10, [&] {
      BENCH_CHECK_CUDA(cudaMemsetAsync(scores.p, 0, m.kv_heads * chunk * 4, stream));
      BENCH_CHECK_OK(xkv::cuda::LaunchReconstructScoresPaged(q.p, layer.cache, layer.table.p, shape,
                                                             scores.p, stream));
    });
    BENCH_CHECK_CUDA(cudaStreamSynchronize(stream));
    const double seen = static_cast<double>(R) * (4 + chunk) + static_cast<double>(R) * (R + 1) / 2;
    const double flops = 2.0 * m.heads * m.hd * (seen + static_cast<double>(R) * chunk);
    char note[160];
    std::snprintf(note, sizeof(note), "%.3f ms a layer; %.2f TFLOP/s (%s)", ms,
                  flops / (ms * 1e-3) / 1e12,
                  m.hd % 16 == 0 ? "tensor cores, bf16" : "CUDA cores, fp32");
    rows.push_back({std::string("reconstruct scores ") + m.name +
                        " C=" + std::to_string(m.context) + " chunk 2048",
                    ms, "ms", note});
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string json;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--json=", 7) == 0) json = argv[i] + 7;
  }
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    std::fprintf(stderr, "xkv_gpu_bench: no CUDA device\n");
    return 1;
  }
  cudaDeviceProp prop;
  BENCH_CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  cudaStream_t stream;
  BENCH_CHECK_CUDA(cudaStreamCreate(&stream));
  std::vector<Row> rows;
  const double copy_gbs = CopyBandwidth(stream, rows);
  GemmThroughput(stream, rows);
  DecodeGemv(stream, rows);
  DecodeAttention(stream, copy_gbs, rows);
  PrefillAttention(stream, rows);
  ReconstructScores(stream, rows);
  std::printf(
      "device: %s (%d SMs, %.0f MB L2)\n\n| benchmark | value | unit | note |\n|---|---|---|---|\n",
      prop.name, prop.multiProcessorCount, prop.l2CacheSize / 1e6);
  for (const Row& r : rows) {
    std::printf("| %s | %.3f | %s | %s |\n", r.name.c_str(), r.value, r.unit.c_str(),
                r.note.c_str());
  }
  if (!json.empty()) {
    FILE* f = std::fopen(json.c_str(), "w");
    if (f == nullptr) return 1;
    std::fprintf(f, "{\"device\": \"%s\", \"rows\": [\n", prop.name);
    for (size_t i = 0; i < rows.size(); ++i) {
      std::fprintf(f,
                   "  {\"name\": \"%s\", \"value\": %.6g, \"unit\": \"%s\", \"note\": \"%s\"}%s\n",
                   rows[i].name.c_str(), rows[i].value, rows[i].unit.c_str(), rows[i].note.c_str(),
                   i + 1 < rows.size() ? "," : "");
    }
    std::fprintf(f, "]}\n");
    std::fclose(f);
  }
  cudaStreamDestroy(stream);
  return 0;
}
