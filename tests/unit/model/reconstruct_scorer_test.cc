#include "model/reconstruct_scorer.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <random>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "model/cpu_stage_engine.h"
#include "model/llama_model.h"
#include "tests/unit/model/llama_test_util.h"

namespace xkv {
namespace {

using testing::RandomWeights;
using testing::TinyConfig;

std::vector<int32_t> Tokens(int n, int vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> t(n);
  for (int32_t& x : t) x = static_cast<int32_t>(rng() % vocab);
  return t;
}

class ReconstructScorerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    weights_ = RandomWeights(TinyConfig(), 5);
    auto model = LlamaModel::Create(weights_, {.num_threads = 2});
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::move(*model);
    auto engine = CpuStageEngine::Create(weights_, {.num_threads = 2});
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = std::move(*engine);
    repeat_ = {{3, 4, 5}, {6, 7}, {8, 9}};
  }
  const ModelConfig& config() const { return weights_->config; }

  // Prefills `prompt` as the engine's sequence `id`; returns a copy of its cache.
  std::unique_ptr<KvCache> Prefill(uint64_t id, const std::vector<int32_t>& prompt) {
    EngineStep step;
    step.sequences.push_back({id, static_cast<int64_t>(prompt.size()), 0, false});
    EXPECT_TRUE(engine_->EmbedResident(prompt).ok());
    EXPECT_TRUE(engine_->RunLayersResident(step, {}, nullptr).ok());
    return engine_->CacheCopy(id);
  }

  // The naive reference: every chunk's re-reading input is prefilled FOR REAL (KV written) on a
  // copy of the prompt's cache; an observer copies each layer's queries and keys, and the scores
  // are computed densely in double with an explicit mask (sinks, the chunk, causal input keys).
  std::vector<std::vector<double>> Naive(const std::vector<int32_t>& prompt, const KvCache& cache,
                                         const ReconstructOptions& o) {
    const ModelConfig& c = config();
    const int64_t T = prompt.size(), d = c.head_dim;
    const int group = c.n_heads / c.n_kv_heads;
    std::vector<std::vector<double>> out(c.n_layers, std::vector<double>(c.n_kv_heads * T, 0.0));
    for (auto& l : out) {
      for (int g = 0; g < c.n_kv_heads; ++g) {
        for (int64_t j = 0; j < std::min<int64_t>(o.sinks, T); ++j) l[g * T + j] = 1.0;
      }
    }
    for (int64_t b = 0; b < T; b += o.chunk_tokens) {
      const int64_t e = std::min(T, b + o.chunk_tokens);
      std::vector<int32_t> in = b == 0 ? repeat_.first : repeat_.next;
      for (int64_t j = std::max<int64_t>(0, b - o.overlap); j < b; ++j) in.push_back(prompt[j]);
      in.insert(in.end(), repeat_.suffix.begin(), repeat_.suffix.end());
      in.insert(in.end(), prompt.begin() + b, prompt.begin() + e);
      const int64_t R = in.size();
      KvCache copy = cache;
      BatchStep step;
      step.sequences.push_back({&copy, R, T, true});
      step.observer = [&](const LayerObservation& obs) -> absl::Status {
        for (int h = 0; h < c.n_heads; ++h) {
          const int g = h / group;
          const float* kh = obs.k + g * obs.k_head_stride;
          for (int64_t i = 0; i < R; ++i) {
            std::vector<double> logit(T + R, -1e300);
            double mx = -1e300, sum = 0.0;
            for (int64_t j = 0; j < T + R; ++j) {
              const bool allowed =
                  (j < o.sinks && j < b) || (j >= b && j < e) || (j >= T && j <= T + i);
              if (!allowed) continue;
              double dot = 0.0;
              for (int64_t x = 0; x < d; ++x)
                dot += double(obs.q[(i * c.n_heads + h) * d + x]) * kh[j * d + x];
              logit[j] = dot / std::sqrt(double(d));
              mx = std::max(mx, logit[j]);
            }
            for (int64_t j = 0; j < T + R; ++j)
              sum += logit[j] > -1e299 ? std::exp(logit[j] - mx) : 0.0;
            for (int64_t j = b; j < e; ++j) {
              double& dst = out[obs.layer][g * T + j];
              dst = std::max(dst, std::exp(logit[j] - mx) / sum);
            }
          }
        }
        return absl::OkStatus();
      };
      EXPECT_TRUE(model_->Forward(in, step).ok());
    }
    return out;
  }

  std::shared_ptr<LlamaWeights> weights_;
  std::unique_ptr<LlamaModel> model_;
  std::unique_ptr<CpuStageEngine> engine_;
  RepeatPrompt repeat_;
};

TEST_F(ReconstructScorerTest, MatchesNaiveDenseScoresInOneOrSeveralChunks) {
  const std::vector<int32_t> prompt = Tokens(37, config().vocab_size, 1);
  auto cache = Prefill(1, prompt);
  for (int64_t chunk : {int64_t{64}, int64_t{16}, int64_t{10}}) {
    ReconstructOptions o;
    o.chunk_tokens = chunk;
    o.overlap = 3;
    auto got = ScoreByReconstruction(engine_.get(), 1, prompt, repeat_, o);
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_EQ(got->prompt_len, 37);
    const auto want = Naive(prompt, *cache, o);
    for (int l = 0; l < config().n_layers; ++l) {
      ASSERT_EQ(got->layers[l].size(), want[l].size());
      for (size_t j = 0; j < want[l].size(); ++j) {
        EXPECT_NEAR(got->layers[l][j], want[l][j], 1e-4)
            << "chunk " << chunk << " layer " << l << " index " << j;
      }
    }
    for (int l = 0; l < config().n_layers; ++l) EXPECT_EQ(engine_->CacheLength(1, l), 37);
  }
}

