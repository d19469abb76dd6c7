// A GPU pipeline stage (StageExecutor over CudaLlamaModel, device cuda:0) against the CPU stage
// (CpuStageEngine, kExact numerics) on the real model ($XKV_MODEL, else models/ of this checkout):
// the same steps — observed prefill, XKV compaction at a 25% budget (budgets solved from the CPU
// stage's gains, given to both), greedy decode — through the worker's real code path.
//
// Through the StageExecutor each device selects its kept tokens from its OWN scores, so with XKV
// the two caches may keep different tokens where scores nearly tie; there only the first token,
// the layer sizes and the profile are asserted. EngineXkvTest gives both engines the SAME kept
// slots (from the CPU's scores) and checks the GPU teacher-forced on the CPU's tokens: logits
// within the bound at every step, the same argmax wherever the CPU's top-2 margin is not a
// near-tie; free-running texts may part only at a CPU near-tie, and against the CPU engine with
// the GPU's numerics (kBf16) at least 5 of its 8 prompts must give identical texts (a compressed
// cache flattens the logits, so bf16-level near-ties come sooner than with the full cache).
//
// What is asserted, and why these bounds: the GPU multiplies bf16 weights and activations and keeps
// K/V in bf16 (2^-9 relative rounding, compounding over 30 layers) while the CPU runs fp32, so:
// - first-token logits within 3% of the CPU's logit range, the same argmax;
// - greedy continuations identical up to the CPU's first near-tie (top-2 margin < 3% of the
//   range: there the bf16 error may legitimately flip the choice); the full agreement is printed;
// - observed gain curves (the XKV profile) within 0.02 in L1 per layer (they sum to 1);
// - after compaction, every layer holds exactly budget + window tokens on both devices;
// - a scores-only mini-prefill leaves the GPU pool exactly as it was.
#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "allocator/budget_solver.h"
#include "allocator/importance_profile.h"
#include "base/status_macros.h"
#include "gtest/gtest.h"
#include "model/kv_allocation.h"
#include "model/loaded_model.h"
#include "model/sampler.h"
#include "tests/gpu/gpu_test_util.h"
#include "tests/unit/worker/worker_test_util.h"
#include "worker/stage_engine_factory.h"
#include "worker/stage_executor.h"

