// Per-(layer, KV head) budgets on the CUDA engine against the CPU engine, on the real model
// ($XKV_MODEL, else models/ of this checkout; skipped without it or a GPU): the CPU's scores and
// the per-head XKV solver (floor 0.2, 25% of the prefix) give kept slots with different counts per
// KV head; both engines compact with those same slots, then decode 24 tokens.
// - the GPU pool: after compaction its free head-blocks are the idle count minus
//   sum over (layer, head) of ceil(len_h / 16), during decode likewise with each head one token
//   longer per step, a CopySequence takes as much again, and after Release it is idle again;
// - CacheCopy holds each head's own count (as the CPU's KvCache) and the CPU's rows (bf16);
// - teacher-forced on the CPU's tokens, logits within 3% of the CPU's logit range at every step
//   and the same argmax where the CPU's top-2 margin is not a near-tie (< 3% of the range), as
//   gpu_stage_test's EngineXkvTest; free-running greedy texts identical up to the CPU's first
//   near-tie (the CPU reference runs the GPU's numerics, kBf16).
#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "base/status_macros.h"
#include "gtest/gtest.h"
#include "model/cuda/cuda_llama_model.h"
#include "model/kv_allocation.h"
#include "model/loaded_model.h"
#include "model/model_shapes.h"
#include "model/sampler.h"
#include "tests/gpu/gpu_test_util.h"
#include "worker/stage_engine_factory.h"

