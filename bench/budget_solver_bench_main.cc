// Google Benchmark for the per-layer budget solvers (allocator/budget_solver.h) on realistic
// gain curves: per layer a power-law or exponential decay with layer-specific concentration.
//   xkv_solver_bench --benchmark_filter='L:32/T:131072'
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <numeric>
#include <random>
#include <vector>

#include "allocator/budget_solver.h"
#include "allocator/importance_profile.h"
#include "allocator/kv_policy.h"

namespace xkv {
namespace {

constexpr int kWindow = 8;

// Layer l of L: concentration varies over depth (early layers broad, middle layers sharp) with a
// seeded jitter; even layers decay as a power law k^-alpha, odd layers exponentially.
std::vector<LayerProfile> MakeProfiles(int L, int64_t P) {
  std::mt19937 rng(42 + L);
  std::uniform_real_distribution<double> jitter(0.8, 1.25);
  std::vector<LayerProfile> layers;
  for (int l = 0; l < L; ++l) {
    const double depth = static_cast<double>(l) / std::max(1, L - 1);
    const double sharp = (0.3 + 1.2 * std::sin(3.14159 * depth)) * jitter(rng);
    std::vector<double> g(P);
    double sum = 0;
    for (int64_t k = 0; k < P; ++k) {
      g[k] = (l % 2 == 0) ? std::pow(k + 1.0, -sharp)
                          : std::exp(-sharp * 20.0 * static_cast<double>(k) / P) + 1e-6;
      sum += g[k];
    }
    for (double& x : g) x /= sum;
    layers.push_back(LayerProfileFromGains(std::move(g)).value());
  }
  return layers;
}

struct Case {
  std::vector<LayerProfile> layers;
  std::vector<int64_t> bytes;  // per layer: alternate 8 and 4 KV heads, head_dim 128, fp16 K+V
};

const Case& GetCase(int L, int64_t T) {
  static auto* cache = new std::vector<std::pair<std::pair<int, int64_t>, Case>>();
  for (auto& [key, c] : *cache) {
    if (key == std::make_pair(L, T)) return c;
  }
  Case c{MakeProfiles(L, T - kWindow), {}};
  for (int l = 0; l < L; ++l) c.bytes.push_back((l % 3 == 0 ? 4 : 8) * 128 * 2 * 2);
  cache->push_back({{L, T}, std::move(c)});
  return cache->back().second;
}

void BM_TotalTokens(benchmark::State& state) {
  const Case& c = GetCase(state.range(0), state.range(1));
  const int64_t n = static_cast<int64_t>(c.layers.size()) * (state.range(1) - kWindow) / 5;
  for (auto _ : state) benchmark::DoNotOptimize(SolveForTotalTokens(c.layers, n));
}

void BM_Retention(benchmark::State& state) {
  const Case& c = GetCase(state.range(0), state.range(1));
  for (auto _ : state) benchmark::DoNotOptimize(SolveForRetention(c.layers, 0.9));
}

void BM_Bytes(benchmark::State& state) {
  const Case& c = GetCase(state.range(0), state.range(1));
  int64_t full = 0;
  for (size_t l = 0; l < c.bytes.size(); ++l) full += c.bytes[l] * c.layers[l].prefix_len;
  for (auto _ : state) benchmark::DoNotOptimize(SolveForBytes(c.layers, c.bytes, full / 5));
}

void Shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"L", "T"});
  for (int L : {32, 48, 64, 80}) {
    for (int64_t T : {4096, 16384, 32768, 65536, 131072}) b->Args({L, T});
  }
  b->Unit(benchmark::kMicrosecond);
}

// One layer's profile and kept-slot selection from raw scores (the per-request work of XKV after
// the scoring), Llama-3-8B shape: 8 KV heads x P prefix scores. The *Baseline benchmarks run the
// previous algorithms (std::sort per head; nth_element over indices with a comparator) for the
// before/after in docs/benchmarks.md.
std::vector<float> RawScores(int heads, int64_t P) {
  std::mt19937 rng(7);
  std::exponential_distribution<float> e(1.0f);
  std::vector<float> s(heads * P);
  for (float& x : s) x = e(rng);
  return s;
}

void BM_BuildLayerProfile(benchmark::State& state) {
  const int64_t P = state.range(0);
  const std::vector<float> s = RawScores(8, P);
  for (auto _ : state) benchmark::DoNotOptimize(BuildLayerProfile(s, 8, P));
}

void BM_BuildLayerProfileBaseline(benchmark::State& state) {
  const int64_t P = state.range(0);
  const std::vector<float> s = RawScores(8, P);
  for (auto _ : state) {
    std::vector<float> sorted = s;
    std::vector<double> column(P, 0.0);
    for (int h = 0; h < 8; ++h) {
      std::sort(sorted.begin() + h * P, sorted.begin() + (h + 1) * P, std::greater<float>());
      for (int64_t k = 0; k < P; ++k) column[k] += sorted[h * P + k];
    }
    benchmark::DoNotOptimize(column.data());
  }
}

void BM_SelectKeptTokens(benchmark::State& state) {
  const int64_t P = state.range(0);
  const std::vector<float> s = RawScores(8, P);
  for (auto _ : state) {
    benchmark::DoNotOptimize(SelectKeptTokens(s, 8, P, P / 4, SelectionRule::kTopScore, 0));
  }
}

void BM_SelectKeptTokensBaseline(benchmark::State& state) {
  const int64_t P = state.range(0), budget = P / 4;
  const std::vector<float> s = RawScores(8, P);
  for (auto _ : state) {
    for (int h = 0; h < 8; ++h) {
      const float* row = s.data() + h * P;
      std::vector<int64_t> out(P);
      std::iota(out.begin(), out.end(), int64_t{0});
      std::nth_element(out.begin(), out.begin() + budget, out.end(), [row](int64_t a, int64_t c) {
        return row[a] > row[c] || (row[a] == row[c] && a < c);
      });
      out.resize(budget);
      std::sort(out.begin(), out.end());
      benchmark::DoNotOptimize(out.data());
    }
  }
}

void Prefixes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"P"});
  for (int64_t P : {8184, 32760}) b->Args({P});
  b->Unit(benchmark::kMicrosecond);
}

BENCHMARK(BM_BuildLayerProfile)->Apply(Prefixes);
BENCHMARK(BM_BuildLayerProfileBaseline)->Apply(Prefixes);
BENCHMARK(BM_SelectKeptTokens)->Apply(Prefixes);
BENCHMARK(BM_SelectKeptTokensBaseline)->Apply(Prefixes);
BENCHMARK(BM_TotalTokens)->Apply(Shapes);
BENCHMARK(BM_Retention)->Apply(Shapes);
BENCHMARK(BM_Bytes)->Apply(Shapes);

}  // namespace
}  // namespace xkv

BENCHMARK_MAIN();