namespace xkv {
namespace {

constexpr int kGenTokens = 32;
constexpr double kRelTol = 0.03;
constexpr double kTieMargin = 0.03;
constexpr int kWindow = 8;

std::string ModelPath() { return gpu_test::RealModelPath(); }

const char* const kPrompts[] = {
    "Once upon a time, in a small village at the edge of a great forest, there lived a young "
    "girl who loved to explore. Every morning she walked past the old mill, greeted the baker, "
    "and followed the river into the trees. One day, deep in the forest, she found",
    "Question: A train leaves the station at 9:00 and travels at 80 kilometres per hour. A second "
    "train leaves the same station at 10:00 on the same track at 120 kilometres per hour. At what "
    "time does the second train catch up with the first? Think step by step.\nAnswer:",
    "Here is a Python function that reads a CSV file, skips the header line, and returns the sum "
    "of the values in the third column as a float, ignoring rows that are empty or malformed:\n\n"
    "def",
    "Photosynthesis is the process by which green plants, algae and some bacteria convert light "
    "energy into chemical energy. During this process, carbon dioxide and water are combined to "
    "produce glucose and oxygen, using the energy of sunlight captured by chlorophyll in the "
    "chloroplasts. The oxygen is released into the atmosphere. In summary,",
    "The history of computing stretches back thousands of years, from the abacus used by ancient "
    "merchants to the mechanical calculators of the seventeenth century built by Pascal and "
    "Leibniz. In the nineteenth century, Charles Babbage designed the Analytical Engine, and Ada "
    "Lovelace wrote what is often considered the first computer program for it. The twentieth "
    "century brought electronic computers that filled entire rooms; the transistor and the "
    "integrated circuit made them smaller and cheaper. The most important trend of the coming "
    "decade is",
};

// Three more for the XKV text comparison (EngineXkvTest), chosen before any run: a dialogue, a
// recipe list and an explanation.
const char* const kMorePrompts[] = {
    "Customer: Hello, I ordered a pair of hiking boots two weeks ago and they still have not "
    "arrived. The order number is 48213. Can you tell me where they are?\nAgent:",
    "A simple recipe for pancakes. Ingredients: 200 grams of flour, two eggs, 300 millilitres of "
    "milk, a pinch of salt and a spoonful of butter. Steps: 1. Whisk the flour and the salt in a "
    "bowl. 2.",
    "Why is the sky blue? Sunlight contains every colour, and when it enters the atmosphere it "
    "meets molecules of nitrogen and oxygen that are much smaller than its wavelength. Because",
};

constexpr xkv::v1::SequenceMode kObserve = xkv::v1::SEQUENCE_MODE_OBSERVE;
constexpr xkv::v1::SequenceMode kScoresOnly = xkv::v1::SEQUENCE_MODE_SCORES_ONLY;

xkv::v1::StepSequence Prefill(uint64_t id, const std::vector<int32_t>& prompt,
                              xkv::v1::SequenceMode mode) {
  xkv::v1::StepSequence s = testing::PrefillSequence(id, prompt, mode);
  s.set_return_logits(mode != kScoresOnly);
  return s;
}

double RelDiff(const std::vector<float>& got, const std::vector<float>& want) {
  const auto [lo, hi] = std::minmax_element(want.begin(), want.end());
  double worst = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    worst = std::max(worst, std::fabs(double(got[i]) - want[i]));
  }
  return worst / std::max(1e-30, double(*hi) - *lo);
}

using gpu_test::TopTwoMargin;

struct GenRun {
  std::vector<int32_t> tokens;             // greedy continuation
  std::vector<std::vector<float>> logits;  // the logits behind each token
  std::vector<xkv::v1::LayerGains> gains;  // observed profile
  std::vector<xkv::v1::LayerSize> sizes;   // after compaction
};

std::unique_ptr<StageExecutor> MakeStage(const std::string& device) {
  StageOptions o;
  o.model_path = ModelPath();
  o.device = device;
  o.numerics = Numerics::kExact;
  o.num_threads = 2;
  o.kv_capacity_blocks = 256;
  o.importance.window = kWindow;
  absl::StatusOr<std::unique_ptr<StageExecutor>> s = StageExecutor::Load(o, nullptr);
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? *std::move(s) : nullptr;
}

// Observed prefill; `spec` (when given) compacts right after; then greedy decoding.
GenRun Generate(StageExecutor& stage, uint64_t id, const std::vector<int32_t>& prompt,
                const std::optional<xkv::v1::CompactSpec>& spec) {
  GenRun r;
  absl::StatusOr<xkv::v1::StepResponse> got =
      stage.Step(testing::MakeStep(id * 100, {Prefill(id, prompt, kObserve)}));
  EXPECT_TRUE(got.ok()) << got.status();
  if (!got.ok()) return r;
  const xkv::v1::SequenceResult& first = got->sequences(0);
  r.gains.assign(first.observed().layers().begin(), first.observed().layers().end());
  r.tokens.push_back(first.token());
  r.logits.push_back(testing::LogitsOf(first));
  if (spec.has_value()) {
    xkv::v1::CompactRequest request;
    request.set_seq_id(id);
    *request.mutable_compact() = *spec;
    absl::StatusOr<xkv::v1::CompactResponse> c = stage.Compact(request);
    EXPECT_TRUE(c.ok()) << c.status();
    if (c.ok()) r.sizes.assign(c->layers().begin(), c->layers().end());
  }
  for (int t = 1; t < kGenTokens; ++t) {
    const int64_t pos = static_cast<int64_t>(prompt.size()) + t - 1;
    got = stage.Step(
        testing::MakeStep(id * 100 + t, {testing::DecodeSequence(id, r.tokens.back(), pos)}));
    EXPECT_TRUE(got.ok()) << got.status();
    if (!got.ok()) return r;
    r.tokens.push_back(got->sequences(0).token());
    r.logits.push_back(testing::LogitsOf(got->sequences(0)));
  }
  stage.Release(testing::MakeRelease({id}));
  return r;
}

class GpuStageTest : public ::testing::TestWithParam<bool> {};  // param: XKV 25% (else full)

TEST_P(GpuStageTest, GreedyMatchesCpuStage) {
  XKV_SKIP_WITHOUT_GPU();
  struct stat st;
  if (stat(ModelPath().c_str(), &st) != 0) GTEST_SKIP() << "no model at " << ModelPath();
  const bool xkv = GetParam();
  absl::StatusOr<LoadedModel> loaded = LoadModel(ModelPath(), 1, Numerics::kExact);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  std::unique_ptr<StageExecutor> cpu = MakeStage("cpu"), gpu = MakeStage("cuda:0");
  ASSERT_NE(cpu, nullptr);
  ASSERT_NE(gpu, nullptr);
  const int L = loaded->config.n_layers;
  uint64_t id = 1;
  for (const char* text : kPrompts) {
    absl::StatusOr<std::vector<int32_t>> prompt = loaded->tokenizer->Encode(text, false);
    ASSERT_TRUE(prompt.ok()) << prompt.status();
    const int64_t P = static_cast<int64_t>(prompt->size()) - kWindow;
    // Budgets: the CPU stage's profile (a scores-only pass) solved for 25% of the prefix.
    std::optional<xkv::v1::CompactSpec> spec;
    if (xkv) {
      const xkv::v1::StatusResponse before = gpu->status();
      const xkv::v1::StepRequest probe =
          testing::MakeStep(id * 100 + 99, {Prefill(id, *prompt, kScoresOnly)});
      absl::StatusOr<xkv::v1::StepResponse> cpu_probe = cpu->Step(probe);
      absl::StatusOr<xkv::v1::StepResponse> gpu_probe = gpu->Step(probe);
      ASSERT_TRUE(cpu_probe.ok()) << cpu_probe.status();
      ASSERT_TRUE(gpu_probe.ok()) << gpu_probe.status();
      EXPECT_EQ(gpu->status().usage().blocks_used(), before.usage().blocks_used());
      EXPECT_EQ(gpu->CacheLength(id, 0), 0);
      std::vector<LayerProfile> profiles;
      for (const xkv::v1::LayerGains& c : cpu_probe->sequences(0).observed().layers()) {
        absl::StatusOr<LayerProfile> lp =
            LayerProfileFromGains({c.gains().begin(), c.gains().end()});
        ASSERT_TRUE(lp.ok()) << lp.status();
        profiles.push_back(*std::move(lp));
      }
      absl::StatusOr<BudgetResult> solved = SolveForTotalTokens(profiles, P * L / 4);
      ASSERT_TRUE(solved.ok()) << solved.status();
      spec.emplace();
      spec->mutable_selection()->set_policy("xkv");
      for (int l = 0; l < L; ++l) {
        xkv::v1::LayerBudget* b = spec->add_budgets();
        b->set_layer(l);
        b->set_kept_prefix(solved->budgets[l]);
      }
      cpu->Release(testing::MakeRelease({id}));
      gpu->Release(testing::MakeRelease({id}));
    }
    const GenRun want = Generate(*cpu, id, *prompt, spec);
    const GenRun got = Generate(*gpu, id, *prompt, spec);
    ++id;
    ASSERT_EQ(got.tokens.size(), want.tokens.size());
    ASSERT_EQ(got.gains.size(), want.gains.size());
    double worst_gain = 0;
    for (size_t l = 0; l < want.gains.size(); ++l) {
      double l1 = 0;
      for (int k = 0; k < want.gains[l].gains_size(); ++k) {
        l1 += std::fabs(got.gains[l].gains(k) - want.gains[l].gains(k));
      }
      worst_gain = std::max(worst_gain, l1);
    }
    EXPECT_LE(worst_gain, 0.02) << text;
    if (xkv) {
      ASSERT_EQ(got.sizes.size(), static_cast<size_t>(L));
      for (int l = 0; l < L; ++l) {
        EXPECT_EQ(got.sizes[l].tokens(), spec->budgets(l).kept_prefix() + kWindow) << l;
        EXPECT_EQ(want.sizes[l].tokens(), got.sizes[l].tokens()) << l;
      }
    }
    const double first = RelDiff(got.logits[0], want.logits[0]);
    EXPECT_LE(first, kRelTol) << text;
    EXPECT_EQ(got.tokens[0], want.tokens[0]) << text;
    int decided = 0;  // leading steps before the CPU's first near-tie
    while (decided < kGenTokens && TopTwoMargin(want.logits[decided]) >= kTieMargin) ++decided;
    int agree = 0;
    while (agree < kGenTokens && got.tokens[agree] == want.tokens[agree]) ++agree;
    if (!xkv) {
      EXPECT_EQ(agree, kGenTokens) << text;  // observed 32/32 on every prompt (H100)
    }
    EXPECT_GE(agree, decided) << text;
    std::printf(
        "[gpu_stage] %s, %zu-token prompt: greedy agreement %d/%d (first CPU near-tie at %d); "
        "first-token max|dlogit| %.4f of range; worst gain-curve L1 %.4f\n",
        xkv ? "xkv 25%" : "full", prompt->size(), agree, kGenTokens, decided, first, worst_gain);
  }
  EXPECT_EQ(gpu->status().usage().blocks_used(), 0);
}

INSTANTIATE_TEST_SUITE_P(Cache, GpuStageTest, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& i) {
                           return i.param ? "Xkv25" : "Full";
                         });

