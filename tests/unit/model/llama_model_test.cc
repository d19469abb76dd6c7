#include "model/llama_model.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/half.h"
#include "model/gguf.h"
#include "model/llama_weights.h"
#include "model/model_config.h"
#include "model/synthetic_model.h"
#include "tests/parity/arch_cases.h"
#include "tests/unit/model/llama_test_util.h"

namespace xkv {
namespace {

using ::xkv::testing::NaiveForward;
using ::xkv::testing::RandomWeights;
using ::xkv::testing::TinyConfig;

std::vector<int32_t> RandomTokens(int n, int vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> t(n);
  for (int32_t& x : t) x = static_cast<int32_t>(rng() % vocab);
  return t;
}

std::vector<int64_t> Iota(int64_t n, int64_t from = 0) {
  std::vector<int64_t> p(n);
  std::iota(p.begin(), p.end(), from);
  return p;
}

double MaxDiff(const float* a, const double* b, int64_t n) {
  double m = 0;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::abs(double(a[i]) - b[i]));
  return m;
}

double MaxDiff(const float* a, const float* b, int64_t n) {
  double m = 0;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::abs(double(a[i]) - double(b[i])));
  return m;
}

// `count` sorted random slots of [0, n).
std::vector<int32_t> RandomSlots(int n, int count, std::mt19937_64& rng) {
  std::vector<int32_t> all(n);
  std::iota(all.begin(), all.end(), 0);
  std::shuffle(all.begin(), all.end(), rng);
  all.resize(count);
  std::sort(all.begin(), all.end());
  return all;
}

class LlamaModelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    weights_ = RandomWeights(TinyConfig(), 11);
    auto model = LlamaModel::Create(weights_, {.num_threads = 2});
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::move(*model);
  }
  int vocab() const { return weights_->config.vocab_size; }
  // One sequence, n tokens from position `pos`, last-row logits (or all rows).
  std::vector<float> Run(KvCache& cache, const std::vector<int32_t>& tokens, int64_t pos,
                         bool all = false) {
    BatchStep b;
    b.sequences.push_back({&cache, static_cast<int64_t>(tokens.size()), pos, false});
    auto r = model_->Forward(tokens, b, all);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : std::vector<float>();
  }

  std::shared_ptr<LlamaWeights> weights_;
  std::unique_ptr<LlamaModel> model_;
};

// (c) Tolerance 2e-4 absolute on logits of magnitude ~1-10 (fp32 engine vs fp64 reference).
TEST_F(LlamaModelTest, EngineMatchesNaiveReferenceOnEveryRow) {
  const std::vector<int32_t> tokens = RandomTokens(37, vocab(), 1);
  auto cache = model_->NewCache();
  const std::vector<float> got = Run(*cache, tokens, 0, /*all=*/true);
  const std::vector<double> want = NaiveForward(*weights_, tokens, Iota(37));
  ASSERT_EQ(got.size(), want.size());
  EXPECT_LT(MaxDiff(got.data(), want.data(), got.size()), 2e-4);
  for (int l = 0; l < TinyConfig().n_layers; ++l) EXPECT_EQ(cache->length(l), 37);
}

