#include "model/kv_compressor.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <set>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/unit/model/llama_test_util.h"

namespace xkv {
namespace {

using ::testing::HasSubstr;
using ::xkv::testing::NaiveForward;
using ::xkv::testing::RandomWeights;
using ::xkv::testing::TinyConfig;

constexpr int kWindow = 8;

std::vector<int32_t> RandomTokens(int n, int vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> t(n);
  for (int32_t& x : t) x = static_cast<int32_t>(rng() % vocab);
  return t;
}

double MaxDiff(const float* a, const double* b, int64_t n) {
  double m = 0;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::abs(double(a[i]) - b[i]));
  return m;
}

// Rows [0, length) of every head of one layer, contiguous: fp32 [heads][length][d] (K then V).
std::vector<float> LayerRows(const KvCache& c, int layer) {
  std::vector<float> out;
  const int64_t d = c.head_dim(), len = c.length(layer), stride = c.head_stride(layer);
  for (const float* base : {c.k(layer), c.v(layer)}) {
    for (int h = 0; h < c.n_kv_heads(); ++h) {
      out.insert(out.end(), base + h * stride, base + h * stride + len * d);
    }
  }
  return out;
}

void ExpectSameCache(const KvCache& a, const KvCache& b) {
  ASSERT_EQ(a.layer_end(), b.layer_end());
  for (int l = a.layer_begin(); l < a.layer_end(); ++l) {
    ASSERT_EQ(a.length(l), b.length(l)) << "layer " << l;
    EXPECT_EQ(LayerRows(a, l), LayerRows(b, l)) << "layer " << l;  // bitwise
  }
}

// Independent fp64 reference of DESIGN.md §3.1 for one layer: q [w, H, d], k [Hkv][T][d];
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

// Per head (xkv): the first min(sinks, b) prefix positions, then the top b - sinks of the rest by
// (score desc, index asc) by a full sort, ascending, then the window slots.
std::vector<int32_t> ReferenceKept(const std::vector<float>& scores, int head, int64_t P, int64_t T,
                                   int64_t b, int64_t sinks = 4) {
  sinks = std::min(sinks, b);
  std::vector<int32_t> idx(P);
  std::iota(idx.begin(), idx.end(), 0);
  const float* row = scores.data() + head * P;
  std::sort(idx.begin() + sinks, idx.end(),
            [&](int32_t a, int32_t c) { return row[a] != row[c] ? row[a] > row[c] : a < c; });
  idx.resize(b);
  std::sort(idx.begin(), idx.end());
  for (int64_t j = P; j < T; ++j) idx.push_back(static_cast<int32_t>(j));
  return idx;
}

class KvCompressorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    weights_ = RandomWeights(TinyConfig(), 21);
    auto model = LlamaModel::Create(weights_, {.num_threads = 2});
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::move(*model);
  }
  const ModelConfig& config() const { return weights_->config; }
  int64_t Bpt() const { return config().KvBytesPerTokenPerLayer(sizeof(float)); }

  // Fresh prompts of the given lengths and caches.
  void MakePrompts(const std::vector<int>& lens, uint64_t seed = 100) {
    prompts_.clear();
    for (size_t i = 0; i < lens.size(); ++i) {
      prompts_.push_back(RandomTokens(lens[i], config().vocab_size, seed + i));
    }
  }
  std::vector<PrefillRequest> Requests(std::vector<std::unique_ptr<KvCache>>& caches,
                                       uint64_t first_id = 0) {
    std::vector<PrefillRequest> r;
    caches.clear();
    for (size_t i = 0; i < prompts_.size(); ++i) {
      caches.push_back(model_->NewCache());
      r.push_back({prompts_[i], caches.back().get(), first_id + i});
    }
    return r;
  }
  std::vector<CompressedPrefill> Compress(const KvCompressorOptions& o,
                                          std::vector<std::unique_ptr<KvCache>>& caches,
                                          uint64_t first_id = 0) {
    auto c = KvCompressor::Create(o);
    EXPECT_TRUE(c.ok()) << c.status();
    if (!c.ok()) return {};
    return Run(**c, caches, first_id);
  }
  std::vector<CompressedPrefill> Run(KvCompressor& c, std::vector<std::unique_ptr<KvCache>>& caches,
                                     uint64_t first_id = 0) {
    const std::vector<PrefillRequest> req = Requests(caches, first_id);
    auto r = c.Prefill(*model_, req);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? std::move(*r) : std::vector<CompressedPrefill>();
  }
  static KvCompressorOptions Options(PolicyKind kind, KvTarget target,
                                     ProfileModeKind mode = ProfileModeKind::kOnePass) {
    KvCompressorOptions o;
    o.kv.policy = kind;
    o.kv.target = target;
    o.kv.profile.kind = mode;
    o.keep_scores = true;
    return o;
  }

  std::shared_ptr<LlamaWeights> weights_;
  std::unique_ptr<LlamaModel> model_;
  std::vector<std::vector<int32_t>> prompts_;
};