// Whole model through the StageEngine interface: prefill (observed), then kGenTokens greedy
// tokens — or, with `forced`, fed those tokens instead of its own (teacher forcing).
struct EngineRun {
  std::vector<int32_t> tokens;
  std::vector<std::vector<float>> logits;  // behind each token
  std::optional<CollectedScores> scores;
};

absl::StatusOr<std::vector<float>> EngineStepLogits(StageEngine& e, uint64_t id,
                                                    absl::Span<const int32_t> toks,
                                                    int64_t position, bool observe,
                                                    std::optional<CollectedScores>* scores) {
  ASSIGN_OR_RETURN(std::vector<float> hidden, e.Embed(toks));
  EngineStep step;
  step.sequences.push_back({id, static_cast<int64_t>(toks.size()), position, observe});
  ImportanceOptions imp;
  imp.window = kWindow;
  std::vector<EngineObservation> obs;
  RETURN_IF_ERROR(e.RunLayers(step, imp, absl::MakeSpan(hidden), &obs));
  if (scores != nullptr) *scores = obs[0].scores;
  const int64_t last = static_cast<int64_t>(toks.size()) - 1;
  return e.Logits(hidden, {&last, 1});
}

// Prefill; `plan` (when given) evicts with its kept slots; then decoding.
absl::StatusOr<EngineRun> EngineGenerate(StageEngine& e, uint64_t id,
                                         const std::vector<int32_t>& prompt,
                                         const AllocationPlan* plan,
                                         const std::vector<int32_t>* forced = nullptr) {
  EngineRun r;
  ASSIGN_OR_RETURN(std::vector<float> logits, EngineStepLogits(e, id, prompt, 0, true, &r.scores));
  if (plan != nullptr) {
    for (int l = e.layer_begin(); l < e.layer_end(); ++l) {
      RETURN_IF_ERROR(e.CompactLayer(id, l, prompt.size(), plan->kept[l - plan->layer_begin]));
    }
  }
  for (int t = 0; t < kGenTokens; ++t) {
    r.tokens.push_back(Argmax(logits));
    r.logits.push_back(std::move(logits));
    if (t + 1 == kGenTokens) break;
    const int32_t feed = forced != nullptr ? (*forced)[t] : r.tokens.back();
    ASSIGN_OR_RETURN(logits,
                     EngineStepLogits(e, id, {&feed, 1}, prompt.size() + t, false, nullptr));
  }
  e.ReleaseSequence(id);
  return r;
}