// (a) Tolerance 1e-4.
TEST_F(LlamaModelTest, BatchedSequencesEqualEachAlone) {
  const std::vector<int> lens = {5, 23, 1};
  std::vector<std::vector<int32_t>> prompts;
  std::vector<std::unique_ptr<KvCache>> caches;
  BatchStep batch;
  std::vector<int32_t> all;
  for (size_t i = 0; i < lens.size(); ++i) {
    prompts.push_back(RandomTokens(lens[i], vocab(), 100 + i));
    caches.push_back(model_->NewCache());
    batch.sequences.push_back({caches[i].get(), lens[i], 0, false});
    all.insert(all.end(), prompts[i].begin(), prompts[i].end());
  }
  auto batched = model_->Forward(all, batch);
  ASSERT_TRUE(batched.ok()) << batched.status();
  for (size_t i = 0; i < lens.size(); ++i) {
    auto alone_cache = model_->NewCache();
    const std::vector<float> alone = Run(*alone_cache, prompts[i], 0);
    EXPECT_LT(MaxDiff(batched->data() + i * vocab(), alone.data(), vocab()), 1e-4) << i;
  }
  // A mixed step: sequence 0 decodes one token while a fresh sequence prefills 9.
  auto fresh = model_->NewCache();
  const std::vector<int32_t> next = RandomTokens(9, vocab(), 7);
  BatchStep mixed;
  mixed.sequences.push_back({caches[0].get(), 1, 5, false});
  mixed.sequences.push_back({fresh.get(), 9, 0, false});
  std::vector<int32_t> mixed_tokens = {3};
  mixed_tokens.insert(mixed_tokens.end(), next.begin(), next.end());
  auto m = model_->Forward(mixed_tokens, mixed);
  ASSERT_TRUE(m.ok()) << m.status();
  std::vector<int32_t> seq0 = prompts[0];
  seq0.push_back(3);
  auto c0 = model_->NewCache();
  EXPECT_LT(MaxDiff(m->data(), Run(*c0, seq0, 0).data(), vocab()), 1e-4);
  auto c1 = model_->NewCache();
  EXPECT_LT(MaxDiff(m->data() + vocab(), Run(*c1, next, 0).data(), vocab()), 1e-4);
}

// (b) Prefill N (in chunks) then decode M == one prefill of N + M. Tolerance 1e-4.
TEST_F(LlamaModelTest, PrefillThenDecodeEqualsOnePrefill) {
  const int n = 17, m = 6;
  const std::vector<int32_t> tokens = RandomTokens(n + m, vocab(), 3);
  auto full_cache = model_->NewCache();
  const std::vector<float> full = Run(*full_cache, tokens, 0, /*all=*/true);
  auto cache = model_->NewCache();
  Run(*cache, {tokens.begin(), tokens.begin() + 10}, 0);
  std::vector<float> last = Run(*cache, {tokens.begin() + 10, tokens.begin() + n}, 10);
  EXPECT_LT(MaxDiff(last.data(), full.data() + (n - 1) * vocab(), vocab()), 1e-4);
  for (int i = n; i < n + m; ++i) {
    last = Run(*cache, {tokens[i]}, i);
    EXPECT_LT(MaxDiff(last.data(), full.data() + i * vocab(), vocab()), 1e-4) << i;
  }
}

