// XKV selection and compaction as a pipeline stage runs them (architecture.md §3.4): on the CPU
// engine's observed prefill, each layer keeps its top-b_l prefix tokens by score plus the window,
// the kept rows are the prefill's rows, decoding continues at the true positions, nothing is
// evicted for policy full or a prompt within the window, and a compacted copy leaves the shared
// prefill whole (the eval's one-prefill trick).
#include "model/kv_allocation.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <numeric>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/cpu_stage_engine.h"
#include "tests/unit/model/llama_test_util.h"
#include "tests/unit/model/xkv_test_util.h"

namespace xkv {
namespace {

using ::testing::HasSubstr;
using ::xkv::testing::LayerRows;
using ::xkv::testing::MaxDiff;
using ::xkv::testing::NaiveForward;
using ::xkv::testing::ObservedPrefill;
using ::xkv::testing::RandomTokens;
using ::xkv::testing::RandomWeights;
using ::xkv::testing::RunStep;
using ::xkv::testing::TinyConfig;

constexpr int kWindow = 8;

void ExpectSameCache(const KvCache& a, const KvCache& b) {
  ASSERT_EQ(a.layer_end(), b.layer_end());
  for (int l = a.layer_begin(); l < a.layer_end(); ++l) {
    ASSERT_EQ(a.length(l), b.length(l)) << "layer " << l;
    EXPECT_EQ(LayerRows(a, l), LayerRows(b, l)) << "layer " << l;  // bitwise
  }
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

KvSettings Spec(PolicyKind policy, KvTarget target) {
  KvSettings s;
  s.policy = policy;
  s.target = target;
  s.profile.kind = ProfileModeKind::kOnePass;
  return s;
}

class KvAllocationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    weights_ = RandomWeights(TinyConfig(), 21);
    auto engine = CpuStageEngine::Create(weights_, {.num_threads = 2});
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = std::move(*engine);
  }
  const ModelConfig& config() const { return weights_->config; }
  int64_t Bpt() const { return config().KvBytesPerTokenPerLayer(sizeof(float)); }
  std::vector<int32_t> Prompt(int n, uint64_t seed) const {
    return RandomTokens(n, config().vocab_size, seed);
  }

  // Sequence `id`: an observed prefill of `prompt` scored as `spec` ranks, then the stage's
  // compaction (budgets of PlanAllocation, kept slots of KeptSlotsForLayers, the engine's
  // CompactLayer). Returns the plan; the prefill's logits go to *logits when given.
  AllocationPlan PrefillAndCompact(uint64_t id, const std::vector<int32_t>& prompt,
                                   const KvSettings& spec, ImportanceOptions importance = {},
                                   std::vector<float>* logits = nullptr,
                                   CollectedScores* scores_out = nullptr) {
    auto scores = ObservedPrefill(*engine_, id, prompt, ScoringFor(spec, importance), 0, logits);
    EXPECT_TRUE(scores.ok()) << scores.status();
    if (!scores.ok()) return {};
    auto plan = PlanAllocation(*scores, config(), spec);
    EXPECT_TRUE(plan.ok()) << plan.status();
    if (!plan.ok()) return {};
    if (plan->compress) {
      auto kept = KeptSlotsForLayers(*scores, plan->budgets.budgets, ToPolicyOptions(spec));
      EXPECT_TRUE(kept.ok()) << kept.status();
      if (kept.ok()) EXPECT_EQ(*kept, plan->kept);  // the stage's selection is the plan's
      for (int l = 0; l < config().n_layers; ++l) {
        EXPECT_TRUE(engine_->CompactLayer(id, l, prompt.size(), plan->kept[l]).ok());
      }
    }
    if (scores_out != nullptr) *scores_out = *std::move(scores);
    return *std::move(plan);
  }