std::unique_ptr<StageEngine> MakeEngine(const std::string& device,
                                        Numerics numerics = Numerics::kExact) {
  StageOptions o;
  o.model_path = ModelPath();
  o.device = device;
  o.numerics = numerics;
  o.num_threads = 2;
  o.kv_capacity_blocks = 256;
  absl::StatusOr<std::unique_ptr<StageEngine>> e = LoadStageEngine(o);
  EXPECT_TRUE(e.ok()) << e.status();
  return e.ok() ? *std::move(e) : nullptr;
}

// XKV at 25% with the same eviction on both devices (kept slots from the CPU's scores), on 8
// prompts, against the fp32 CPU engine and the bf16-numerics one (the GPU's rounding of weights,
// GEMM inputs and K/V, and the tensor-core flash prefill's bf16 Q and P over 64-key tiles:
// cpu::AttentionShape::emulate_bf16_flash). Teacher-forced checks as described at the top; a
// free-running text may part from the CPU's only at a CPU near-tie; against the bf16 reference at
// least 5 prompts give identical 32-token texts (issue 5's criterion). What remains between the
// two is fp32 summation order and the device's approximate exp2.
class EngineXkvTest : public ::testing::TestWithParam<bool> {};  // param: bf16 CPU reference

TEST_P(EngineXkvTest, SameKeptSlotsGiveTheCpuText) {
  XKV_SKIP_WITHOUT_GPU();
  struct stat st;
  if (stat(ModelPath().c_str(), &st) != 0) GTEST_SKIP() << "no model at " << ModelPath();
  absl::StatusOr<LoadedModel> loaded = LoadModel(ModelPath(), 1, Numerics::kExact);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  const bool bf16 = GetParam();
  std::unique_ptr<StageEngine> cpu = MakeEngine("cpu", bf16 ? Numerics::kBf16 : Numerics::kExact);
  std::unique_ptr<StageEngine> gpu = MakeEngine("cuda:0");
  ASSERT_TRUE(cpu && gpu);
  const int L = loaded->config.n_layers;
  uint64_t id = 1;
  std::vector<const char*> texts(std::begin(kPrompts), std::end(kPrompts));
  texts.insert(texts.end(), std::begin(kMorePrompts), std::end(kMorePrompts));
  int identical = 0;
  for (const char* text : texts) {
    absl::StatusOr<std::vector<int32_t>> prompt = loaded->tokenizer->Encode(text, false);
    ASSERT_TRUE(prompt.ok()) << prompt.status();
    const int64_t P = static_cast<int64_t>(prompt->size()) - kWindow;
    // The CPU's own run decides the eviction (its scores, the XKV solver at 25% of the prefix).
    absl::StatusOr<EngineRun> probe = EngineGenerate(*cpu, id++, *prompt, nullptr);
    ASSERT_TRUE(probe.ok()) << probe.status();
    KvSettings spec;
    spec.policy = PolicyKind::kXkv;
    spec.target = KvTarget::Tokens(P * L / 4);
    absl::StatusOr<AllocationPlan> plan = PlanAllocation(*probe->scores, loaded->config, spec);
    ASSERT_TRUE(plan.ok()) << plan.status();
    ASSERT_TRUE(plan->compress);
    absl::StatusOr<EngineRun> want = EngineGenerate(*cpu, id, *prompt, &*plan);
    ASSERT_TRUE(want.ok()) << want.status();
    absl::StatusOr<EngineRun> got = EngineGenerate(*gpu, id, *prompt, &*plan);
    ASSERT_TRUE(got.ok()) << got.status();
    absl::StatusOr<EngineRun> forced = EngineGenerate(*gpu, id, *prompt, &*plan, &want->tokens);
    ASSERT_TRUE(forced.ok()) << forced.status();
    ++id;
    int agree = 0;
    while (agree < kGenTokens && got->tokens[agree] == want->tokens[agree]) ++agree;
    identical += agree == kGenTokens;
    // Free-running texts may only part where the CPU itself nearly tied.
    if (agree < kGenTokens) {
      EXPECT_LT(TopTwoMargin(want->logits[agree]), kTieMargin) << text << " parts at " << agree;
    }
    // Teacher-forced: every step's logits close; the argmax equal wherever the CPU's choice is
    // not a near-tie.
    const auto [worst, decided, decided_equal] = gpu_test::CompareForced(
        forced->logits, forced->tokens, want->logits, want->tokens, kTieMargin);
    EXPECT_LE(worst, kRelTol) << text;
    EXPECT_EQ(decided_equal, decided) << text;
    std::printf(
        "[engine_xkv] %s reference, %zu-token prompt, %lld of %lld prefix tokens kept over %d "
        "layers: "
        "free-running greedy agreement %d/%d; teacher-forced max|dlogit| %.4f of range, "
        "argmax equal on %d/%d decided steps\n",
        bf16 ? "bf16" : "fp32", prompt->size(), static_cast<long long>(plan->budgets.total_tokens),
        static_cast<long long>(P * L), L, agree, kGenTokens, worst, decided_equal, decided);
  }
  std::printf("[engine_xkv] %s reference: %d of %zu prompts identical for %d tokens\n",
              bf16 ? "bf16" : "fp32", identical, texts.size(), kGenTokens);
  // Issue 5: greedy output equal on >= 5 prompts with XKV at 25%, against the CPU reference of
  // the GPU's numerics (kBf16: bf16 weights, GEMM inputs and K/V, the flash kernel's rounding).
  if (bf16) {
    EXPECT_GE(identical, 5);
  }
}