// (d) Per-layer compaction to different sizes, then decoding at the true positions, equals the
// naive reference in which decode queries see only the kept prompt tokens. Tolerance 2e-4.
TEST_F(LlamaModelTest, CompactThenDecodeUsesTruePositions) {
  const ModelConfig c = TinyConfig();
  const int n = 20, m = 5;
  const std::vector<int32_t> tokens = RandomTokens(n + m, vocab(), 5);
  const std::vector<int> keep_per_layer = {12, 7, 15};
  std::mt19937_64 rng(9);
  // kept[l][g]: sorted prompt slots kept by layer l, KV head g.
  std::vector<std::vector<std::vector<int32_t>>> kept(c.n_layers);
  for (int l = 0; l < c.n_layers; ++l) {
    for (int g = 0; g < c.n_kv_heads; ++g)
      kept[l].push_back(RandomSlots(n, keep_per_layer[l], rng));
  }
  auto cache = model_->NewCache();
  Run(*cache, {tokens.begin(), tokens.begin() + n}, 0);
  const int64_t full_bytes = cache->BytesHeld(0);
  for (int l = 0; l < 3; ++l) ASSERT_TRUE(cache->Compact(l, kept[l]).ok());
  EXPECT_EQ(cache->length(0), 12);
  EXPECT_EQ(cache->length(1), 7);
  EXPECT_EQ(cache->length(2), 15);
  EXPECT_LT(cache->BytesHeld(0), full_bytes);
  auto mask = [&](int l, int g, int64_t q, int64_t k) {
    if (q < n || k >= n) return true;
    return std::binary_search(kept[l][g].begin(), kept[l][g].end(), k);
  };
  const std::vector<double> want = NaiveForward(*weights_, tokens, Iota(n + m), mask);
  // The classic bug for contrast: positions taken from the (largest) cache length.
  auto wrong_cache = model_->NewCache();
  Run(*wrong_cache, {tokens.begin(), tokens.begin() + n}, 0);
  for (int l = 0; l < 3; ++l) ASSERT_TRUE(wrong_cache->Compact(l, kept[l]).ok());
  for (int i = n; i < n + m; ++i) {
    const std::vector<float> got = Run(*cache, {tokens[i]}, i);
    EXPECT_LT(MaxDiff(got.data(), want.data() + i * vocab(), vocab()), 2e-4) << i;
    const std::vector<float> wrong = Run(*wrong_cache, {tokens[i]}, wrong_cache->length(2));
    EXPECT_GT(MaxDiff(wrong.data(), want.data() + i * vocab(), vocab()), 1e-3) << i;
  }
  EXPECT_EQ(cache->length(0), 12 + m);
  EXPECT_EQ(cache->length(2), 15 + m);
}

// Per-(layer, KV head) budgets: the KV heads of a layer keep different counts; decode steps and a
// multi-token step after compaction each read their own head's rows (fp64 reference with the
// same per-head mask), and the evicted rows' bytes are freed.
TEST_F(LlamaModelTest, PerHeadCompactionThenDecodeAndPrefill) {
  const ModelConfig c = TinyConfig();  // 2 KV heads
  const int n = 24, m = 6;
  const std::vector<int32_t> tokens = RandomTokens(n + m, vocab(), 15);
  const int keep[3][2] = {{3, 20}, {11, 11}, {24, 1}};  // layer 1 stays uniform
  std::mt19937_64 rng(21);
  std::vector<std::vector<std::vector<int32_t>>> kept(c.n_layers);
  for (int l = 0; l < c.n_layers; ++l) {
    for (int g = 0; g < c.n_kv_heads; ++g) kept[l].push_back(RandomSlots(n, keep[l][g], rng));
  }
  auto cache = model_->NewCache();
  Run(*cache, {tokens.begin(), tokens.begin() + n}, 0);
  for (int l = 0; l < 3; ++l) ASSERT_TRUE(cache->Compact(l, kept[l]).ok());
  EXPECT_FALSE(cache->uniform(0));
  EXPECT_TRUE(cache->uniform(1));
  EXPECT_EQ(cache->length(0), 20);
  EXPECT_EQ(cache->BytesHeld(0), 2 * (3 + 20) * c.head_dim * 4);
  auto mask = [&](int l, int g, int64_t q, int64_t k) {
    if (q < n || k >= n) return true;
    return std::binary_search(kept[l][g].begin(), kept[l][g].end(), k);
  };
  const std::vector<double> want = NaiveForward(*weights_, tokens, Iota(n + m), mask);
  for (int i = n; i < n + 2; ++i) {
    const std::vector<float> got = Run(*cache, {tokens[i]}, i);
    EXPECT_LT(MaxDiff(got.data(), want.data() + i * vocab(), vocab()), 2e-4) << i;
  }
  const std::vector<float> rows = Run(*cache, {tokens.begin() + n + 2, tokens.end()}, n + 2, true);
  for (int i = n + 2; i < n + m; ++i) {
    EXPECT_LT(MaxDiff(rows.data() + (i - n - 2) * vocab(), want.data() + i * vocab(), vocab()),
              2e-4)
        << i;
  }
  EXPECT_EQ(cache->head_length(0, 0), 3 + m);
  EXPECT_EQ(cache->head_length(2, 1), 1 + m);
}