  std::shared_ptr<LlamaWeights> weights_;
  std::unique_ptr<CpuStageEngine> engine_;
};

// Each layer holds exactly b_l + w tokens per head, the report's bytes match the cache, the kept
// slots are the top-b_l by score (independent full sort) and the kept rows are the full prefill's.
TEST_F(KvAllocationTest, CompactionKeepsTopBudgetPlusWindow) {
  const ModelConfig& c = config();
  const KvSettings spec = Spec(PolicyKind::kXkv, KvTarget::Tokens(45));
  uint64_t id = 0;
  for (int T : {40, 57}) {
    const std::vector<int32_t> prompt = Prompt(T, T);
    const int64_t P = T - kWindow;
    // The same prompt prefilled but not compacted: the rows the compaction must keep.
    ASSERT_TRUE(ObservedPrefill(*engine_, 100 + id, prompt, ScoringFor(spec, {})).ok());
    const std::unique_ptr<KvCache> full = engine_->CacheCopy(100 + id);
    CollectedScores scores;
    const AllocationPlan plan = PrefillAndCompact(id, prompt, spec, {}, nullptr, &scores);
    ASSERT_TRUE(plan.compress);
    const std::unique_ptr<KvCache> cache = engine_->CacheCopy(id++);
    const AllocationReport rep = MakeReport(*cache, plan, c);
    EXPECT_EQ(rep.kept_prefix_total, 45);
    for (int l = 0; l < c.n_layers; ++l) {
      const int64_t b = rep.layers[l].kept_prefix;
      EXPECT_EQ(cache->length(l), b + kWindow);
      EXPECT_EQ(rep.layers[l].tokens_held, b + kWindow);
      EXPECT_EQ(cache->BytesHeld(l), (b + kWindow) * Bpt());
      EXPECT_EQ(rep.layers[l].bytes_held, (b + kWindow) * Bpt());
      for (int h = 0; h < c.n_kv_heads; ++h) {
        const std::vector<int32_t> want = ReferenceKept(scores.layer(l), h, P, T, b);
        EXPECT_EQ(plan.kept[l][h], want) << "layer " << l << " head " << h;
        for (size_t i = 0; i < want.size(); ++i) {  // row i of the compact cache = slot want[i]
          for (auto [got, src] : {std::pair(cache->k(l), full->k(l)), {cache->v(l), full->v(l)}}) {
            ASSERT_EQ(std::memcmp(got + h * cache->head_stride(l) + i * c.head_dim,
                                  src + h * full->head_stride(l) + int64_t{want[i]} * c.head_dim,
                                  c.head_dim * sizeof(float)),
                      0);
          }
        }
      }
    }
    EXPECT_EQ(rep.kv_bytes_held, cache->BytesHeld());
    EXPECT_EQ(rep.kv_bytes_full, c.n_layers * T * Bpt());
    EXPECT_EQ(rep.kv_bytes_held, (45 + c.n_layers * kWindow) * Bpt());
    ASSERT_TRUE(rep.average_retention.has_value());
    EXPECT_GT(*rep.average_retention, 0.0);
    EXPECT_LT(*rep.average_retention, 1.0);
  }
}

// Decoding after compaction equals the naive reference whose decode queries attend only to the
// kept prompt tokens of that layer and head (plus the decoded ones), at the true positions T + i;
// a batched decode of two sequences. Decoding at the (smaller) cache length instead diverges.
// Tolerance 2e-4 on logits.
TEST_F(KvAllocationTest, DecodeAfterCompactionMatchesMaskedReference) {
  const ModelConfig& c = config();
  const int m = 4;
  const int64_t V = c.vocab_size;
  const KvSettings spec = Spec(PolicyKind::kXkv, KvTarget::Tokens(36));
  const std::vector<std::vector<int32_t>> prompts = {Prompt(40, 300), Prompt(33, 301)};
  std::vector<AllocationPlan> plans;
  std::vector<std::vector<float>> prefill_logits(2);
  for (int r = 0; r < 2; ++r) {
    plans.push_back(PrefillAndCompact(r, prompts[r], spec, {}, &prefill_logits[r]));
    ASSERT_TRUE(plans.back().compress);
  }
  ASSERT_TRUE(engine_->CopySequence(0, 10).ok());  // for the wrong-position contrast below
  const std::vector<std::vector<int32_t>> gen = {RandomTokens(m, V, 7), RandomTokens(m, V, 8)};
  std::vector<std::vector<float>> got(2);
  for (int i = 0; i < m; ++i) {
    EngineStep step;
    for (int r = 0; r < 2; ++r) {
      step.sequences.push_back(
          {static_cast<uint64_t>(r), 1, static_cast<int64_t>(prompts[r].size()) + i, false});
    }
    auto logits = RunStep(*engine_, step, std::vector<int32_t>{gen[0][i], gen[1][i]});
    ASSERT_TRUE(logits.ok()) << logits.status();
    for (int r = 0; r < 2; ++r) {
      got[r].insert(got[r].end(), logits->begin() + r * V, logits->begin() + (r + 1) * V);
    }
  }
  for (int r = 0; r < 2; ++r) {
    const int64_t T = prompts[r].size();
    std::vector<int32_t> all = prompts[r];
    all.insert(all.end(), gen[r].begin(), gen[r].end());
    std::vector<int64_t> pos(T + m);
    std::iota(pos.begin(), pos.end(), 0);
    const auto& kept = plans[r].kept;
    auto mask = [&](int l, int g, int64_t q, int64_t k) {
      return q < T || k >= T || std::binary_search(kept[l][g].begin(), kept[l][g].end(), k);
    };
    const std::vector<double> want = NaiveForward(*weights_, all, pos, mask);
    const std::vector<double> unmasked = NaiveForward(*weights_, all, pos);
    EXPECT_LT(MaxDiff(prefill_logits[r].data(), want.data() + (T - 1) * V, V), 2e-4);
    double effect = 0;  // eviction must change the decode logits, or this test proves nothing
    for (int i = 0; i < m; ++i) {
      EXPECT_LT(MaxDiff(got[r].data() + i * V, want.data() + (T + i) * V, V), 2e-4) << r << i;
      effect = std::max(effect, MaxDiff(got[r].data() + i * V, unmasked.data() + (T + i) * V, V));
    }
    EXPECT_GT(effect, 1e-3);
  }
  // The classic bug: the copy of sequence 0 decodes its first token at its longest layer's length.
  int64_t longest = 0;
  for (int l = 0; l < c.n_layers; ++l) longest = std::max(longest, engine_->CacheLength(10, l));
  ASSERT_LT(longest, static_cast<int64_t>(prompts[0].size()));
  EngineStep wrong;
  wrong.sequences.push_back({10, 1, longest, false});
  auto bad = RunStep(*engine_, wrong, std::vector<int32_t>{gen[0][0]});
  ASSERT_TRUE(bad.ok()) << bad.status();
  const std::vector<double> right(got[0].begin(), got[0].begin() + V);
  EXPECT_GT(MaxDiff(bad->data(), right.data(), V), 1e-3);
}

// Policy full and prompts with T <= w evict nothing: the plan says why and the report counts the
// tokens held, not the capacity reserved for tokens still to come.
TEST_F(KvAllocationTest, FullPolicyAndShortPromptsKeepEverything) {
  uint64_t id = 0;
  for (PolicyKind kind : {PolicyKind::kFull, PolicyKind::kXkv}) {
    for (int T : {40, 5, 8, 29}) {
      const bool whole = kind == PolicyKind::kFull || T <= kWindow;
      const AllocationPlan plan =
          PrefillAndCompact(id, Prompt(T, T), Spec(kind, KvTarget::Tokens(20)));
      EXPECT_EQ(plan.compress, !whole) << PolicyName(kind) << " T " << T;
      std::unique_ptr<KvCache> cache = engine_->CacheCopy(id++);
      AllocationReport rep = MakeReport(*cache, plan, config());
      EXPECT_EQ(rep.compressed, !whole);
      if (!whole) {
        EXPECT_LT(rep.kv_bytes_held, rep.kv_bytes_full);
        continue;
      }
      EXPECT_THAT(plan.note, HasSubstr(T <= kWindow ? "window" : "policy full"));
      for (const LayerAllocation& a : rep.layers) EXPECT_EQ(a.tokens_held, T);
      EXPECT_EQ(rep.kv_bytes_held, rep.kv_bytes_full);
      ASSERT_TRUE(cache->Reserve(config().n_layers - 1, T + 64).ok());
      EXPECT_EQ(MakeReport(*cache, plan, config()).kv_bytes_held, rep.kv_bytes_full);
    }
  }
}

// Query-head scores: one row per query head; selection sums them into the KV heads.
TEST_F(KvAllocationTest, QueryHeadGranularitySelectsPerKvHead) {
  const ModelConfig& c = config();
  ImportanceOptions importance;
  importance.granularity = ScoreGranularity::kQueryHead;
  CollectedScores scores;
  const AllocationPlan plan =
      PrefillAndCompact(0, Prompt(40, 40), Spec(PolicyKind::kXkv, KvTarget::Tokens(30)), importance,
                        nullptr, &scores);
  ASSERT_TRUE(plan.compress);
  const int64_t P = 32;
  ASSERT_EQ(scores.heads, c.n_heads);
  const int group = c.n_heads / c.n_kv_heads;
  for (int l = 0; l < c.n_layers; ++l) {
    const std::vector<float>& q = scores.layer(l);
    std::vector<float> kv(c.n_kv_heads * P, 0.f);
    for (int h = 0; h < c.n_heads; ++h) {
      for (int64_t j = 0; j < P; ++j) kv[(h / group) * P + j] += q[h * P + j];
    }
    const int64_t b = plan.budgets.budgets[l];
    for (int g = 0; g < c.n_kv_heads; ++g) {
      EXPECT_EQ(plan.kept[l][g], ReferenceKept(kv, g, P, 40, b)) << "layer " << l << " head " << g;
    }
    EXPECT_EQ(engine_->CacheLength(0, l), b + kWindow);
  }
}

// The eval's one prefill per prompt: a compacted copy of a prefilled sequence equals compacting a
// fresh prefill of the same prompt (bitwise), and the prefill it was copied from stays whole.
TEST_F(KvAllocationTest, CompactedCopyLeavesTheSharedPrefillWhole) {
  const std::vector<int32_t> prompt = Prompt(57, 57);
  uint64_t id = 0;
  for (PolicyKind kind :
       {PolicyKind::kXkv, PolicyKind::kPyramidKv, PolicyKind::kStreaming, PolicyKind::kSnapKv}) {
    const KvSettings spec = Spec(kind, KvTarget::Tokens(44));
    const uint64_t shared = id++, copy = id++, fresh = id++;
    auto scores = ObservedPrefill(*engine_, shared, prompt, ScoringFor(spec, {}));
    ASSERT_TRUE(scores.ok()) << scores.status();
    const std::unique_ptr<KvCache> before = engine_->CacheCopy(shared);
    ASSERT_TRUE(engine_->CopySequence(shared, copy).ok());
    auto plan = PlanAllocation(*scores, config(), spec);
    ASSERT_TRUE(plan.ok()) << plan.status();
    for (int l = 0; l < config().n_layers; ++l) {
      ASSERT_TRUE(engine_->CompactLayer(copy, l, prompt.size(), plan->kept[l]).ok());
    }
    PrefillAndCompact(fresh, prompt, spec);
    ExpectSameCache(*engine_->CacheCopy(copy), *engine_->CacheCopy(fresh));
    ExpectSameCache(*engine_->CacheCopy(shared), *before);
    EXPECT_EQ(MakeReport(*engine_->CacheCopy(copy), *plan, config()).kept_prefix_total, 44)
        << PolicyName(kind);
  }
}

}  // namespace
}  // namespace xkv