// (a) The collector's scores equal an fp64 reference computed from the Q/K an observer captured
// on an independent prefill (chunked so that the last chunk is exactly the window). Also through
// chunked prefill (strided cache keys). Tolerance 2e-5 absolute on scores of O(0.1-1).
TEST_F(KvCompressorTest, CollectorScoresMatchIndependentReference) {
  const ModelConfig& c = config();
  MakePrompts({40, 29});
  for (int64_t chunk : {int64_t{0}, int64_t{12}}) {
    std::vector<std::unique_ptr<KvCache>> caches;
    const std::vector<PrefillRequest> req = Requests(caches);
    auto got = PrefillWithScores(*model_, req, {}, chunk);
    ASSERT_TRUE(got.ok()) << got.status();
    for (size_t r = 0; r < prompts_.size(); ++r) {
      const int64_t T = prompts_[r].size(), P = T - kWindow;
      const ScoredPrefill& sp = (*got)[r];
      EXPECT_EQ(sp.scores.prefix_len(), P);
      ASSERT_TRUE(sp.scores.complete());
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
      const std::vector<int32_t>& p = prompts_[r];
      ASSERT_TRUE(model_->Forward({p.data(), size_t(P)}, head).ok());
      ASSERT_TRUE(model_->Forward({p.data() + P, size_t(kWindow)}, tail).ok());
      for (int l = 0; l < c.n_layers; ++l) {
        const std::vector<double> want =
            ReferenceScores(q[l], k[l], c.n_heads, c.n_kv_heads, c.head_dim, T, kWindow, 7);
        ASSERT_EQ(sp.scores.layer(l).size(), want.size());
        EXPECT_LT(MaxDiff(sp.scores.layer(l).data(), want.data(), want.size()), 2e-5)
            << "request " << r << " layer " << l << " chunk " << chunk;
        EXPECT_GT(*std::max_element(want.begin(), want.end()), 0.05);  // non-trivial data
      }
    }
  }
}

// The collector refuses a final chunk shorter than the window and a non-final chunk.
TEST_F(KvCompressorTest, CollectorRejectsChunksWithoutTheWholeWindow) {
  MakePrompts({30});
  ImportanceCollector collector(config(), 0, config().n_layers, {});
  ASSERT_TRUE(collector.Expect(0, 30).ok());
  auto cache = model_->NewCache();
  BatchStep a, b;
  a.sequences.push_back({cache.get(), 26, 0, true});  // keys end at 26 != 30
  a.observer = collector.ObserverFor({0});
  auto st = model_->Forward({prompts_[0].data(), 26}, a).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(st.message(), HasSubstr("final chunk"));
  auto cache2 = model_->NewCache();
  BatchStep head;
  head.sequences.push_back({cache2.get(), 26, 0, false});
  ASSERT_TRUE(model_->Forward({prompts_[0].data(), 26}, head).ok());
  b.sequences.push_back({cache2.get(), 4, 26, true});  // the final chunk has 4 < w tokens
  b.observer = collector.ObserverFor({0});
  st = model_->Forward({prompts_[0].data() + 26, 4}, b).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(st.message(), HasSubstr("at least w tokens"));
}