INSTANTIATE_TEST_SUITE_P(Reference, EngineXkvTest, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& i) {
                           return i.param ? "Bf16Cpu" : "Fp32Cpu";
                         });

// A mini-prefill (scores only) split over two GPU stages scores every layer exactly as one stage
// does: the first stage must hand on its layers' output rows even though the step keeps no KV.
TEST(GpuStageSplit, ScoresOnlyOverTwoStagesEqualsOneStage) {
  XKV_SKIP_WITHOUT_GPU();
  struct stat st;
  if (stat(ModelPath().c_str(), &st) != 0) GTEST_SKIP() << "no model at " << ModelPath();
  absl::StatusOr<LoadedModel> loaded = LoadModel(ModelPath(), 1, Numerics::kExact);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  const int L = loaded->config.n_layers, mid = L / 2;
  auto make = [&](int begin, int end) {
    StageOptions o;
    o.model_path = ModelPath();
    o.device = "cuda:0";
    o.layer_begin = begin;
    o.layer_end = end;
    o.kv_capacity_blocks = 64;
    absl::StatusOr<std::unique_ptr<StageEngine>> e = LoadStageEngine(o);
    EXPECT_TRUE(e.ok()) << e.status();
    return e.ok() ? *std::move(e) : nullptr;
  };
  std::unique_ptr<StageEngine> whole = make(0, L), first = make(0, mid), second = make(mid, L);
  ASSERT_TRUE(whole && first && second);
  absl::StatusOr<std::vector<int32_t>> prompt = loaded->tokenizer->Encode(kPrompts[3], false);
  ASSERT_TRUE(prompt.ok());
  EngineStep step;
  step.scores_only = true;
  step.sequences.push_back({1, static_cast<int64_t>(prompt->size()), 0, true});
  ImportanceOptions imp;
  imp.window = kWindow;
  auto run = [&](StageEngine& e, std::vector<float>& hidden) {
    std::vector<EngineObservation> obs;
    absl::Status s = e.RunLayers(step, imp, absl::MakeSpan(hidden), &obs);
    EXPECT_TRUE(s.ok()) << s;
    return s.ok() ? *obs[0].scores : CollectedScores{};
  };
  absl::StatusOr<std::vector<float>> h1 = whole->Embed(*prompt), h2 = first->Embed(*prompt);
  ASSERT_TRUE(h1.ok() && h2.ok());
  const CollectedScores want = run(*whole, *h1);
  run(*first, *h2);
  const CollectedScores got = run(*second, *h2);
  for (int l = mid; l < L; ++l) EXPECT_EQ(got.layer(l), want.layer(l)) << "layer " << l;
  EXPECT_EQ(whole->CacheLength(1, 0), 0);  // scores only: nothing kept
  EXPECT_EQ(second->CacheLength(1, L - 1), 0);
}