// Observer sees post-RoPE Q and the full K; scores-only mode writes no KV and sees the same.
TEST_F(LlamaModelTest, ObserverAndScoresOnlyMode) {
  const ModelConfig c = TinyConfig();
  const std::vector<int32_t> tokens = RandomTokens(15, vocab(), 6);
  std::vector<std::vector<float>> q_seen[2], k_seen[2];
  for (int pass = 0; pass < 2; ++pass) {
    auto cache = model_->NewCache();
    BatchStep b;
    b.sequences.push_back({cache.get(), 15, 0, true});
    b.scores_only = pass == 1;
    int expected_layer = 0;
    b.observer = [&](const LayerObservation& o) {
      EXPECT_EQ(o.layer, expected_layer++);
      EXPECT_EQ(o.n_new, 15);
      EXPECT_EQ(o.k_len, 15);
      q_seen[pass].emplace_back(o.q, o.q + 15 * c.n_heads * c.head_dim);
      std::vector<float> k;
      for (int g = 0; g < o.n_kv_heads; ++g) {
        k.insert(k.end(), o.k + g * o.k_head_stride, o.k + g * o.k_head_stride + 15 * c.head_dim);
      }
      k_seen[pass].push_back(k);
      return absl::OkStatus();
    };
    auto r = model_->Forward(tokens, b);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(expected_layer, c.n_layers);
    for (int l = 0; l < c.n_layers; ++l) EXPECT_EQ(cache->length(l), pass == 1 ? 0 : 15);
  }
  for (int l = 0; l < c.n_layers; ++l) {
    EXPECT_EQ(q_seen[0][l], q_seen[1][l]);
    EXPECT_EQ(k_seen[0][l], k_seen[1][l]);
  }
  BatchStep fail;
  auto cache = model_->NewCache();
  fail.sequences.push_back({cache.get(), 15, 0, true});
  fail.observer = [](const LayerObservation&) { return absl::InternalError("stop"); };
  EXPECT_EQ(model_->Forward(tokens, fail).status().code(), absl::StatusCode::kInternal);
}

// Pipeline split: stage A runs layers [0, 1) from the embedding, stage B [1, 3) and the head.
TEST_F(LlamaModelTest, LayerRangeStagesEqualWholeModel) {
  const std::vector<int32_t> tokens = RandomTokens(12, vocab(), 8);
  auto whole_cache = model_->NewCache();
  const std::vector<float> whole = Run(*whole_cache, tokens, 0);
  auto a = std::make_shared<LlamaWeights>(*weights_);
  a->layer_end = 1;
  a->layers.resize(1);
  a->lm_head = nullptr;
  auto b = std::make_shared<LlamaWeights>(*weights_);
  b->layer_begin = 1;
  b->layers.erase(b->layers.begin());
  b->embedding = nullptr;
  auto sa = LlamaModel::Create(a, {});
  auto sb = LlamaModel::Create(b, {});
  ASSERT_TRUE(sa.ok() && sb.ok());
  auto ca = (*sa)->NewCache();
  auto cb = (*sb)->NewCache();
  EXPECT_EQ(cb->layer_begin(), 1);
  BatchStep step_a, step_b;
  step_a.sequences.push_back({ca.get(), 12, 0, false});
  step_b.sequences.push_back({cb.get(), 12, 0, false});
  auto hidden = (*sa)->Embed(tokens);
  ASSERT_TRUE(hidden.ok());
  ASSERT_TRUE((*sa)->RunLayers(0, 1, step_a, absl::MakeSpan(*hidden)).ok());
  ASSERT_TRUE((*sb)->RunLayers(1, 3, step_b, absl::MakeSpan(*hidden)).ok());
  auto logits = (*sb)->Logits(*hidden, step_b.LastRows());
  ASSERT_TRUE(logits.ok());
  EXPECT_LT(MaxDiff(logits->data(), whole.data(), vocab()), 1e-5);
  EXPECT_FALSE((*sa)->RunLayers(0, 2, step_a, absl::MakeSpan(*hidden)).ok());  // not loaded
  EXPECT_FALSE((*sa)->Logits(*hidden, {0}).ok());                              // no head
}