TEST(PrefillChunkStartsTest, LastChunkHoldsTheWindow) {
  EXPECT_EQ(PrefillChunkStarts(40, 0, 8), (std::vector<int64_t>{0}));
  EXPECT_EQ(PrefillChunkStarts(40, 16, 8), (std::vector<int64_t>{0, 16, 32}));
  EXPECT_EQ(PrefillChunkStarts(50, 16, 8), (std::vector<int64_t>{0, 16, 32, 42}));
  EXPECT_EQ(PrefillChunkStarts(20, 10, 8), (std::vector<int64_t>{0, 10}));
  EXPECT_EQ(PrefillChunkStarts(12, 10, 8), (std::vector<int64_t>{0, 4}));
  EXPECT_EQ(PrefillChunkStarts(5, 8, 8), (std::vector<int64_t>{0}));
}

// (b) per_request (mini-prefill + in-flight compaction) and one_pass (compact after) give
// identical scores, kept slots, caches and logits (bitwise), for a batch of different lengths.
TEST_F(KvCompressorTest, PerRequestAndOnePassAreIdentical) {
  MakePrompts({40, 29, 57});
  std::vector<std::unique_ptr<KvCache>> ca, cb;
  const auto target = KvTarget::Tokens(30);
  const auto a = Compress(Options(PolicyKind::kXkv, target, ProfileModeKind::kPerRequest), ca);
  const auto b = Compress(Options(PolicyKind::kXkv, target, ProfileModeKind::kOnePass), cb);
  ASSERT_EQ(a.size(), 3u);
  ASSERT_EQ(b.size(), 3u);
  for (size_t r = 0; r < 3; ++r) {
    ASSERT_TRUE(a[r].scores && b[r].scores);
    EXPECT_EQ(a[r].scores->layers, b[r].scores->layers) << r;
    EXPECT_EQ(a[r].plan.budgets.budgets, b[r].plan.budgets.budgets) << r;
    EXPECT_EQ(a[r].plan.kept, b[r].plan.kept) << r;
    EXPECT_EQ(a[r].logits, b[r].logits) << r;
    ExpectSameCache(*ca[r], *cb[r]);
    EXPECT_TRUE(a[r].report.profiled && b[r].report.profiled);
    EXPECT_TRUE(a[r].report.compressed);
    EXPECT_EQ(a[r].next_position, static_cast<int64_t>(prompts_[r].size()));
  }
}