namespace xkv {
namespace {

constexpr int kGenTokens = 24;
constexpr double kRelTol = 0.03;
constexpr double kTieMargin = 0.03;
constexpr int kWindow = 8;
constexpr int64_t kPoolBlocks = 2048;

const char* const kTexts[] = {
    "Once upon a time, in a small village at the edge of a great forest, there lived a young "
    "girl who loved to explore. Every morning she walked past the old mill, greeted the baker, "
    "and followed the river into the trees. One day, deep in the forest, she found",
    "The secret code is 7H3K9Q2Z. Remember it well, because you will be asked for it later. "
    "Meanwhile, the weather in the mountains changed quickly: clouds rolled over the ridge, the "
    "wind picked up and the hikers hurried back to the hut before the storm. The secret code is",
    "Photosynthesis is the process by which green plants, algae and some bacteria convert light "
    "energy into chemical energy. During this process, carbon dioxide and water are combined to "
    "produce glucose and oxygen, using the energy of sunlight captured by chlorophyll in the "
    "chloroplasts. The oxygen is released into the atmosphere. In summary,",
};

double RelL2(const float* got, const float* want, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; ++i) {
    num += (double(got[i]) - want[i]) * (double(got[i]) - want[i]);
    den += double(want[i]) * want[i];
  }
  return n == 0 ? 0.0 : std::sqrt(num / std::max(den, 1e-30));
}

// One step of `toks` through the whole model; the last token's logits.
absl::StatusOr<std::vector<float>> Step(StageEngine& e, uint64_t id, absl::Span<const int32_t> toks,
                                        int64_t position, const ImportanceOptions* observe,
                                        std::optional<CollectedScores>* scores) {
  ASSIGN_OR_RETURN(std::vector<float> hidden, e.Embed(toks));
  EngineStep step;
  step.sequences.push_back(
      {id, static_cast<int64_t>(toks.size()), position, observe != nullptr, std::nullopt});
  std::vector<EngineObservation> obs;
  RETURN_IF_ERROR(e.RunLayers(step, observe != nullptr ? *observe : ImportanceOptions{},
                              absl::MakeSpan(hidden), &obs));
  if (scores != nullptr) *scores = obs[0].scores;
  const int64_t last = static_cast<int64_t>(toks.size()) - 1;
  return e.Logits(hidden, {&last, 1});
}

struct GenRun {
  std::vector<int32_t> tokens;
  std::vector<std::vector<float>> logits;  // behind each token
};

// kGenTokens greedy tokens after `first` (the prompt's logits); with `forced`, fed those tokens.
// `after_step(t)` runs after each decode step (pool checks).
absl::StatusOr<GenRun> Decode(StageEngine& e, uint64_t id, int64_t prompt_len,
                              std::vector<float> first, const std::vector<int32_t>* forced,
                              const std::function<void(int)>& after_step) {
  GenRun r;
  std::vector<float> logits = std::move(first);
  for (int t = 0; t < kGenTokens; ++t) {
    r.tokens.push_back(Argmax(logits));
    r.logits.push_back(std::move(logits));
    if (t + 1 == kGenTokens) break;
    const int32_t feed = forced != nullptr ? (*forced)[t] : r.tokens.back();
    ASSIGN_OR_RETURN(logits, Step(e, id, {&feed, 1}, prompt_len + t, nullptr, nullptr));
    after_step(t + 1);
  }
  return r;
}

absl::Status CompactAll(StageEngine& e, uint64_t id, const AllocationPlan& plan) {
  for (int l = e.layer_begin(); l < e.layer_end(); ++l) {
    RETURN_IF_ERROR(e.CompactLayer(id, l, plan.prompt_len, plan.kept[l - plan.layer_begin]));
  }
  return absl::OkStatus();
}

// Head-blocks a sequence holding plan's kept rows plus `grown` decoded tokens per head owns.
int64_t HeadBlocks(const AllocationPlan& plan, int64_t grown) {
  int64_t blocks = 0;
  for (const auto& layer : plan.kept) {
    for (const std::vector<int32_t>& head : layer) {
      blocks += (static_cast<int64_t>(head.size()) + grown + 15) / 16;
    }
  }
  return blocks;
}

TEST(PerHeadEngineTest, PerHeadCompactionDecodesLikeTheCpu) {
  XKV_SKIP_WITHOUT_GPU();
  const std::string path = gpu_test::RealModelPath();
  struct stat st;
  if (stat(path.c_str(), &st) != 0) GTEST_SKIP() << "no model at " << path;
  absl::StatusOr<LoadedModel> loaded = LoadModel(path, 1, Numerics::kExact);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  const ModelConfig& config = loaded->config;
  const int L = config.n_layers, kvh = config.n_kv_heads;
  StageOptions so;
  so.model_path = path;
  so.device = "cpu";
  so.numerics = Numerics::kBf16;
  so.num_threads = 2;
  so.kv_capacity_blocks = 256;
  absl::StatusOr<std::unique_ptr<StageEngine>> cpu_or = LoadStageEngine(so);
  ASSERT_TRUE(cpu_or.ok()) << cpu_or.status();
  StageEngine& cpu = **cpu_or;
  CudaEngineOptions o;
  o.max_batch = 4;
  o.max_step_tokens = 512;
  o.max_seq_len = 512;
  o.num_kv_blocks = kPoolBlocks;
  absl::StatusOr<std::unique_ptr<CudaLlamaModel>> gpu_or = CudaLlamaModel::Load(*loaded->file, o);
  ASSERT_TRUE(gpu_or.ok()) << gpu_or.status();
  CudaLlamaModel& gpu = **gpu_or;
  const int64_t idle = gpu.free_kv_head_blocks();
  ASSERT_EQ(idle, kPoolBlocks * kvh);
  ASSERT_EQ(gpu.free_kv_blocks(), kPoolBlocks);

  KvSettings spec;
  spec.policy = PolicyKind::kXkv;
  spec.allocator.per_head = true;
  spec.allocator.floor = 0.2;
  ImportanceOptions base;
  base.window = kWindow;
  const ImportanceOptions scoring = ScoringFor(spec, base);
  uint64_t id = 1;
  for (const char* text : kTexts) {
    absl::StatusOr<std::vector<int32_t>> prompt = loaded->tokenizer->Encode(text, false);
    ASSERT_TRUE(prompt.ok()) << prompt.status();
    const int64_t T = static_cast<int64_t>(prompt->size()), P = T - kWindow;
    // The CPU's scores decide the eviction for both engines.
    std::optional<CollectedScores> scores;
    absl::StatusOr<std::vector<float>> cpu_first = Step(cpu, id, *prompt, 0, &scoring, &scores);
    ASSERT_TRUE(cpu_first.ok()) << cpu_first.status();
    ASSERT_TRUE(scores.has_value());
    spec.target = KvTarget::Tokens(P * L / 4);
    absl::StatusOr<AllocationPlan> plan = PlanAllocation(*scores, config, spec);
    ASSERT_TRUE(plan.ok()) << plan.status();
    ASSERT_TRUE(plan->compress);
    int ragged_layers = 0;
    for (const auto& layer : plan->kept) {
      for (const std::vector<int32_t>& head : layer) {
        if (head.size() != layer[0].size()) {
          ++ragged_layers;
          break;
        }
      }
    }
    ASSERT_GT(ragged_layers, 0) << "the per-head plan gives every head the same count";
    ASSERT_TRUE(CompactAll(cpu, id, *plan).ok());

    // GPU: the same prompt (observed: importance over per-head tables), the same compaction.
    std::optional<CollectedScores> gpu_scores;
    absl::StatusOr<std::vector<float>> gpu_first = Step(gpu, id, *prompt, 0, &scoring, &gpu_scores);
    ASSERT_TRUE(gpu_first.ok()) << gpu_first.status();
    ASSERT_TRUE(gpu_scores.has_value() && gpu_scores->complete());
    EXPECT_EQ(gpu.free_kv_head_blocks(), idle - L * kvh * ((T + 15) / 16));
    absl::Status compacted = CompactAll(gpu, id, *plan);
    ASSERT_TRUE(compacted.ok()) << compacted;
    EXPECT_EQ(gpu.free_kv_head_blocks(), idle - HeadBlocks(*plan, 0));

    // CacheCopy: each head its own count and the CPU's rows (bf16 on the GPU, as on the CPU).
    std::unique_ptr<KvCache> want_cache = cpu.CacheCopy(id), got_cache = gpu.CacheCopy(id);
    ASSERT_TRUE(want_cache && got_cache);
    for (int l = 0; l < L; ++l) {
      EXPECT_EQ(gpu.CacheLength(id, l), cpu.CacheLength(id, l)) << "layer " << l;
      for (int g = 0; g < kvh; ++g) {
        const int64_t n = static_cast<int64_t>(plan->kept[l][g].size());
        ASSERT_EQ(got_cache->head_length(l, g), n) << l << "/" << g;
        ASSERT_EQ(want_cache->head_length(l, g), n) << l << "/" << g;
        // The same tokens' keys: bf16 drift over the layers is ~1%, a wrong row ~100%.
        EXPECT_LE(RelL2(got_cache->k_head(l, g), want_cache->k_head(l, g), n * config.head_dim),
                  0.1)
            << l << "/" << g;
      }
      EXPECT_EQ(got_cache->head_rows(l), want_cache->head_rows(l));
    }

    // A copy takes as much again, holds the same bytes, and goes back on release.
    ASSERT_TRUE(gpu.CopySequence(id, 1000 + id).ok());
    EXPECT_EQ(gpu.free_kv_head_blocks(), idle - 2 * HeadBlocks(*plan, 0));
    std::unique_ptr<KvCache> copied = gpu.CacheCopy(1000 + id);
    ASSERT_TRUE(copied != nullptr);
    for (int l = 0; l < L; ++l) {
      for (int g = 0; g < kvh; ++g) {
        const int64_t elems = got_cache->head_length(l, g) * config.head_dim;
        ASSERT_EQ(copied->head_length(l, g), got_cache->head_length(l, g));
        EXPECT_TRUE(std::equal(copied->v_head(l, g), copied->v_head(l, g) + elems,
                               got_cache->v_head(l, g)));
      }
    }
    gpu.ReleaseSequence(1000 + id);
    EXPECT_EQ(gpu.free_kv_head_blocks(), idle - HeadBlocks(*plan, 0));

    // Decode: the CPU free-running, the GPU free-running (on a copy) and teacher-forced.
    absl::StatusOr<GenRun> want = Decode(cpu, id, T, *cpu_first, nullptr, [](int) {});
    ASSERT_TRUE(want.ok()) << want.status();
    ASSERT_TRUE(gpu.CopySequence(id, 2000 + id).ok());
    absl::StatusOr<GenRun> got = Decode(gpu, 2000 + id, T, *gpu_first, nullptr, [](int) {});
    ASSERT_TRUE(got.ok()) << got.status();
    gpu.ReleaseSequence(2000 + id);
    absl::StatusOr<GenRun> forced = Decode(gpu, id, T, *gpu_first, &want->tokens, [&](int t) {
      EXPECT_EQ(gpu.free_kv_head_blocks(), idle - HeadBlocks(*plan, t)) << "step " << t;
    });
    ASSERT_TRUE(forced.ok()) << forced.status();
    int agree = 0;
    while (agree < kGenTokens && got->tokens[agree] == want->tokens[agree]) ++agree;
    if (agree < kGenTokens) {
      EXPECT_LT(gpu_test::TopTwoMargin(want->logits[agree]), kTieMargin)
          << text << " parts at " << agree;
    }
    const auto [worst, decided, decided_equal] = gpu_test::CompareForced(
        forced->logits, forced->tokens, want->logits, want->tokens, kTieMargin);
    EXPECT_LE(worst, kRelTol) << text;
    EXPECT_EQ(decided_equal, decided) << text;
    std::printf(
        "[per_head_engine] %lld-token prompt, %d of %d layers with per-head counts, %lld "
        "head-blocks "
        "held after compaction (full: %lld); greedy agreement %d/%d; teacher-forced max|dlogit| "
        "%.4f of range, argmax equal on %d/%d decided steps\n",
        static_cast<long long>(T), ragged_layers, L, static_cast<long long>(HeadBlocks(*plan, 0)),
        static_cast<long long>(L * kvh * ((T + 15) / 16)), agree, kGenTokens, worst, decided_equal,
        decided);
    cpu.ReleaseSequence(id);
    gpu.ReleaseSequence(id);
    EXPECT_EQ(gpu.free_kv_head_blocks(), idle);
    ++id;
  }
}

// A 2-layer random model of the Llama-3.2-1B shape with 4 KV heads (a GQA group of 8).
ModelConfig SmallRandomConfig() {
  ModelConfig c = Llama32_1BShape();
  c.n_layers = 2;
  c.n_kv_heads = 4;
  c.vocab_size = 1000;
  c.bos_token = 1;
  c.eos_token = 2;
  return c;
}

// Bad kept lists change nothing: a slot outside its head, a decreasing list, a wrong head count.
TEST(PerHeadEngineTest, BadKeptListsAreRefused) {
  XKV_SKIP_WITHOUT_GPU();
  CudaEngineOptions o = gpu_test::SmallEngineOptions(64);
  const ModelConfig c = SmallRandomConfig();
  absl::StatusOr<std::unique_ptr<CudaLlamaModel>> m = CudaLlamaModel::CreateRandom(c, 3, o);
  ASSERT_TRUE(m.ok()) << m.status();
  const int64_t idle = (*m)->free_kv_head_blocks();
  std::vector<int32_t> prompt(40, 5), next;
  std::vector<CudaTokenStep> step = {{1, prompt}};
  ASSERT_TRUE((*m)->Forward(step, &next).ok());
  const int64_t held = idle - (*m)->free_kv_head_blocks();
  EXPECT_EQ(held, 2 * 4 * 3);  // 2 layers x 4 heads x ceil(40 / 16)
  const std::vector<std::vector<int32_t>> outside = {{0, 40}, {1}, {1}, {1}};
  const std::vector<std::vector<int32_t>> decreasing = {{3, 2}, {1}, {1}, {1}};
  const std::vector<std::vector<int32_t>> one_head = {{1, 2}};
  for (const auto* kept : {&outside, &decreasing, &one_head}) {
    EXPECT_EQ((*m)->CompactLayer(1, 0, 40, *kept).code(), absl::StatusCode::kInvalidArgument);
  }
  const std::vector<std::vector<int32_t>> fine = {{1}, {2}, {3}, {4}};
  EXPECT_EQ((*m)->CompactLayer(1, 0, 39, fine).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(idle - (*m)->free_kv_head_blocks(), held);
  // Layer 0's heads keep 17 (2 head-blocks), 0, 1 and 2 slots: 4 head-blocks instead of 12.
  std::vector<int32_t> seventeen(17);
  for (int i = 0; i < 17; ++i) seventeen[i] = 2 * i;
  const std::vector<std::vector<int32_t>> ragged = {seventeen, {}, {0}, {5, 39}};
  ASSERT_TRUE((*m)->CompactLayer(1, 0, 40, ragged).ok());
  EXPECT_EQ(idle - (*m)->free_kv_head_blocks(), held - 12 + 4);
  EXPECT_EQ((*m)->CacheLength(1, 0), 17);
  EXPECT_EQ((*m)->CacheLength(1, 1), 40);
  // Decoding grows every head by one token (head 1 from 0: its first head-block).
  std::vector<int32_t> one = {7};
  step = {{1, one}};
  ASSERT_TRUE((*m)->Forward(step, &next).ok());
  EXPECT_EQ(idle - (*m)->free_kv_head_blocks(), (2 + 1 + 1 + 1) + 4 * 3);
  std::unique_ptr<KvCache> copy = (*m)->CacheCopy(1);
  ASSERT_TRUE(copy != nullptr);
  EXPECT_EQ(copy->head_length(0, 0), 18);
  EXPECT_EQ(copy->head_length(0, 1), 1);
  EXPECT_EQ(copy->head_length(0, 2), 2);
  EXPECT_EQ(copy->head_length(0, 3), 3);
  EXPECT_EQ(copy->head_length(1, 0), 41);
  (*m)->ReleaseSequence(1);
  EXPECT_EQ((*m)->free_kv_head_blocks(), idle);
}

// The step slots' tables are copied only when they changed (Sequence::epoch): sequences decoded
// in a fixed order (tables reused between steps, refreshed at each new head-block and after a
// per-head compaction) and in an order that changes every few steps (slots refilled) give the same
// logits.
TEST(PerHeadEngineTest, StepSlotsFollowTheirSequences) {
  XKV_SKIP_WITHOUT_GPU();
  const ModelConfig c = SmallRandomConfig();
  CudaEngineOptions o;
  o.max_batch = 4;
  o.max_step_tokens = 64;
  o.max_seq_len = 128;
  o.num_kv_blocks = 64;
  absl::StatusOr<std::unique_ptr<CudaLlamaModel>> fixed = CudaLlamaModel::CreateRandom(c, 5, o);
  absl::StatusOr<std::unique_ptr<CudaLlamaModel>> moving = CudaLlamaModel::CreateRandom(c, 5, o);
  ASSERT_TRUE(fixed.ok() && moving.ok());
  const std::vector<std::vector<int32_t>> prompts = {
      std::vector<int32_t>(20, 3), std::vector<int32_t>(37, 4), std::vector<int32_t>(5, 5)};
  std::vector<int32_t> b_kept0(10), next;
  for (int i = 0; i < 10; ++i) b_kept0[i] = 3 * i + 1;
  const std::vector<std::vector<int32_t>> b_kept = {b_kept0, {}, {36}, {0, 1, 2, 35, 36}};
  for (CudaLlamaModel* m : {fixed->get(), moving->get()}) {
    for (uint64_t id = 0; id < 3; ++id) {
      std::vector<CudaTokenStep> step = {{id + 1, prompts[id]}};
      ASSERT_TRUE(m->Forward(step, &next).ok());
    }
    ASSERT_TRUE(m->CompactLayer(2, 1, 37, b_kept).ok());  // sequence 2, layer 1: per-head counts
  }
  // 40 steps: every head crosses a head-block boundary at least twice.
  for (int t = 0; t < 40; ++t) {
    const std::vector<int32_t> feed = {static_cast<int32_t>(7 + t % 50)};
    const int rot = (t / 3) % 3;  // the moving order changes every 3 steps
    std::vector<CudaTokenStep> in_order, rotated;
    for (uint64_t k = 0; k < 3; ++k) {
      in_order.push_back({k + 1, feed});
      rotated.push_back({(k + rot) % 3 + 1, feed});
    }
    std::vector<float> want, got;
    ASSERT_TRUE((*fixed)->Forward(in_order, &next, &want).ok());
    ASSERT_TRUE((*moving)->Forward(rotated, &next, &got).ok());
    const int64_t vocab = c.vocab_size;
    for (int k = 0; k < 3; ++k) {
      const int64_t id = (k + rot) % 3;  // rotated[k]'s sequence, in_order's row id
      EXPECT_LE(gpu_test::RelDiff(&got[k * vocab], &want[id * vocab], vocab), 1e-4)
          << "step " << t << " sequence " << id + 1;
    }
  }
  for (CudaLlamaModel* m : {fixed->get(), moving->get()}) {
    for (uint64_t id = 1; id <= 3; ++id) m->ReleaseSequence(id);
    EXPECT_EQ(m->free_kv_head_blocks(), 64 * 4);
  }
}

}  // namespace
}  // namespace xkv
