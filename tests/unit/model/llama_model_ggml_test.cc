// Numerics::kGgml on Q4_1 / Q8_0 files runs the bit-exact emulation of llama.cpp's CPU backend
// (kernels/cpu/ggml_exact.h); tests/parity checks the bit-equality with llama.cpp itself on the
// real model. Here, on random-weight models: the path agrees with the fp32 engine and with the
// rounding-only path within 8-bit quantization noise, and its results do not depend on how work is
// split — threads, batch composition, prefill chunks of two or more tokens, pipeline stages — as
// llama.cpp's do not.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "model/gguf.h"
#include "model/llama_model.h"
#include "model/llama_weights.h"
#include "model/model_config.h"
#include "model/synthetic_model.h"

namespace xkv {
namespace {

struct Fixture {
  std::unique_ptr<GgufFile> file;
  ModelConfig config;
};

// head_dim 16 unless `hidden` is given (4 heads).
Fixture Synthetic(GgmlType type, int hidden = 0) {
  SyntheticModelOptions o = SyntheticModelOptions::Tiny();
  o.weight_type = type;
  o.weight_scale = 0.2f;
  if (hidden > 0) o.hidden = hidden;
  o.seed = 7;
  Fixture f;
  auto buf = WriteSyntheticModelToBuffer(o);
  EXPECT_TRUE(buf.ok()) << buf.status();
  auto file = GgufFile::FromBuffer(*buf);
  EXPECT_TRUE(file.ok()) << file.status();
  f.file = std::move(*file);
  auto config = ReadModelConfig(*f.file);
  EXPECT_TRUE(config.ok()) << config.status();
  f.config = *config;
  return f;
}

std::unique_ptr<LlamaModel> Model(const Fixture& f, Numerics numerics, int threads = 1,
                                  LlamaWeightsOptions wo = {}) {
  auto w = LoadLlamaWeights(*f.file, f.config, wo);
  EXPECT_TRUE(w.ok()) << w.status();
  LlamaModelOptions o;
  o.numerics = numerics;
  o.num_threads = threads;
  auto m = LlamaModel::Create(std::make_shared<const LlamaWeights>(std::move(*w)), o);
  EXPECT_TRUE(m.ok()) << m.status();
  return std::move(*m);
}

std::vector<int32_t> Tokens(int n, uint32_t seed, int vocab) {
  std::mt19937 rng(seed);
  std::vector<int32_t> t(n);
  for (int32_t& x : t) x = static_cast<int32_t>(rng() % vocab);
  return t;
}

// Logits after prefilling `prompt` in chunks of `chunk` tokens, then one decode step per `extra`
// token: the prefill's last logits, then each decode step's.
std::vector<float> Logits(LlamaModel& m, const std::vector<int32_t>& prompt,
                          const std::vector<int32_t>& extra, int chunk) {
  std::unique_ptr<KvCache> cache = m.NewCache();
  std::vector<float> out;
  int64_t pos = 0;
  std::vector<float> last;
  while (pos < static_cast<int64_t>(prompt.size())) {
    const int64_t n = std::min<int64_t>(chunk, prompt.size() - pos);
    BatchStep step;
    step.sequences.push_back({cache.get(), n, pos, false});
    auto logits = m.Forward(absl::MakeConstSpan(prompt).subspan(pos, n), step);
    EXPECT_TRUE(logits.ok()) << logits.status();
    last = *logits;
    pos += n;
  }
  out = last;
  for (int32_t t : extra) {
    BatchStep step;
    step.sequences.push_back({cache.get(), 1, pos++, false});
    auto logits = m.Forward({t}, step);
    EXPECT_TRUE(logits.ok()) << logits.status();
    out.insert(out.end(), logits->begin(), logits->end());
  }
  return out;
}

float Range(const std::vector<float>& x) {
  const auto [lo, hi] = std::minmax_element(x.begin(), x.end());
  return *hi - *lo;
}

float MaxDiff(const std::vector<float>& a, const std::vector<float>& b) {
  float d = 0;
  for (size_t i = 0; i < a.size(); ++i) d = std::max(d, std::fabs(a[i] - b[i]));
  return d;
}

bool BitwiseEqual(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

class GgmlNumericsTest : public ::testing::TestWithParam<GgmlType> {};

TEST_P(GgmlNumericsTest, LoadsBlocksOnlyWhenAsked) {
  Fixture f = Synthetic(GetParam());
  auto with = LoadLlamaWeights(*f.file, f.config, {});
  auto without = LoadLlamaWeights(*f.file, f.config, {.keep_blocks = false});
  ASSERT_TRUE(with.ok() && without.ok());
  const int64_t q_dim = int64_t{f.config.n_heads} * f.config.head_dim;
  EXPECT_EQ(with->layer(0).wqkv_q.rows(),
            q_dim + 2 * int64_t{f.config.n_kv_heads} * f.config.head_dim);
  EXPECT_EQ(with->layer(1).w_down_q.cols(), f.config.ffn);
  ASSERT_NE(with->lm_head_q, nullptr);
  EXPECT_EQ(with->lm_head_q->rows(), f.config.vocab_size);
  EXPECT_TRUE(without->layer(0).wqkv_q.empty());
  EXPECT_EQ(without->lm_head_q, nullptr);
  EXPECT_GT(with->Bytes(), without->Bytes());
}

// The exact path against the fp32 engine and against the rounding-only path (no blocks kept: fp32
// GEMMs on rounded activations): the same function up to 8-bit activation noise, computed
// differently.
TEST_P(GgmlNumericsTest, AgreesWithFp32AndRoundingOnlyEngines) {
  Fixture f = Synthetic(GetParam());
  const std::vector<int32_t> prompt = Tokens(37, 1, f.config.vocab_size);
  const std::vector<int32_t> extra = Tokens(3, 2, f.config.vocab_size);
  auto exact_path = Model(f, Numerics::kGgml);
  auto rounding_only = Model(f, Numerics::kGgml, 1, {.keep_blocks = false});
  auto fp32 = Model(f, Numerics::kExact);
  const std::vector<float> a = Logits(*exact_path, prompt, extra, 64);
  const std::vector<float> b = Logits(*rounding_only, prompt, extra, 64);
  const std::vector<float> c = Logits(*fp32, prompt, extra, 64);
  ASSERT_EQ(a.size(), c.size());
  const float range = Range(c);
  ASSERT_GT(range, 0.5f);
  std::printf("exact path vs rounding-only %.3g, vs fp32 %.3g (logit range %.3g)\n", MaxDiff(a, b),
              MaxDiff(a, c), range);
  EXPECT_LT(MaxDiff(a, b), 0.02f * range);  // same roundings, other summation orders
  EXPECT_LT(MaxDiff(a, c), 0.06f * range);  // 8-bit activations and fp16 K/V vs fp32
  EXPECT_FALSE(BitwiseEqual(a, b));
  EXPECT_FALSE(BitwiseEqual(a, c));
}

TEST_P(GgmlNumericsTest, IndependentOfThreadsAndPrefillChunks) {
  Fixture f = Synthetic(GetParam());
  const std::vector<int32_t> prompt = Tokens(40, 3, f.config.vocab_size);
  const std::vector<int32_t> extra = Tokens(4, 4, f.config.vocab_size);
  auto one = Model(f, Numerics::kGgml, 1);
  auto three = Model(f, Numerics::kGgml, 3);
  const std::vector<float> whole = Logits(*one, prompt, extra, 64);
  EXPECT_TRUE(BitwiseEqual(whole, Logits(*three, prompt, extra, 64)));
  // llama.cpp's batched path does not depend on the split of a prompt into batches of >= 2 tokens.
  EXPECT_TRUE(BitwiseEqual(whole, Logits(*one, prompt, extra, 10)));
  EXPECT_TRUE(BitwiseEqual(whole, Logits(*one, prompt, extra, 8)));
}

TEST_P(GgmlNumericsTest, IndependentOfBatchComposition) {
  Fixture f = Synthetic(GetParam());
  auto m = Model(f, Numerics::kGgml, 2);
  const std::vector<int32_t> p1 = Tokens(19, 5, f.config.vocab_size);
  const std::vector<int32_t> p2 = Tokens(26, 6, f.config.vocab_size);
  const std::vector<float> alone1 = Logits(*m, p1, {}, 64);
  const std::vector<float> alone2 = Logits(*m, p2, {}, 64);
  std::unique_ptr<KvCache> c1 = m->NewCache(), c2 = m->NewCache();
  BatchStep step;
  step.sequences.push_back({c1.get(), static_cast<int64_t>(p1.size()), 0, false});
  step.sequences.push_back({c2.get(), static_cast<int64_t>(p2.size()), 0, false});
  std::vector<int32_t> both = p1;
  both.insert(both.end(), p2.begin(), p2.end());
  auto logits = m->Forward(both, step);
  ASSERT_TRUE(logits.ok()) << logits.status();
  const int64_t vocab = f.config.vocab_size;
  EXPECT_TRUE(BitwiseEqual(std::vector<float>(logits->begin(), logits->begin() + vocab), alone1));
  EXPECT_TRUE(BitwiseEqual(std::vector<float>(logits->begin() + vocab, logits->end()), alone2));
}

TEST_P(GgmlNumericsTest, PipelineStagesReproduceTheWholeModel) {
  Fixture f = Synthetic(GetParam());
  const std::vector<int32_t> prompt = Tokens(23, 7, f.config.vocab_size);
  auto whole = Model(f, Numerics::kGgml);
  auto first = Model(f, Numerics::kGgml, 1, {.layer_end = 1, .load_head = false});
  auto last = Model(f, Numerics::kGgml, 1, {.layer_begin = 1, .load_embedding = false});
  const std::vector<float> want = Logits(*whole, prompt, {}, 64);
  std::unique_ptr<KvCache> c1 = first->NewCache(), c2 = last->NewCache();
  BatchStep step;
  step.sequences.push_back({c1.get(), static_cast<int64_t>(prompt.size()), 0, false});
  auto hidden = first->Embed(prompt);
  ASSERT_TRUE(hidden.ok());
  ASSERT_TRUE(first->RunLayers(0, 1, step, absl::MakeSpan(*hidden)).ok());
  step.sequences[0].cache = c2.get();
  ASSERT_TRUE(last->RunLayers(1, 2, step, absl::MakeSpan(*hidden)).ok());
  auto logits = last->Logits(*hidden, step.LastRows());
  ASSERT_TRUE(logits.ok()) << logits.status();
  EXPECT_TRUE(BitwiseEqual(*logits, want));
}

// Weights held only in their blocks (what LoadModel and the CPU stages load for kGgml): the same
// logits, bit for bit, from a fraction of the memory; other numerics refuse them.
TEST_P(GgmlNumericsTest, BlocksOnlyWeightsGiveTheSameBitsInLessMemory) {
  Fixture f = Synthetic(GetParam());
  auto full = LoadLlamaWeights(*f.file, f.config, {});
  auto lean = LoadLlamaWeights(*f.file, f.config, {.blocks_only = true});
  ASSERT_TRUE(full.ok() && lean.ok()) << full.status() << lean.status();
  for (int l = 0; l < f.config.n_layers; ++l) {
    EXPECT_TRUE(lean->layer(l).BlocksOnly());
    EXPECT_TRUE(lean->layer(l).wqkv.empty() && lean->layer(l).w_down.empty());
    EXPECT_FALSE(full->layer(l).BlocksOnly());
  }
  EXPECT_EQ(lean->lm_head, nullptr);  // untied head: only its blocks
  ASSERT_NE(lean->lm_head_q, nullptr);
  ASSERT_NE(lean->embedding, nullptr);  // get_rows reads the fp32 embedding
  EXPECT_LT(lean->Bytes(), full->Bytes() / 2);

  const std::vector<int32_t> prompt = Tokens(29, 8, f.config.vocab_size);
  const std::vector<int32_t> extra = Tokens(3, 9, f.config.vocab_size);
  auto want = Model(f, Numerics::kGgml);
  auto got = Model(f, Numerics::kGgml, 2, {.blocks_only = true});
  EXPECT_TRUE(BitwiseEqual(Logits(*got, prompt, extra, 64), Logits(*want, prompt, extra, 64)));

  for (Numerics other : {Numerics::kExact, Numerics::kBf16}) {
    LlamaModelOptions o;
    o.numerics = other;
    auto refused = LlamaModel::Create(std::make_shared<const LlamaWeights>(*lean), o);
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  }
  // A head-only last stage keeps no fp32 lm_head either, and still answers.
  auto last = LoadLlamaWeights(*f.file, f.config,
                               {.layer_begin = 1, .load_embedding = false, .blocks_only = true});
  ASSERT_TRUE(last.ok()) << last.status();
  EXPECT_EQ(last->embedding, nullptr);
  EXPECT_EQ(last->lm_head, nullptr);
  EXPECT_NE(last->lm_head_q, nullptr);
}

// A preempted request's recompute runs the tokens it had generated as one multi-token step with
// replayed_decodes (model/llama_model.h). On llama.cpp's path (kGgml) the logits of every row and
// the cache left behind equal the decode steps' bit for bit, on a uniform cache and on one
// compacted per KV head (AttendRagged). The other numerics' GEMMs (OpenBLAS) sum by the row count
// too: there a replay is only close. (The control, the batched kernel's other order, is on the
// real model below: these random weights' sums happen to round alike.)
TEST_P(GgmlNumericsTest, ReplayedDecodesReproduceTheDecodeStepsBitForBit) {
  Fixture f = Synthetic(GetParam(), /*hidden=*/256);
  ASSERT_EQ(f.config.head_dim, 64);
  const std::vector<int32_t> prompt = Tokens(37, 10, f.config.vocab_size);
  const std::vector<int32_t> extra = Tokens(9, 11, f.config.vocab_size);  // the last one decodes
  const int64_t T = prompt.size(), G = extra.size() - 1, vocab = f.config.vocab_size;
  for (Numerics numerics : {Numerics::kGgml, Numerics::kExact}) {
    for (bool per_head : {false, true}) {
      SCOPED_TRACE(::testing::Message() << (numerics == Numerics::kGgml ? "ggml" : "exact")
                                        << (per_head ? ", compacted per KV head" : ", uniform"));
      auto m = Model(f, numerics, 2);
      // The prompt prefilled, then (per_head) its KV heads compacted to different counts.
      auto start = [&]() {
        std::unique_ptr<KvCache> cache = m->NewCache();
        BatchStep step;
        step.sequences.push_back({cache.get(), T, 0, false});
        EXPECT_TRUE(m->Forward(prompt, step).ok());
        for (int l = 0; per_head && l < f.config.n_layers; ++l) {
          std::vector<std::vector<int32_t>> kept(f.config.n_kv_heads);
          for (int g = 0; g < f.config.n_kv_heads; ++g) {
            for (int32_t t = 0; t < T; t += 2 + g) kept[g].push_back(t);
          }
          EXPECT_TRUE(cache->Compact(l, kept).ok());
        }
        EXPECT_EQ(cache->uniform(0), !per_head);
        return cache;
      };
      // One step of `n` tokens at `pos`, the last `replayed` of them replayed: every row's logits.
      auto step = [&](KvCache& cache, int64_t pos, int64_t n, int64_t replayed) {
        BatchStep b;
        b.sequences.push_back({&cache, n, pos, false, replayed});
        auto logits = m->Forward(absl::MakeConstSpan(extra).subspan(pos - T, n), b, true);
        EXPECT_TRUE(logits.ok()) << logits.status();
        return logits.ok() ? *logits : std::vector<float>{};
      };
      std::unique_ptr<KvCache> decoded = start();
      std::vector<float> decodes;
      for (int64_t i = 0; i <= G; ++i) {
        const std::vector<float> one = step(*decoded, T + i, 1, 0);
        decodes.insert(decodes.end(), one.begin(), one.end());
      }
      const std::vector<float> want_rows(decodes.begin(), decodes.begin() + G * vocab);
      const std::vector<float> want_next(decodes.begin() + G * vocab, decodes.end());
      // All G replayed in one step, then the next token decoded over the cache they left; and
      // the G split over two steps.
      std::unique_ptr<KvCache> replayed = start(), split = start();
      const std::vector<float> rows = step(*replayed, T, G, G);
      const std::vector<float> next = step(*replayed, T + G, 1, 0);
      std::vector<float> split_rows = step(*split, T, 3, 3);
      const std::vector<float> rest = step(*split, T + 3, G - 3, G - 3);
      split_rows.insert(split_rows.end(), rest.begin(), rest.end());
      if (numerics == Numerics::kGgml) {
        EXPECT_TRUE(BitwiseEqual(rows, want_rows));
        EXPECT_TRUE(BitwiseEqual(next, want_next));
        EXPECT_TRUE(BitwiseEqual(split_rows, want_rows));
      } else {
        const float range = Range(want_rows);
        EXPECT_LT(MaxDiff(rows, want_rows), 1e-4f * range);
        EXPECT_LT(MaxDiff(next, want_next), 1e-4f * range);
      }
    }
  }
  // Out of range: refused, the cache unchanged.
  auto m = Model(f, Numerics::kGgml);
  std::unique_ptr<KvCache> cache = m->NewCache();
  for (int64_t bad : {int64_t{-1}, int64_t{3}}) {
    BatchStep b;
    b.sequences.push_back({cache.get(), 2, 0, false, bad});
    EXPECT_EQ(m->Forward(std::vector<int32_t>{5, 6}, b).status().code(),
              absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(cache->length(0), 0);
  }
}

// On SmolLM2 itself (the e2e preemption test's model): the G generated tokens run as one batched
// step give other logits than their decode steps (by far more than a greedy near-tie needs);
// replayed, the same bits.
TEST(GgmlReplayRealModelTest, ReplayedDecodesMatchWhereTheBatchedKernelDoesNot) {
  const char* path = std::getenv("XKV_MODEL");
  if (path == nullptr || !std::filesystem::exists(path)) GTEST_SKIP() << "XKV_MODEL not set";
  auto file = GgufFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  auto config = ReadModelConfig(**file);
  ASSERT_TRUE(config.ok()) << config.status();
  Fixture f{std::move(*file), *config};
  auto m = Model(f, Numerics::kGgml, 2, {.blocks_only = true});
  const std::vector<int32_t> tokens = Tokens(60, 12, 1000);
  const int64_t T = 30, G = 30;
  const std::vector<int32_t> prompt(tokens.begin(), tokens.begin() + T);
  const std::vector<int32_t> extra(tokens.begin() + T, tokens.end());
  const std::vector<float> decodes = Logits(*m, prompt, extra, 64);  // prefill's last, then G
  const std::vector<float> want(decodes.begin() + f.config.vocab_size, decodes.end());
  for (int64_t replayed : {int64_t{0}, G}) {
    std::unique_ptr<KvCache> cache = m->NewCache();
    BatchStep p, b;
    p.sequences.push_back({cache.get(), T, 0, false});
    ASSERT_TRUE(m->Forward(prompt, p).ok());
    b.sequences.push_back({cache.get(), G, T, false, replayed});
    auto rows = m->Forward(extra, b, /*all_rows=*/true);
    ASSERT_TRUE(rows.ok()) << rows.status();
    EXPECT_EQ(BitwiseEqual(*rows, want), replayed == G) << "replayed " << replayed;
  }
}

INSTANTIATE_TEST_SUITE_P(WeightTypes, GgmlNumericsTest,
                         ::testing::Values(GgmlType::kQ4_1, GgmlType::kQ8_0), [](const auto& info) {
                           return info.param == GgmlType::kQ4_1 ? "Q4_1" : "Q8_0";
                         });

}  // namespace
}  // namespace xkv