// (c) Each layer holds exactly b_l + w tokens per head, BytesHeld matches, the kept slots are the
// top-b_l by score (independent full sort), and the kept rows are the full prefill's rows.
TEST_F(KvCompressorTest, CompactionKeepsTopBudgetPlusWindow) {
  const ModelConfig& c = config();
  MakePrompts({40, 57});
  std::vector<std::unique_ptr<KvCache>> full_caches, caches;
  const std::vector<PrefillRequest> req = Requests(full_caches);
  const KvCompressorOptions o = Options(PolicyKind::kXkv, KvTarget::Tokens(45));
  auto full = PrefillWithScores(*model_, req, ScoringFor(o.kv, o.importance));
  ASSERT_TRUE(full.ok()) << full.status();
  const auto res = Compress(o, caches);
  ASSERT_EQ(res.size(), 2u);
  for (size_t r = 0; r < res.size(); ++r) {
    const int64_t T = prompts_[r].size(), P = T - kWindow;
    const AllocationReport& rep = res[r].report;
    EXPECT_EQ(rep.kept_prefix_total, 45);
    EXPECT_EQ(res[r].scores->layers, (*full)[r].scores.layers);  // same prefill, same scores
    std::set<int64_t> distinct;
    for (int l = 0; l < c.n_layers; ++l) {
      const int64_t b = rep.layers[l].kept_prefix;
      distinct.insert(b);
      EXPECT_EQ(caches[r]->length(l), b + kWindow);
      EXPECT_EQ(rep.layers[l].tokens_held, b + kWindow);
      EXPECT_EQ(caches[r]->BytesHeld(l), (b + kWindow) * Bpt());
      EXPECT_EQ(rep.layers[l].bytes_held, (b + kWindow) * Bpt());
      for (int h = 0; h < c.n_kv_heads; ++h) {
        const std::vector<int32_t> want = ReferenceKept(res[r].scores->layer(l), h, P, T, b);
        EXPECT_EQ(res[r].plan.kept[l][h], want) << "layer " << l << " head " << h;
        for (size_t i = 0; i < want.size(); ++i) {  // row i of the compact cache = slot want[i]
          const float* got = caches[r]->k(l) + h * caches[r]->head_stride(l) + i * c.head_dim;
          const float* src = full_caches[r]->k(l) + h * full_caches[r]->head_stride(l) +
                             int64_t{want[i]} * c.head_dim;
          ASSERT_EQ(std::memcmp(got, src, c.head_dim * sizeof(float)), 0);
        }
      }
    }
    EXPECT_EQ(rep.kv_bytes_held, caches[r]->BytesHeld());
    EXPECT_EQ(rep.kv_bytes_full, c.n_layers * T * Bpt());
    EXPECT_EQ(rep.kv_bytes_held, (45 + c.n_layers * kWindow) * Bpt());
    ASSERT_TRUE(rep.average_retention.has_value());
    EXPECT_GT(*rep.average_retention, 0.0);
    EXPECT_LT(*rep.average_retention, 1.0);
  }
}

// (d) Decoding after compaction equals the naive reference whose decode queries attend only to the
// kept prompt tokens of that layer and head (plus the decoded ones), at the true positions
// T + i. Batched decode of two requests. Tolerance 2e-4 on logits.
TEST_F(KvCompressorTest, DecodeAfterCompactionMatchesMaskedReference) {
  const ModelConfig& c = config();
  const int m = 4;
  MakePrompts({40, 33}, 300);
  std::vector<std::unique_ptr<KvCache>> caches;
  const auto res = Compress(
      Options(PolicyKind::kXkv, KvTarget::Tokens(36), ProfileModeKind::kPerRequest), caches);
  ASSERT_EQ(res.size(), 2u);
  std::vector<std::vector<int32_t>> gen = {RandomTokens(m, c.vocab_size, 7),
                                           RandomTokens(m, c.vocab_size, 8)};
  std::vector<std::vector<float>> got(2);
  for (int i = 0; i < m; ++i) {
    BatchStep step;
    for (int r = 0; r < 2; ++r) {
      step.sequences.push_back({caches[r].get(), 1, res[r].next_position + i, false});
    }
    auto logits = model_->Forward({gen[0][i], gen[1][i]}, step);
    ASSERT_TRUE(logits.ok()) << logits.status();
    for (int r = 0; r < 2; ++r) {
      got[r].insert(got[r].end(), logits->begin() + r * c.vocab_size,
                    logits->begin() + (r + 1) * c.vocab_size);
    }
  }
  for (int r = 0; r < 2; ++r) {
    const int64_t T = prompts_[r].size();
    std::vector<int32_t> all = prompts_[r];
    all.insert(all.end(), gen[r].begin(), gen[r].end());
    std::vector<int64_t> pos(T + m);
    std::iota(pos.begin(), pos.end(), 0);
    const auto& kept = res[r].plan.kept;
    auto mask = [&](int l, int g, int64_t q, int64_t k) {
      return q < T || k >= T || std::binary_search(kept[l][g].begin(), kept[l][g].end(), k);
    };
    const std::vector<double> want = NaiveForward(*weights_, all, pos, mask);
    const std::vector<double> unmasked = NaiveForward(*weights_, all, pos);
    const int64_t V = c.vocab_size;
    EXPECT_LT(MaxDiff(res[r].logits.data(), want.data() + (T - 1) * V, V), 2e-4);
    double effect = 0;  // eviction must change the decode logits, or this test proves nothing
    for (int i = 0; i < m; ++i) {
      EXPECT_LT(MaxDiff(got[r].data() + i * V, want.data() + (T + i) * V, V), 2e-4) << r << i;
      effect = std::max(effect, MaxDiff(got[r].data() + i * V, unmasked.data() + (T + i) * V, V));
    }
    EXPECT_GT(effect, 1e-3);
  }
}

