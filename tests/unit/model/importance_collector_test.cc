// XKV scores as a pipeline stage collects them (architecture.md §3.1): the CPU engine's observed
// prefill, whole or in chunks whose final chunk holds the window, gives the scores of an
// independent fp64 reference; the collector refuses a chunk without the whole window.
#include "model/importance_collector.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <tuple>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/cpu_stage_engine.h"
#include "tests/unit/model/llama_test_util.h"
#include "tests/unit/model/xkv_test_util.h"

namespace xkv {
namespace {

using ::testing::HasSubstr;
using ::xkv::testing::MaxDiff;
using ::xkv::testing::ObservedPrefill;
using ::xkv::testing::RandomTokens;
using ::xkv::testing::RandomWeights;
using ::xkv::testing::TinyConfig;

constexpr int kWindow = 8;

// Independent fp64 reference of architecture.md §3.1 for one layer: q [w, H, d], k [Hkv][T][d];
// returns [Hkv, P] (query heads summed into their KV head, 'same' pooling, count_include_pad).
std::vector<double> ReferenceScores(const std::vector<float>& q, const std::vector<float>& k, int H,
                                    int Hkv, int d, int64_t T, int w, int pool) {
  const int64_t P = T - w;
  std::vector<double> raw(Hkv * P, 0.0), out(Hkv * P, 0.0);
  for (int h = 0; h < H; ++h) {
    const int g = h / (H / Hkv);
    for (int i = 0; i < w; ++i) {
      std::vector<double> e(P + i + 1);
      double mx = -1e300, sum = 0;
      for (int64_t j = 0; j <= P + i; ++j) {
        double dot = 0;
        for (int c = 0; c < d; ++c) dot += double(q[(i * H + h) * d + c]) * k[(g * T + j) * d + c];
        e[j] = dot / std::sqrt(double(d));
        mx = std::max(mx, e[j]);
      }
      for (double& x : e) sum += (x = std::exp(x - mx));
      for (int64_t j = 0; j < P; ++j) raw[g * P + j] += e[j] / sum;
    }
  }
  for (int g = 0; g < Hkv; ++g) {
    for (int64_t j = 0; j < P; ++j) {
      for (int64_t t = j - pool / 2; t <= j + pool / 2; ++t) {
        if (t >= 0 && t < P) out[g * P + j] += raw[g * P + t] / pool;
      }
    }
  }
  return out;
}

class ImportanceCollectorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    weights_ = RandomWeights(TinyConfig(), 21);
    auto model = LlamaModel::Create(weights_, {.num_threads = 2});
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::move(*model);
    auto engine = CpuStageEngine::Create(weights_, {.num_threads = 2});
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = std::move(*engine);
  }
  const ModelConfig& config() const { return weights_->config; }

  std::shared_ptr<LlamaWeights> weights_;
  std::unique_ptr<LlamaModel> model_;
  std::unique_ptr<CpuStageEngine> engine_;
};

// The engine's scores equal an fp64 reference computed from the Q/K an observer captured on an
// independent prefill of the model (chunked so that its last chunk is exactly the window); also
// through a chunked prefill of the engine (strided cache keys). Tolerance 2e-5 absolute on scores
// of O(0.1-1).
TEST_F(ImportanceCollectorTest, EngineScoresMatchAnIndependentReference) {
  const ModelConfig& c = config();
  uint64_t id = 0;
  for (int64_t chunk : {int64_t{0}, int64_t{12}}) {
    for (int T : {40, 29}) {
      const std::vector<int32_t> p = RandomTokens(T, c.vocab_size, 100 + T);
      const int64_t P = T - kWindow;
      auto got = ObservedPrefill(*engine_, id++, p, {}, chunk);
      ASSERT_TRUE(got.ok()) << got.status();
      EXPECT_EQ(got->prefix_len(), P);
      ASSERT_TRUE(got->complete());
      auto cache = model_->NewCache();
      std::vector<std::vector<float>> q(c.n_layers), k(c.n_layers);
      BatchStep head, tail;
      head.sequences.push_back({cache.get(), P, 0, false});
      tail.sequences.push_back({cache.get(), kWindow, P, true});
      tail.observer = [&](const LayerObservation& o) {
        q[o.layer].assign(o.q, o.q + o.n_new * o.n_heads * o.head_dim);
        for (int g = 0; g < o.n_kv_heads; ++g) {
          k[o.layer].insert(k[o.layer].end(), o.k + g * o.k_head_stride,
                            o.k + g * o.k_head_stride + o.k_len * o.head_dim);
        }
        return absl::OkStatus();
      };
      ASSERT_TRUE(model_->Forward({p.data(), size_t(P)}, head).ok());
      ASSERT_TRUE(model_->Forward({p.data() + P, size_t(kWindow)}, tail).ok());
      for (int l = 0; l < c.n_layers; ++l) {
        const std::vector<double> want =
            ReferenceScores(q[l], k[l], c.n_heads, c.n_kv_heads, c.head_dim, T, kWindow, 7);
        ASSERT_EQ(got->layer(l).size(), want.size());
        EXPECT_LT(MaxDiff(got->layer(l).data(), want.data(), want.size()), 2e-5)
            << "T " << T << " layer " << l << " chunk " << chunk;
        EXPECT_GT(*std::max_element(want.begin(), want.end()), 0.05);  // non-trivial data
      }
    }
  }
}