TEST_F(LlamaModelTest, RejectsBadBatches) {
  auto cache = model_->NewCache();
  std::vector<float> hidden(3 * TinyConfig().hidden);
  BatchStep b;
  b.sequences.push_back({cache.get(), 3, 0, false});
  EXPECT_FALSE(model_->RunLayers(0, 3, b, absl::MakeSpan(hidden.data(), 10)).ok());
  b.sequences[0].cache = nullptr;
  EXPECT_FALSE(model_->RunLayers(0, 3, b, absl::MakeSpan(hidden)).ok());
  EXPECT_FALSE(model_->Embed({0, 64}).ok());  // out of vocabulary
}

}  // namespace
}  // namespace xkv

namespace xkv {
namespace {

// kBf16 (the CUDA engine's CPU reference): weights rounded to bf16 once, GEMM inputs and K/V
// rounded to bf16 — close to the fp64 forward of the rounded weights (activation rounding only,
// 2^-9 relative per value), and really different from kExact.
TEST(Bf16NumericsTest, RoundsWeightsAndStaysCloseToTheFp64Forward) {
  std::shared_ptr<LlamaWeights> w = RandomWeights(TinyConfig(), 23);
  const LlamaWeights rounded = RoundWeightsToBf16(*w);
  for (size_t l = 0; l < rounded.layers.size(); ++l) {
    const std::vector<float>& m = rounded.layers[l].wqkv;
    for (size_t i = 0; i < m.size(); ++i) {
      ASSERT_EQ(m[i], cpu::Bf16ToF32(cpu::F32ToBf16(m[i])));
      ASSERT_NEAR(m[i], w->layers[l].wqkv[i], std::fabs(w->layers[l].wqkv[i]) / 256 + 1e-30);
    }
    EXPECT_EQ(rounded.layers[l].attn_norm, w->layers[l].attn_norm);  // norms stay fp32
  }
  const std::vector<int32_t> tokens = RandomTokens(19, TinyConfig().vocab_size, 5);
  std::vector<int64_t> positions(tokens.size());
  std::iota(positions.begin(), positions.end(), 0);
  const std::vector<double> want = NaiveForward(rounded, tokens, positions);
  auto run = [&](Numerics numerics) {
    auto model = LlamaModel::Create(w, LlamaModelOptions{1, numerics});
    EXPECT_TRUE(model.ok()) << model.status();
    std::unique_ptr<KvCache> cache = (*model)->NewCache();
    BatchStep step;
    step.sequences.push_back({cache.get(), static_cast<int64_t>(tokens.size()), 0});
    absl::StatusOr<std::vector<float>> logits = (*model)->Forward(tokens, step, true);
    EXPECT_TRUE(logits.ok()) << logits.status();
    return *logits;
  };
  const std::vector<float> bf16 = run(Numerics::kBf16), exact = run(Numerics::kExact);
  ASSERT_EQ(bf16.size(), want.size());
  const auto [lo, hi] = std::minmax_element(want.begin(), want.end());
  double worst = 0;
  for (size_t i = 0; i < want.size(); ++i) worst = std::max(worst, std::fabs(bf16[i] - want[i]));
  EXPECT_LE(worst, 0.02 * (*hi - *lo));
  EXPECT_NE(bf16, exact);
}

// Each architecture's random-weight GGUF (tests/parity/arch_cases.h; llama.cpp parity is in
// tests/parity/arch_parity_test.cc): two pipeline stages reproduce the whole model bit for bit —
// the hooks' tensors (per-layer biases and QK-norm gains, the global rope_freqs) reach every stage
// — and a prefill followed by decode steps through the KV cache equals one prefill.
class ArchModelTest : public ::testing::TestWithParam<ArchCase> {};

TEST_P(ArchModelTest, StagesAndDecodeStepsEqualTheWholePrefill) {
  auto bytes = WriteSyntheticModelToBuffer(GetParam().options);
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  auto file = GgufFile::FromBuffer(*bytes);
  ASSERT_TRUE(file.ok()) << file.status();
  auto config = ReadModelConfig(**file);
  ASSERT_TRUE(config.ok()) << config.status();
  auto model = [&](Numerics numerics, LlamaWeightsOptions wo) {
    auto w = LoadLlamaWeights(**file, *config, wo);
    EXPECT_TRUE(w.ok()) << w.status();
    LlamaModelOptions o;
    o.numerics = numerics;
    auto m = LlamaModel::Create(std::make_shared<const LlamaWeights>(std::move(*w)), o);
    EXPECT_TRUE(m.ok()) << m.status();
    return std::move(*m);
  };
  const int vocab = config->vocab_size;
  const std::vector<int32_t> prompt = RandomTokens(21, vocab, 5);
  const int64_t n = static_cast<int64_t>(prompt.size());

  auto whole = model(Numerics::kGgml, {});
  auto first = model(Numerics::kGgml, {.layer_end = 1, .load_head = false});
  auto last = model(Numerics::kGgml, {.layer_begin = 1, .load_embedding = false});
  std::unique_ptr<KvCache> c0 = whole->NewCache(), c1 = first->NewCache(), c2 = last->NewCache();
  BatchStep step;
  step.sequences.push_back({c0.get(), n, 0, false});
  auto want = whole->Forward(prompt, step);
  ASSERT_TRUE(want.ok()) << want.status();
  auto hidden = first->Embed(prompt);
  ASSERT_TRUE(hidden.ok()) << hidden.status();
  step.sequences[0].cache = c1.get();
  ASSERT_TRUE(first->RunLayers(0, 1, step, absl::MakeSpan(*hidden)).ok());
  step.sequences[0].cache = c2.get();
  ASSERT_TRUE(last->RunLayers(1, 2, step, absl::MakeSpan(*hidden)).ok());
  auto got = last->Logits(*hidden, step.LastRows());
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, *want);