// The classic bug, for contrast: decoding at the cache length instead of T + i diverges.
TEST_F(KvCompressorTest, DecodingAtCacheLengthIsWrong) {
  const ModelConfig& c = config();
  MakePrompts({40}, 300);
  std::vector<std::unique_ptr<KvCache>> right, wrong;
  const auto o = Options(PolicyKind::kXkv, KvTarget::Tokens(24));
  const auto a = Compress(o, right);
  Compress(o, wrong);
  ASSERT_EQ(a.size(), 1u);
  BatchStep s1, s2;
  s1.sequences.push_back({right[0].get(), 1, a[0].next_position, false});
  int64_t longest = 0;  // the largest layer: any smaller position is rejected by the model
  for (int l = 0; l < c.n_layers; ++l) longest = std::max(longest, wrong[0]->length(l));
  ASSERT_LT(longest, a[0].next_position);
  s2.sequences.push_back({wrong[0].get(), 1, longest, false});
  auto l1 = model_->Forward({5}, s1);
  auto l2 = model_->Forward({5}, s2);
  ASSERT_TRUE(l1.ok() && l2.ok());
  std::vector<double> d1(l1->begin(), l1->end());
  EXPECT_GT(MaxDiff(l2->data(), d1.data(), c.vocab_size), 1e-3);
}

// (e) Policy full is a plain prefill, bitwise; prompts with T <= w are kept whole for any policy.
TEST_F(KvCompressorTest, FullPolicyAndShortPromptsKeepEverything) {
  MakePrompts({40, 5, 8, 29});
  for (PolicyKind kind : {PolicyKind::kFull, PolicyKind::kXkv}) {
    std::vector<std::unique_ptr<KvCache>> caches, plain;
    const auto res = Compress(Options(kind, KvTarget::Tokens(20)), caches);
    ASSERT_EQ(res.size(), 4u);
    const std::vector<PrefillRequest> req = Requests(plain);
    BatchStep step;
    std::vector<int32_t> tokens;
    for (const PrefillRequest& r : req) {
      step.sequences.push_back({r.cache, static_cast<int64_t>(r.prompt.size()), 0, false});
      tokens.insert(tokens.end(), r.prompt.begin(), r.prompt.end());
    }
    auto logits = model_->Forward(tokens, step);
    ASSERT_TRUE(logits.ok());
    for (size_t r = 0; r < 4; ++r) {
      const int64_t T = prompts_[r].size();
      const bool whole = kind == PolicyKind::kFull || T <= kWindow;
      EXPECT_EQ(res[r].report.compressed, !whole) << r;
      if (!whole) continue;
      EXPECT_THAT(res[r].report.note, HasSubstr(T <= kWindow ? "window" : "policy full"));
      for (const LayerAllocation& a : res[r].report.layers) EXPECT_EQ(a.tokens_held, T);
      // An uncompressed cache holds exactly a full cache's bytes, whatever capacity it reserved
      // for the tokens still to come (the report once counted that capacity).
      EXPECT_EQ(res[r].report.kv_bytes_held, res[r].report.kv_bytes_full) << r;
      ASSERT_TRUE(caches[r]->Reserve(config().n_layers - 1, T + 64).ok());
      EXPECT_EQ(MakeReport(*caches[r], res[r].plan, config()).kv_bytes_held,
                res[r].report.kv_bytes_full)
          << r;
      if (kind == PolicyKind::kFull) {  // same batch as the plain prefill: bitwise
        const std::vector<float> want(logits->begin() + r * config().vocab_size,
                                      logits->begin() + (r + 1) * config().vocab_size);
        EXPECT_EQ(res[r].logits, want) << r;
        ExpectSameCache(*caches[r], *plain[r]);
      }
    }
  }
}