// Sequences of one step keep their own scoring (EngineSequenceStep::scoring: each request's
// policy's, as the service sends it): in one step, a sequence scored as the default xkv (maxima,
// max pooling over 31) and one with the step's (SnapKV's sums, average pooling over 7) each get
// the scores of an observed prefill of its own with that scoring, and the two differ.
TEST_F(ImportanceCollectorTest, SequencesOfOneStepKeepTheirOwnScoring) {
  const ModelConfig& c = config();
  ImportanceOptions xkv;
  xkv.reduce = ScoreReduce::kMax;
  xkv.pool = ScorePool::kMax;
  xkv.pool_kernel = 31;
  const ImportanceOptions snapkv;  // the step's
  const std::vector<int32_t> a = RandomTokens(40, c.vocab_size, 7);
  const std::vector<int32_t> b = RandomTokens(33, c.vocab_size, 8);
  EngineStep step;
  step.sequences.push_back({1, 40, 0, true});
  step.sequences.back().scoring = xkv;
  step.sequences.push_back({2, 33, 0, true});
  std::vector<int32_t> tokens = a;
  tokens.insert(tokens.end(), b.begin(), b.end());
  std::vector<EngineObservation> obs;
  ASSERT_TRUE(::xkv::testing::RunStep(*engine_, step, tokens, snapkv, &obs).ok());
  ASSERT_EQ(obs.size(), 2u);
  for (const auto& [got, prompt, scoring] :
       {std::tuple(&obs[0], &a, xkv), std::tuple(&obs[1], &b, snapkv)}) {
    ASSERT_TRUE(got->scores.has_value());
    auto alone = ObservedPrefill(*engine_, 10 + prompt->size(), *prompt, scoring);
    ASSERT_TRUE(alone.ok()) << alone.status();
    for (int l = 0; l < c.n_layers; ++l) {
      const std::vector<float>& g = got->scores->layer(l);
      const std::vector<double> want(alone->layer(l).begin(), alone->layer(l).end());
      ASSERT_EQ(g.size(), want.size());
      EXPECT_LT(MaxDiff(g.data(), want.data(), want.size()), 1e-6) << "layer " << l;
    }
  }
  auto a_as_snapkv = ObservedPrefill(*engine_, 20, a, snapkv);
  ASSERT_TRUE(a_as_snapkv.ok());
  EXPECT_NE(obs[0].scores->layer(0), a_as_snapkv->layer(0));
}

// The collector refuses a final chunk shorter than the window and a non-final chunk.
TEST_F(ImportanceCollectorTest, RejectsChunksWithoutTheWholeWindow) {
  const std::vector<int32_t> prompt = RandomTokens(30, config().vocab_size, 100);
  ImportanceCollector collector(config(), 0, config().n_layers, {});
  ASSERT_TRUE(collector.Expect(0, 30).ok());
  auto cache = model_->NewCache();
  BatchStep a, b;
  a.sequences.push_back({cache.get(), 26, 0, true});  // keys end at 26 != 30
  a.observer = collector.ObserverFor({0});
  auto st = model_->Forward({prompt.data(), 26}, a).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(st.message(), HasSubstr("final chunk"));
  auto cache2 = model_->NewCache();
  BatchStep head;
  head.sequences.push_back({cache2.get(), 26, 0, false});
  ASSERT_TRUE(model_->Forward({prompt.data(), 26}, head).ok());
  b.sequences.push_back({cache2.get(), 4, 26, true});  // the final chunk has 4 < w tokens
  b.observer = collector.ObserverFor({0});
  st = model_->Forward({prompt.data() + 26, 4}, b).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(st.message(), HasSubstr("at least w tokens"));
}

}  // namespace
}  // namespace xkv