// Sequences of one step keep their own scoring (EngineSequenceStep::scoring, each request's
// policy's as the service sends it): in a scores-only step of two prompts, one scored as the
// default xkv (maxima, max pooling over 31) and one with the step's (SnapKV's), each gets exactly
// the scores of the same step run with its scoring for both.
TEST(GpuStageSplit, SequencesOfOneStepKeepTheirOwnScoring) {
  XKV_SKIP_WITHOUT_GPU();
  struct stat st;
  if (stat(ModelPath().c_str(), &st) != 0) GTEST_SKIP() << "no model at " << ModelPath();
  absl::StatusOr<LoadedModel> loaded = LoadModel(ModelPath(), 1, Numerics::kExact);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  StageOptions o;
  o.model_path = ModelPath();
  o.device = "cuda:0";
  o.kv_capacity_blocks = 64;
  absl::StatusOr<std::unique_ptr<StageEngine>> engine = LoadStageEngine(o);
  ASSERT_TRUE(engine.ok()) << engine.status();
  absl::StatusOr<std::vector<int32_t>> a = loaded->tokenizer->Encode(kPrompts[3], false);
  absl::StatusOr<std::vector<int32_t>> b = loaded->tokenizer->Encode(kPrompts[2], false);
  ASSERT_TRUE(a.ok() && b.ok());
  std::vector<int32_t> tokens = *a;
  tokens.insert(tokens.end(), b->begin(), b->end());
  ImportanceOptions snapkv, xkv;
  snapkv.window = xkv.window = kWindow;
  xkv.reduce = ScoreReduce::kMax;
  xkv.pool = ScorePool::kMax;
  xkv.pool_kernel = 31;
  auto run = [&](std::optional<ImportanceOptions> first, const ImportanceOptions& step_scoring) {
    EngineStep step;
    step.scores_only = true;
    step.sequences.push_back({1, static_cast<int64_t>(a->size()), 0, true});
    step.sequences.back().scoring = first;
    step.sequences.push_back({2, static_cast<int64_t>(b->size()), 0, true});
    std::vector<EngineObservation> obs;
    absl::StatusOr<std::vector<float>> hidden = (*engine)->Embed(tokens);
    EXPECT_TRUE(hidden.ok()) << hidden.status();
    absl::Status s = (*engine)->RunLayers(step, step_scoring, absl::MakeSpan(*hidden), &obs);
    EXPECT_TRUE(s.ok()) << s;
    return obs;
  };
  const std::vector<EngineObservation> mixed = run(xkv, snapkv), all_xkv = run(std::nullopt, xkv),
                                       all_snapkv = run(std::nullopt, snapkv);
  ASSERT_TRUE(mixed.size() == 2 && all_xkv.size() == 2 && all_snapkv.size() == 2);
  for (int l = 0; l < loaded->config.n_layers; ++l) {
    EXPECT_EQ(mixed[0].scores->layer(l), all_xkv[0].scores->layer(l)) << "layer " << l;
    EXPECT_EQ(mixed[1].scores->layer(l), all_snapkv[1].scores->layer(l)) << "layer " << l;
  }
  EXPECT_NE(all_xkv[0].scores->layer(0), all_snapkv[0].scores->layer(0));
  EXPECT_EQ((*engine)->CacheLength(1, 0), 0);  // scores only: nothing kept
}

// Bad devices are clear errors, never a crash.
TEST(GpuStageErrors, BadDevice) {
  StageOptions o;
  o.model_path = ModelPath();
  for (const char* d : {"cuda:99", "gpu", "cuda:-1"}) {
    o.device = d;
    absl::StatusOr<std::unique_ptr<StageExecutor>> s = StageExecutor::Load(o, nullptr);
    EXPECT_FALSE(s.ok()) << d;
  }
}

}  // namespace
}  // namespace xkv