// (f) Tokens: the budgets sum to N for every policy. Bytes: sum_l bpt * b_l <= M (xkv: the
// largest such), held bytes = budgets + windows. Retention: met, and reported.
TEST_F(KvCompressorTest, BudgetTargetsAreMet) {
  const ModelConfig& c = config();
  MakePrompts({40, 57});
  for (PolicyKind kind :
       {PolicyKind::kXkv, PolicyKind::kSnapKv, PolicyKind::kPyramidKv, PolicyKind::kStreaming}) {
    std::vector<std::unique_ptr<KvCache>> caches;
    const auto res = Compress(Options(kind, KvTarget::Tokens(50)), caches);
    ASSERT_EQ(res.size(), 2u) << PolicyName(kind);
    for (size_t r = 0; r < 2; ++r) {
      EXPECT_EQ(res[r].report.kept_prefix_total, 50) << PolicyName(kind);
      for (int l = 0; l < c.n_layers; ++l) {
        EXPECT_EQ(caches[r]->length(l), res[r].report.layers[l].kept_prefix + kWindow);
      }
    }
  }
  const int64_t M = 37 * Bpt() + Bpt() / 2;
  for (PolicyKind kind : {PolicyKind::kXkv, PolicyKind::kSnapKv}) {
    std::vector<std::unique_ptr<KvCache>> caches;
    const auto res = Compress(Options(kind, KvTarget::Bytes(M)), caches);
    ASSERT_EQ(res.size(), 2u);
    for (size_t r = 0; r < 2; ++r) {
      EXPECT_LE(res[r].report.kept_prefix_total * Bpt(), M);
      EXPECT_EQ(res[r].report.kept_prefix_total, 37) << PolicyName(kind);
      EXPECT_EQ(res[r].report.kv_bytes_held, (37 + c.n_layers * kWindow) * Bpt());
    }
  }
  std::vector<std::unique_ptr<KvCache>> caches;
  const auto res = Compress(Options(PolicyKind::kXkv, KvTarget::Retention(0.9)), caches);
  ASSERT_EQ(res.size(), 2u);
  for (size_t r = 0; r < 2; ++r) {
    ASSERT_TRUE(res[r].report.average_retention.has_value());
    EXPECT_GE(*res[r].report.average_retention, 0.9 - 1e-9);
    EXPECT_TRUE(res[r].report.reachable);
    EXPECT_LT(res[r].report.kv_bytes_held, res[r].report.kv_bytes_full);
  }
}

