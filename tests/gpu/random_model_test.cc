// Random-weight models of real shapes built on the device (CudaLlamaModel::CreateRandom), the
// device random fill against its CPU reference bit for bit, and CUDA-graph decode against eager
// decode (same kernels, so the logits must be bitwise equal).
#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/random_fill.h"
#include "kernels/cuda/random_fill.cuh"
#include "model/cuda/cuda_llama_model.h"
#include "model/kv_cache.h"
#include "model/model_shapes.h"
#include "tests/gpu/gpu_test_util.h"

namespace xkv {
namespace {

TEST(RandomFillGpuTest, MatchesCpuBitForBit) {
  XKV_SKIP_WITHOUT_GPU();
  constexpr int64_t kN = (1 << 20) + 37;
  const float step = RandomFillStep(0.02f);
  std::vector<uint16_t> want(kN), got(kN);
  ASSERT_TRUE(cpu::LaunchRandomFill(42, kN, step, want.data()).ok());
  __nv_bfloat16* d = nullptr;
  XKV_ASSERT_CUDA(cudaMalloc(reinterpret_cast<void**>(&d), kN * 2));
  XKV_ASSERT_OK(cuda::LaunchRandomFill(42, kN, step, d, nullptr));
  XKV_ASSERT_CUDA(cudaMemcpy(got.data(), d, kN * 2, cudaMemcpyDeviceToHost));
  cudaFree(d);
  EXPECT_EQ(got, want);
}

// The Llama-3.2-1B shape, shrunk in depth and vocabulary to keep the test quick.
ModelConfig SmallLlama3() {
  ModelConfig c = Llama32_1BShape();
  c.n_layers = 4;
  c.vocab_size = 16384;
  c.bos_token = 1;
  c.eos_token = 2;
  c.context_length = 4096;
  return c;
}

// SmolLM2-135M's layer widths (576: the 8-row GEMV path with the RMSNorms fused in) on the same.
ModelConfig SmallSmol() {
  ModelConfig c = SmallLlama3();
  c.hidden = 576;
  c.ffn = 1536;
  c.n_heads = 9;
  c.n_kv_heads = 3;
  return c;
}

std::unique_ptr<CudaLlamaModel> Make(uint64_t seed, bool graphs, bool small_batch_kernels = true,
                                     bool pdl = true, const ModelConfig& config = SmallLlama3()) {
  CudaEngineOptions o;
  o.small_batch_kernels = small_batch_kernels;
  o.pdl = pdl;
  o.max_batch = 8;
  o.max_step_tokens = 1024;
  o.max_seq_len = 1024;
  o.num_kv_blocks = 1024;
  o.cuda_graphs = graphs;
  absl::StatusOr<std::unique_ptr<CudaLlamaModel>> m = CudaLlamaModel::CreateRandom(config, seed, o);
  EXPECT_TRUE(m.ok()) << m.status();
  return m.ok() ? *std::move(m) : nullptr;
}

// Prefill `seqs` (3..8) sequences of different lengths, then `steps` batched greedy decode steps;
// returns every step's logits.
std::vector<std::vector<float>> Decode(CudaLlamaModel& m, int steps, int seqs = 3) {
  std::vector<std::vector<int32_t>> prompts = {{1, 2, 3, 4, 5}, {7, 8}, {9, 10, 11, 12, 13, 14}};
  for (int i = 3; i < seqs; ++i) prompts.push_back(std::vector<int32_t>(i, 20 + i));
  std::vector<CudaTokenStep> batch;
  for (uint64_t i = 0; i < prompts.size(); ++i) batch.push_back({i + 1, prompts[i]});
  std::vector<int32_t> next;
  std::vector<float> logits;
  std::vector<std::vector<float>> out;
  EXPECT_TRUE(m.Forward(batch, &next, &logits).ok());
  out.push_back(logits);
  for (int t = 0; t < steps; ++t) {
    std::vector<int32_t> toks = next;
    for (size_t i = 0; i < batch.size(); ++i) batch[i].tokens = absl::MakeConstSpan(&toks[i], 1);
    absl::Status st = m.Forward(batch, &next, &logits);
    EXPECT_TRUE(st.ok()) << st;
    out.push_back(logits);
  }
  return out;
}

TEST(RandomModelTest, GraphDecodeEqualsEagerAndSeedsDiffer) {
  XKV_SKIP_WITHOUT_GPU();
  std::unique_ptr<CudaLlamaModel> eager = Make(5, false), graph = Make(5, true),
                                  other = Make(6, true);
  ASSERT_TRUE(eager && graph && other);
  const int64_t free_before = graph->free_kv_blocks();
  const auto a = Decode(*eager, 40), b = Decode(*graph, 40), c = Decode(*other, 2);
  ASSERT_EQ(a.size(), b.size());
  for (size_t t = 0; t < a.size(); ++t) {
    ASSERT_EQ(a[t], b[t]) << "step " << t;
    for (float v : a[t]) ASSERT_TRUE(std::isfinite(v));
  }
  EXPECT_NE(a[0], c[0]);
  for (uint64_t id = 1; id <= 3; ++id) {
    EXPECT_EQ(graph->logical_position(id), (id == 2 ? 2 : id == 1 ? 5 : 6) + 40);
    graph->ReleaseSequence(id);
  }
  EXPECT_EQ(graph->free_kv_blocks(), free_before);
}

// Decode steps run the GEMV kernels: 3 sequences on the Llama-3.2-1B widths (RMSNorm kernels
// apart), 3 and 8 on SmolLM2's (RMSNorms fused into the GEMVs; 8 rows on tensor cores, whose
// warps' partial sums add up in a fixed order: no bit depends on PDL either). Launched with or
// without programmatic dependent launch they give the same bits, eager and from graphs; against the
// cuBLAS path the first decode step's logits (same prefill, same inputs) agree to fp32
// summation-order noise.
TEST(RandomModelTest, SmallBatchKernelsMatchCublasAndPdlChangesNoBit) {
  XKV_SKIP_WITHOUT_GPU();
  for (const auto& [config, seqs] :
       {std::pair{SmallLlama3(), 3}, std::pair{SmallSmol(), 3}, std::pair{SmallSmol(), 8}}) {
    std::unique_ptr<CudaLlamaModel> pdl = Make(5, true, true, true, config),
                                    plain = Make(5, true, true, false, config),
                                    eager_pdl = Make(5, false, true, true, config),
                                    cublas = Make(5, true, false, false, config);
    ASSERT_TRUE(pdl && plain && eager_pdl && cublas);
    ASSERT_GE(pdl->gemv_max_rows(), seqs);
    const auto a = Decode(*pdl, 20, seqs), b = Decode(*plain, 20, seqs),
               c = Decode(*eager_pdl, 20, seqs), d = Decode(*cublas, 1, seqs);
    ASSERT_EQ(a.size(), b.size());
    for (size_t t = 0; t < a.size(); ++t) {
      ASSERT_EQ(a[t], b[t]) << "step " << t << ", " << seqs << " sequences, hidden "
                            << config.hidden;
      ASSERT_EQ(a[t], c[t]) << "step " << t << ", " << seqs << " sequences, hidden "
                            << config.hidden;
    }
    // Step 0: the prefill's layers (13 or more rows) run cuBLAS in both, the head (one row a
    // sequence) differs.
    for (int t : {0, 1}) {
      float lo = d[t][0], hi = d[t][0], worst = 0.f;
      for (size_t i = 0; i < d[t].size(); ++i) {
        lo = std::min(lo, d[t][i]);
        hi = std::max(hi, d[t][i]);
        worst = std::max(worst, std::fabs(a[t][i] - d[t][i]));
      }
      EXPECT_GT(worst, 0.f) << t << ", " << seqs << " sequences, hidden "
                            << config.hidden;  // a different kernel did run
      EXPECT_LE(worst, 5e-3f * (hi - lo))
          << t << ", " << seqs << " sequences, hidden " << config.hidden;
    }
  }
}

// Sequence `id`'s K and V in every layer (the engine's cache copy), head by head.
std::vector<float> KvOf(const CudaLlamaModel& m, uint64_t id) {
  std::vector<float> out;
  const std::unique_ptr<KvCache> c = m.CacheCopy(id);
  if (c == nullptr) return out;
  for (int l = c->layer_begin(); l < c->layer_end(); ++l) {
    for (int g = 0; g < c->n_kv_heads(); ++g) {
      const int64_t n = c->head_length(l, g) * c->head_dim();
      out.insert(out.end(), c->k_head(l, g), c->k_head(l, g) + n);
      out.insert(out.end(), c->v_head(l, g), c->v_head(l, g) + n);
    }
  }
  return out;
}

// The resident path (rows kept on the device between EmbedResident, RunLayersResident and
// LogitsResident) gives the host path's logits bit for bit, prefill and decode; it returns before
// the layers have run, and a cache copy right after it still sees the step's K and V; misuse is
// an error.
TEST(RandomModelTest, ResidentPathEqualsHostPath) {
  XKV_SKIP_WITHOUT_GPU();
  std::unique_ptr<CudaLlamaModel> host = Make(5, true), dev = Make(5, true);
  ASSERT_TRUE(host && dev);
  std::vector<int32_t> tokens = {3, 99, 1000, 7, 12, 4242, 5, 6, 8};
  int64_t position = 0;
  for (int step = 0; step < 6; ++step) {
    const int64_t n = tokens.size();
    EngineStep s;
    s.sequences.push_back({1, n, position, false});
    const std::vector<int64_t> rows = {n - 1};
    auto hidden = host->Embed(tokens);
    ASSERT_TRUE(hidden.ok()) << hidden.status();
    ASSERT_TRUE(host->RunLayers(s, {}, absl::MakeSpan(*hidden), nullptr).ok());
    auto want = host->Logits(*hidden, rows);
    ASSERT_TRUE(want.ok()) << want.status();
    XKV_ASSERT_OK(dev->EmbedResident(tokens));
    XKV_ASSERT_OK(dev->RunLayersResident(s, {}, nullptr));
    const std::vector<float> kv = KvOf(*dev, 1);
    ASSERT_EQ(kv.size(), size_t{4} * 8 * 64 * 2 * (position + n)) << "step " << step;
    ASSERT_EQ(kv, KvOf(*host, 1)) << "step " << step;
    auto got = dev->LogitsResident(rows);
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_EQ(*got, *want) << "step " << step;
    position += n;
    tokens = {static_cast<int32_t>(100 + step)};
  }
  EXPECT_EQ(dev->LogitsResident({1}).status().code(), absl::StatusCode::kInvalidArgument);
  EngineStep two;
  two.sequences.push_back({2, 2, 0, false});
  XKV_ASSERT_OK(dev->EmbedResident({1}));
  EXPECT_EQ(dev->RunLayersResident(two, {}, nullptr).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_FALSE(dev->HasSequence(2));
  auto other = dev->Embed({1, 2});  // the host path takes the buffer back
  ASSERT_TRUE(other.ok());
  EXPECT_EQ(dev->RunLayersResident(two, {}, nullptr).code(), absl::StatusCode::kFailedPrecondition);
}

TEST(RandomModelTest, PoolExhaustionIsAnErrorThatChangesNothing) {
  XKV_SKIP_WITHOUT_GPU();
  CudaEngineOptions o;
  o.max_batch = 2;
  o.max_step_tokens = 512;
  o.max_seq_len = 512;
  o.num_kv_blocks = 40;  // 4 layers x 10 blocks: 160 tokens per layer
  absl::StatusOr<std::unique_ptr<CudaLlamaModel>> m =
      CudaLlamaModel::CreateRandom(SmallLlama3(), 1, o);
  ASSERT_TRUE(m.ok()) << m.status();
  std::vector<int32_t> prompt(200, 3), next;
  std::vector<CudaTokenStep> step = {{1, prompt}};
  absl::Status st = (*m)->Forward(step, &next);
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted) << st;
  EXPECT_EQ((*m)->free_kv_blocks(), 40);
  prompt.resize(100);
  step = {{1, prompt}};
  EXPECT_TRUE((*m)->Forward(step, &next).ok());
  std::vector<int32_t> bad = {-1};
  step = {{1, bad}};
  EXPECT_EQ((*m)->Forward(step, &next).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*m)->logical_position(1), 100);
}

}  // namespace
}  // namespace xkv