TEST_F(ReconstructScorerTest, RejectsACacheThatIsNotThePrompt) {
  const std::vector<int32_t> prompt = Tokens(20, config().vocab_size, 2);
  Prefill(1, prompt);
  const std::vector<int32_t> longer = Tokens(21, config().vocab_size, 2);
  auto s = ScoreByReconstruction(engine_.get(), 1, longer, repeat_, {});
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  ReconstructOptions too_long;
  too_long.chunk_tokens = 0;
  EXPECT_EQ(ScoreByReconstruction(engine_.get(), 1, prompt, repeat_, too_long).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ScoreByReconstruction(engine_.get(), 2, prompt, repeat_, {}).status().code(),
            absl::StatusCode::kNotFound);
}

// One rule for every entry point's chunk: 0 (no flag) is the device's default, any other value
// is checked against [kMinRereadChunk, kMaxRereadChunk] whatever the device; the shrink to one
// step keeps whatever fits after the longer instruction (next + overlap here) and the suffix.
TEST(RereadChunkTest, DefaultPerDeviceAndOneRange) {
  EXPECT_EQ(DefaultRereadChunk(/*gpu=*/true), 2048);
  EXPECT_EQ(DefaultRereadChunk(/*gpu=*/false), 512);
  EXPECT_EQ(ReconstructOptions{}.chunk_tokens, DefaultRereadChunk(false));
  for (bool gpu : {false, true}) {
    EXPECT_EQ(*RereadChunkFromFlag(0, gpu, "--reconstruct-chunk"), DefaultRereadChunk(gpu));
    EXPECT_EQ(*RereadChunkFromFlag(kMinRereadChunk, gpu, "--c"), kMinRereadChunk);
    EXPECT_EQ(*RereadChunkFromFlag(kMaxRereadChunk, gpu, "--c"), kMaxRereadChunk);
    for (int64_t bad : {int64_t{-1}, kMinRereadChunk - 1, kMaxRereadChunk + 1}) {
      auto r = RereadChunkFromFlag(bad, gpu, "--reconstruct-chunk");
      EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << bad;
      EXPECT_EQ(r.status().message(),
                absl::StrCat("--reconstruct-chunk ", bad, " is out of range [64, 8192]"));
    }
  }
  const RepeatPrompt repeat{{3, 4, 5}, {6, 7}, {8, 9}};  // overhead max(3, 2 + 8) + 2 = 12
  ReconstructOptions o;
  o.chunk_tokens = 2048;
  EXPECT_EQ(RereadChunkTokens(repeat, o, 512), 500);
  EXPECT_EQ(RereadChunkTokens(repeat, o, 4096), 2048);
}

TEST_F(ReconstructScorerTest, CollectedScoresKeepTheQuestionAndPool) {
  ReconstructScores raw;
  raw.layer_begin = 0;
  raw.n_kv_heads = config().n_kv_heads;
  raw.prompt_len = 6;
  for (int l = 0; l < config().n_layers; ++l) {
    std::vector<float> r(config().n_kv_heads * 6);
    for (size_t j = 0; j < r.size(); ++j) r[j] = 0.01f * j;
    raw.layers.push_back(r);
  }
  ImportanceOptions scoring;
  scoring.window = 2;
  scoring.pool_kernel = 1;
  // A 10-token prompt (6 re-read + a 4-token question): prefix 8, question tokens 6, 7 score 1.
  auto s = ReconstructCollectedScores(raw, 10, config(), scoring);
  ASSERT_TRUE(s.ok()) << s.status();
  ASSERT_EQ(s->prefix_len(), 8);
  EXPECT_TRUE(s->complete());
  const std::vector<float>& l0 = s->layer(0);
  EXPECT_FLOAT_EQ(l0[3], 0.03f);
  EXPECT_FLOAT_EQ(l0[6], 1.0f);
  EXPECT_FLOAT_EQ(l0[8 + 1], 0.07f);  // head 1, position 1
  // The agnostic prompt itself (6 tokens): prefix 4, max pooling over 3.
  scoring.pool_kernel = 3;
  scoring.pool = ScorePool::kMax;
  s = ReconstructCollectedScores(raw, 6, config(), scoring);
  ASSERT_TRUE(s.ok());
  EXPECT_FLOAT_EQ(s->layer(1)[0], 0.01f);
  EXPECT_FLOAT_EQ(s->layer(1)[3], 0.03f);  // max over positions 2..3 (the prefix ends at 4)
  EXPECT_EQ(ReconstructCollectedScores(raw, 5, config(), scoring).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(MaxMergeScoresTest, TakesTheElementwiseMaximumOfTheSameShape) {
  const ModelConfig c = TinyConfig();
  ImportanceOptions o;
  o.window = 2;
  CollectedScores a = MakeCollectedScores(c, 0, c.n_layers, 5, o);  // prefix 3
  CollectedScores b = a;
  for (int l = 0; l < c.n_layers; ++l) {
    a.layers[l] = {0.1f, 0.9f, 0.2f, 0.5f, 0.0f, 0.3f};
    b.layers[l] = {0.4f, 0.1f, 0.2f, 0.6f, 0.7f, 0.0f};
  }
  ASSERT_TRUE(MaxMergeScores(b, &a).ok());
  for (int l = 0; l < c.n_layers; ++l) {
    EXPECT_EQ(a.layer(l), (std::vector<float>{0.4f, 0.9f, 0.2f, 0.6f, 0.7f, 0.3f}));
  }
  const CollectedScores longer = MakeCollectedScores(c, 0, c.n_layers, 6, o);
  EXPECT_EQ(MaxMergeScores(longer, &a).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace xkv