// (g) Sampled mode: reproducible for a seed; the first batch is all profiled (no mean yet); later
// unprofiled requests get budgets from the running mean of b_l / P (checked by hand), and still
// keep their own top-scored tokens.
TEST_F(KvCompressorTest, SampledModeIsReproducibleAndUsesTheRunningMean) {
  const ModelConfig& c = config();
  KvCompressorOptions o = Options(PolicyKind::kXkv, KvTarget::Tokens(40));
  o.kv.profile = {ProfileModeKind::kSampled, 0.5};
  o.seed = 1234;
  auto a = KvCompressor::Create(o);
  auto b = KvCompressor::Create(o);
  ASSERT_TRUE(a.ok() && b.ok());
  MakePrompts({40, 57, 33});
  std::vector<std::unique_ptr<KvCache>> caches;
  const auto first = Run(**a, caches, 1);
  Run(**b, caches, 1);
  std::vector<double> frac(c.n_layers, 0.0);
  for (const CompressedPrefill& p : first) {
    EXPECT_TRUE(p.report.profiled);
    for (int l = 0; l < c.n_layers; ++l) {
      frac[l] += double(p.report.layers[l].kept_prefix) / p.report.prefix_len / first.size();
    }
  }
  MakePrompts({44, 36, 50, 41, 39, 47, 35, 52}, 500);
  std::vector<std::unique_ptr<KvCache>> ca, cb;
  const auto ra = Run(**a, ca, 100);
  const auto rb = Run(**b, cb, 100);
  ASSERT_EQ(ra.size(), 8u);
  ASSERT_EQ(rb.size(), 8u);
  int profiled = 0;
  const double sum_frac = std::accumulate(frac.begin(), frac.end(), 0.0);
  for (size_t r = 0; r < ra.size(); ++r) {
    EXPECT_EQ(ra[r].report.profiled, rb[r].report.profiled);
    EXPECT_EQ(ra[r].plan.kept, rb[r].plan.kept);
    ExpectSameCache(*ca[r], *cb[r]);
    EXPECT_EQ(ra[r].report.kept_prefix_total, 40);
    profiled += ra[r].report.profiled;
    if (ra[r].report.profiled) continue;
    const int64_t T = prompts_[r].size(), P = T - kWindow;
    for (int l = 0; l < c.n_layers; ++l) {
      const int64_t b_l = ra[r].report.layers[l].kept_prefix;
      EXPECT_LE(std::abs(b_l - frac[l] / sum_frac * 40), 1.0) << "request " << r << " layer " << l;
      for (int h = 0; h < c.n_kv_heads; ++h) {
        EXPECT_EQ(ra[r].plan.kept[l][h], ReferenceKept(ra[r].scores->layer(l), h, P, T, b_l));
      }
    }
  }
  EXPECT_GT(profiled, 0);  // with seed 1234 and ρ = 0.5 both kinds occur
  EXPECT_LT(profiled, 8);
  EXPECT_EQ((*a)->profile_store()->num_samples(), 3 + profiled);
}

// The evaluation path: one full prefill, then CompactCopy per method equals the compressor's
// own (one_pass) result bitwise, and leaves the full cache intact.
TEST_F(KvCompressorTest, CompactCopyEqualsCompressor) {
  MakePrompts({40, 57});
  for (PolicyKind kind :
       {PolicyKind::kXkv, PolicyKind::kPyramidKv, PolicyKind::kStreaming, PolicyKind::kFull}) {
    std::vector<std::unique_ptr<KvCache>> caches, full_caches;
    const auto o = Options(kind, KvTarget::Tokens(44));
    const std::vector<PrefillRequest> req = Requests(full_caches);
    auto full = PrefillWithScores(*model_, req, ScoringFor(o.kv, o.importance));
    ASSERT_TRUE(full.ok());
    const auto res = Compress(o, caches);
    ASSERT_EQ(res.size(), 2u);
    for (size_t r = 0; r < 2; ++r) {
      AllocationReport rep;
      auto copy = CompactCopy(*full_caches[r], (*full)[r].scores, config(), o.kv, &rep);
      ASSERT_TRUE(copy.ok()) << copy.status();
      ExpectSameCache(**copy, *caches[r]);
      EXPECT_EQ((*full)[r].logits, res[r].logits);
      EXPECT_EQ(rep.kept_prefix_total, res[r].report.kept_prefix_total);
      EXPECT_EQ(rep.average_retention, res[r].report.average_retention);
      EXPECT_EQ(full_caches[r]->length(0), static_cast<int64_t>(prompts_[r].size()));
    }
  }
}

// Chunked prefill: the last chunk is widened to hold the window; results match the unchunked run.
TEST_F(KvCompressorTest, ChunkedPrefillMatchesWholePrompt) {
  MakePrompts({50, 40});
  std::vector<std::unique_ptr<KvCache>> ca, cb;
  KvCompressorOptions o = Options(PolicyKind::kXkv, KvTarget::Tokens(40));
  const auto a = Compress(o, ca);
  o.prefill_chunk = 16;
  const auto b = Compress(o, cb);
  ASSERT_EQ(a.size(), 2u);
  ASSERT_EQ(b.size(), 2u);
  for (size_t r = 0; r < 2; ++r) {
    EXPECT_LT(MaxDiff(b[r].logits.data(),
                      std::vector<double>(a[r].logits.begin(), a[r].logits.end()).data(),
                      a[r].logits.size()),
              1e-4);
    EXPECT_EQ(b[r].report.kept_prefix_total, 40);
    for (int l = 0; l < config().n_layers; ++l) {
      EXPECT_EQ(cb[r]->length(l), b[r].report.layers[l].kept_prefix + kWindow);
    }
  }
}