  auto exact = model(Numerics::kExact, {});
  std::unique_ptr<KvCache> one = exact->NewCache(), steps = exact->NewCache();
  BatchStep all;
  all.sequences.push_back({one.get(), n, 0, false});
  auto logits_all = exact->Forward(prompt, all, /*all_rows=*/true);
  ASSERT_TRUE(logits_all.ok()) << logits_all.status();
  BatchStep head;
  head.sequences.push_back({steps.get(), n - 4, 0, false});
  ASSERT_TRUE(exact->Forward(absl::MakeConstSpan(prompt).first(n - 4), head).ok());
  for (int64_t t = n - 4; t < n; ++t) {
    BatchStep decode;
    decode.sequences.push_back({steps.get(), 1, t, false});
    auto l = exact->Forward({prompt[t]}, decode);
    ASSERT_TRUE(l.ok()) << l.status();
    EXPECT_LT(MaxDiff(l->data(), logits_all->data() + t * vocab, vocab), 1e-4) << "position " << t;
  }
}

// The two-layer cases (the one-layer real shapes cannot split into stages).
std::vector<ArchCase> TwoLayerArchCases() {
  std::vector<ArchCase> cases = ArchCases();
  cases.erase(std::remove_if(cases.begin(), cases.end(),
                             [](const ArchCase& c) { return c.options.n_layers != 2; }),
              cases.end());
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Archs, ArchModelTest, ::testing::ValuesIn(TwoLayerArchCases()),
                         [](const ::testing::TestParamInfo<ArchCase>& i) { return i.param.name; });

}  // namespace
}  // namespace xkv