// Query-head scores: one row per query head; selection sums them into the KV heads.
TEST_F(KvCompressorTest, QueryHeadGranularitySelectsPerKvHead) {
  const ModelConfig& c = config();
  MakePrompts({40});
  std::vector<std::unique_ptr<KvCache>> caches;
  KvCompressorOptions o = Options(PolicyKind::kXkv, KvTarget::Tokens(30));
  o.importance.granularity = ScoreGranularity::kQueryHead;
  const auto res = Compress(o, caches);
  ASSERT_EQ(res.size(), 1u);
  const int64_t P = 32;
  ASSERT_EQ(res[0].scores->heads, c.n_heads);
  for (int l = 0; l < c.n_layers; ++l) {
    const std::vector<float>& q = res[0].scores->layer(l);
    std::vector<float> kv(c.n_kv_heads * P, 0.f);
    for (int h = 0; h < c.n_heads; ++h) {
      for (int64_t j = 0; j < P; ++j) kv[(h / 2) * P + j] += q[h * P + j];
    }
    const int64_t b = res[0].report.layers[l].kept_prefix;
    for (int g = 0; g < c.n_kv_heads; ++g) {
      EXPECT_EQ(res[0].plan.kept[l][g], ReferenceKept(kv, g, P, 40, b));
    }
    EXPECT_EQ(caches[0]->length(l), b + kWindow);
  }
}

// (h) Errors carry the value and the range.
TEST_F(KvCompressorTest, RejectsBadTargetsAndRequests) {
  for (double r : {1.5, 0.0, -0.2}) {
    auto c = KvCompressor::Create(Options(PolicyKind::kXkv, KvTarget::Retention(r)));
    ASSERT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(c.status().message(), HasSubstr("(0, 1]"));
  }
  auto bad = KvCompressor::Create(Options(PolicyKind::kXkv, KvTarget::Retention(1.5)));
  EXPECT_THAT(bad.status().message(), HasSubstr("1.5"));
  auto snap = KvCompressor::Create(Options(PolicyKind::kSnapKv, KvTarget::Retention(0.5)));
  EXPECT_THAT(snap.status().message(), HasSubstr("needs policy xkv"));
  EXPECT_FALSE(KvCompressor::Create(Options(PolicyKind::kXkv, KvTarget::Bytes(-1))).ok());
  KvCompressorOptions chunk = Options(PolicyKind::kXkv, KvTarget::Tokens(1));
  chunk.prefill_chunk = 4;
  EXPECT_THAT(KvCompressor::Create(chunk).status().message(), HasSubstr("chunk 4"));

  MakePrompts({40, 29});  // L * P = 3 * 21 = 63 for the shorter prompt
  auto c = KvCompressor::Create(Options(PolicyKind::kXkv, KvTarget::Tokens(64)));
  ASSERT_TRUE(c.ok());
  std::vector<std::unique_ptr<KvCache>> caches;
  const std::vector<PrefillRequest> req = Requests(caches, 70);
  auto r = (*c)->Prefill(*model_, req);
  ASSERT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("request 71"));
  EXPECT_THAT(r.status().message(), HasSubstr("token budget 64"));
  EXPECT_THAT(r.status().message(), HasSubstr("[0, 63]"));
  // A cache that is not fresh.
  auto used = Requests(caches);
  BatchStep step;
  step.sequences.push_back({caches[0].get(), 3, 0, false});
  ASSERT_TRUE(model_->Forward({1, 2, 3}, step).ok());
  r = (*c)->Prefill(*model_, used);
  EXPECT_THAT(r.status().message(), HasSubstr("fresh"));
}

}  // namespace
}  // namespace xkv
