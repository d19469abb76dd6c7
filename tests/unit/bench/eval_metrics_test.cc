#include "bench/eval_metrics.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "bench/eval_report.h"
#include "bench/eval_runner.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace xkv {
namespace {

using ::testing::HasSubstr;

TEST(EvalMetricsTest, LogSoftmaxMatchesHandValues) {
  const std::vector<float> logits = {0.f, std::log(3.f)};
  const std::vector<double> l = LogSoftmax(logits);
  EXPECT_NEAR(std::exp(l[0]), 0.25, 1e-7);
  EXPECT_NEAR(std::exp(l[1]), 0.75, 1e-7);
  // Shift invariance with large logits (no overflow).
  const std::vector<double> big = LogSoftmax(std::vector<float>{1000.f, 1000.f + std::log(3.f)});
  EXPECT_NEAR(std::exp(big[1]), 0.75, 1e-5);
}

TEST(EvalMetricsTest, KlDivergenceMatchesHandValue) {
  // p = (1/2, 1/2), q = (1/4, 3/4): KL = 1/2 ln 2 + 1/2 ln(2/3) = 1/2 ln(4/3).
  const std::vector<float> p = {0.f, 0.f}, q = {0.f, std::log(3.f)};
  EXPECT_NEAR(KlDivergence(p, q), 0.5 * std::log(4.0 / 3.0), 1e-6);
  // Asymmetric: KL(q || p) = 1/4 ln(1/2) + 3/4 ln(3/2).
  EXPECT_NEAR(KlDivergence(q, p), 0.25 * std::log(0.5) + 0.75 * std::log(1.5), 1e-6);
  EXPECT_EQ(KlDivergence(q, q), 0.0);
}

TEST(EvalMetricsTest, FidelityAgreementAndMeanKl) {
  const float l3 = std::log(3.f);
  // 3 steps, vocab 2. Reference greedy tokens of the full run: 1, 0, 1.
  const std::vector<float> full = {0.f, l3, l3, 0.f, 0.f, 1.f};
  const std::vector<float> comp = {0.f, l3, 0.f, l3, 0.f, 0.f};  // argmax 1, 1, 0 (tie: low id)
  const std::vector<int32_t> ref = {1, 0, 1};
  absl::StatusOr<FidelityScore> s = ScoreFidelity(full, comp, ref, 2);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->steps, 3);
  EXPECT_NEAR(s->agreement, 1.0 / 3.0, 1e-12);                           // only step 0 agrees
  const double kl1 = 0.75 * std::log(3.0) + 0.25 * std::log(1.0 / 3.0);  // (3/4,1/4)||(1/4,3/4)
  const double e = std::exp(1.0), z = 1.0 + e;
  const double kl2 = (1.0 / z) * std::log(2.0 / z) + (e / z) * std::log(2.0 * e / z);
  EXPECT_NEAR(s->mean_kl, (0.0 + kl1 + kl2) / 3.0, 1e-6);
  // NLL of the true tokens under the compressed run: p = 3/4, 1/4, 1/2.
  EXPECT_NEAR(s->mean_nll, -(std::log(0.75) + std::log(0.25) + std::log(0.5)) / 3.0, 1e-6);
}

TEST(EvalMetricsTest, FidelityRejectsBadSizes) {
  const std::vector<float> a = {0.f, 1.f}, b = {0.f};
  const std::vector<int32_t> ref = {1};
  EXPECT_EQ(ScoreFidelity(a, b, ref, 2).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ScoreFidelity(a, a, {}, 2).status().code(), absl::StatusCode::kInvalidArgument);
  const std::vector<int32_t> out_of_vocab = {2};
  EXPECT_EQ(ScoreFidelity(a, a, out_of_vocab, 2).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(EvalRunnerTest, BudgetTokensAreBytesFractionsMinusTheWindow) {
  // 30 layers, T = 1000, w = 8: 20% of 30*1000 token slots = 6000, minus 30*8 window slots.
  EXPECT_EQ(BudgetTokens(0.2, 30, 1000, 8), 5760);
  EXPECT_EQ(BudgetTokens(1.0, 30, 1000, 8), 30 * 992);  // clamped to the whole prefix
  EXPECT_EQ(BudgetTokens(0.001, 30, 1000, 8), 0);       // never negative
  EXPECT_EQ(BudgetTokens(0.5, 30, 5, 8), 0);            // nothing to evict
}

EvalRow Row(const std::string& method, double budget, QueryMode mode, bool correct,
            double agreement, double kl) {
  EvalRow r;
  r.prompt_id = "p";
  r.task = "niah_number";
  r.method = method;
  r.budget = budget;
  r.mode = mode;
  r.correct = correct;
  r.fidelity = FidelityScore{agreement, kl, 2 * kl, 32};
  r.kv_bytes_full = 1000;
  r.kv_bytes_held = static_cast<int64_t>(1000 * budget);
  r.target_tokens = 1024;
  return r;
}

TEST(EvalReportTest, SummarizeGroupsByMethodAndBudget) {
  const std::vector<EvalRow> rows = {Row("full", 1.0, QueryMode::kAware, true, 1, 0),
                                     Row("full", 1.0, QueryMode::kAgnostic, true, 1, 0),
                                     Row("xkv", 0.2, QueryMode::kAware, true, 0.5, 0.2),
                                     Row("xkv", 0.2, QueryMode::kAgnostic, false, 0.25, 0.4)};
  const std::vector<EvalSummary> s = Summarize(rows);
  ASSERT_EQ(s.size(), 2u);
  EXPECT_EQ(s[1].method, "xkv");
  EXPECT_EQ(s[1].rows, 2);
  EXPECT_DOUBLE_EQ(s[1].accuracy, 0.5);
  EXPECT_DOUBLE_EQ(s[1].accuracy_aware, 1.0);
  EXPECT_DOUBLE_EQ(s[1].accuracy_agnostic, 0.0);
  EXPECT_DOUBLE_EQ(s[1].agreement, 0.375);
  EXPECT_NEAR(s[1].kl, 0.3, 1e-12);
  EXPECT_NEAR(s[1].nll, 0.6, 1e-12);
  EXPECT_NEAR(s[1].kv_percent, 20.0, 1e-9);
  const std::string md = SummaryMarkdown(rows, RunInfo{});
  EXPECT_THAT(md, HasSubstr("| xkv | 20% | 20.0 | 1.000 [1.00, 1.00] | 0.000 [0.00, 0.00] | "
                            "0.500 [0.50, 0.50] | 50.0% | 0.375 | 0.3000 | 0.600 |"));
  EXPECT_THAT(md, HasSubstr("MISSES the ≥ 99% goal"));
  EXPECT_THAT(md, HasSubstr("Every task is in the headline table"));
}

TEST(EvalReportTest, TasksTheFullCacheFailsLeaveTheHeadline) {
  std::vector<EvalRow> rows;
  for (int i = 0; i < 4; ++i) {  // cwe: full right 1 of 4 (< 50%); niah: 2 of 4 (kept)
    EvalRow a = Row("full", 1.0, QueryMode::kAware, i == 0, 1, 0);
    a.task = "cwe";
    a.prompt_id = absl::StrCat("c", i);
    EvalRow b = Row("full", 1.0, QueryMode::kAware, i < 2, 1, 0);
    b.prompt_id = absl::StrCat("n", i);
    rows.push_back(a);
    rows.push_back(b);
  }
  EXPECT_EQ(WeakTasks(rows, kMinFullAccuracy), std::vector<std::string>{"cwe"});
  const std::string md = SummaryMarkdown(rows, RunInfo{});
  EXPECT_THAT(md, HasSubstr("Dropped from the headline table"));
  EXPECT_THAT(md, HasSubstr("| full | — | 100.0 | 0.500"));  // the headline: niah only
  EXPECT_THAT(md, HasSubstr("| method | budget | cwe | niah_number |"));
}

TEST(EvalReportTest, CsvQuotesAnswers) {
  EvalRow r = Row("snapkv", 0.1, QueryMode::kAgnostic, false, 0.5, 0.1);
  r.answer = "say \"hi\", then\nstop";
  const std::string line = CsvLine(r);
  EXPECT_THAT(line, HasSubstr("\"say \"\"hi\"\", then\\nstop\""));
  const std::string header = CsvHeader();
  EXPECT_EQ(std::count(header.begin(), header.end(), ','), 18);
  EXPECT_EQ(std::count(line.begin(), line.end(), ','), 18 + 1);  // + the comma inside the quotes
  r.fidelity.reset();  // no continuation: empty fidelity fields
  EXPECT_THAT(CsvLine(r), ::testing::EndsWith(",0,,,,0"));
}

TEST(EvalReportTest, BootstrapIntervalCoversTheMeanAndShrinksWithMorePrompts) {
  std::vector<double> few = {0, 1, 1, 0, 1}, many;
  for (int i = 0; i < 200; ++i) many.push_back(i % 5 < 3 ? 1.0 : 0.0);
  const Interval a = BootstrapMeanCi(few), b = BootstrapMeanCi(many);
  EXPECT_LE(a.low, 0.6);
  EXPECT_GE(a.high, 0.6);
  EXPECT_LE(b.low, 0.6);
  EXPECT_GE(b.high, 0.6);
  EXPECT_LT(b.high - b.low, a.high - a.low);
  EXPECT_EQ(BootstrapMeanCi(few).low, a.low);  // deterministic
  EXPECT_EQ(BootstrapMeanCi({}).high, 0.0);
}

TEST(EvalRunnerTest, NamedBaselinesAreParametersOfSnapKvAndPyramidKv) {
  ImportanceOptions base;
  base.window = 16;
  // AdaKV(SnapKV): SnapKV's scores, each layer's budget split over its heads, alpha = 0.2.
  auto ada = ParseEvalMethod("adakv", base);
  ASSERT_TRUE(ada.ok()) << ada.status();
  EXPECT_EQ(ada->name, "adakv");
  EXPECT_EQ(ada->kv.policy, PolicyKind::kSnapKv);
  EXPECT_TRUE(ada->kv.allocator.per_head);
  EXPECT_DOUBLE_EQ(ada->kv.allocator.floor, 0.2);
  EXPECT_EQ(ada->scoring.window, 16);  // ours: the run's window and pooling kernel
  EXPECT_EQ(ada->scoring.pool_kernel, 7);
  EXPECT_EQ(ada->scoring.reduce, ScoreReduce::kSum);
  EXPECT_EQ(ada->scoring.pool, ScorePool::kAvg);
  // kvpress's settings: window 64, pooling kernel 5 (its AdaKV wraps its SnapKV).
  for (const char* name : {"snapkv@kvpress", "pyramidkv@kvpress", "adakv@kvpress"}) {
    auto m = ParseEvalMethod(name, base);
    ASSERT_TRUE(m.ok()) << name << ": " << m.status();
    EXPECT_EQ(m->name, name);
    EXPECT_EQ(m->scoring.window, 64) << name;
    EXPECT_EQ(m->scoring.pool_kernel, 5) << name;
    EXPECT_EQ(m->scoring.pool, ScorePool::kAvg) << name;
  }
  EXPECT_EQ(ParseEvalMethod("pyramidkv@kvpress", base)->kv.policy, PolicyKind::kPyramidKv);
  EXPECT_TRUE(ParseEvalMethod("adakv@kvpress", base)->kv.allocator.per_head);
  EXPECT_EQ(ParseEvalMethod("streaming@kvpress", base)->kv.policy, PolicyKind::kStreaming);
  // Parameters after an alias override it.
  auto ada5 = ParseEvalMethod("adakv:floor=0.5:window=32", base);
  ASSERT_TRUE(ada5.ok()) << ada5.status();
  EXPECT_DOUBLE_EQ(ada5->kv.allocator.floor, 0.5);
  EXPECT_EQ(ada5->scoring.window, 32);
  EXPECT_THAT(ParseEvalMethod("adakvx", base).status().message(),
              HasSubstr("unknown method 'adakvx'; allowed: full, streaming, snapkv, pyramidkv, "
                        "adakv"));
}

TEST(EvalRunnerTest, XkvPoolsItsWindowScoresWithItsOwnKernel) {
  ImportanceOptions base;  // pool kernel 7: the baselines' (SnapKV's)
  auto x = ParseEvalMethod("xkv", base);
  ASSERT_TRUE(x.ok()) << x.status();
  EXPECT_EQ(x->scoring.pool_kernel, kXkvPoolKernel);
  EXPECT_EQ(kXkvPoolKernel, 31);  // chosen on the dev split (docs/quality-allocators.md)
  EXPECT_EQ(x->scoring.window, 8);
  EXPECT_EQ(x->scoring.pool, ScorePool::kMax);
  EXPECT_EQ(x->kv.sink_tokens, 4);
  EXPECT_DOUBLE_EQ(x->kv.allocator.floor, 0.75);
  EXPECT_FALSE(x->kv.allocator.per_head);
  EXPECT_DOUBLE_EQ(x->kv.allocator.recent, 0.0);
  EXPECT_EQ(ParseEvalMethod("xkv:kernel=7", base)->scoring.pool_kernel, 7);
  EXPECT_EQ(ParseEvalMethod("snapkv", base)->scoring.pool_kernel, 7);
  EXPECT_EQ(ParseEvalMethod("paper", base)->scoring.pool_kernel, 7);
}

// THE scoring rule (ScoringFor, model/kv_allocation.h) gives a service request — its policy
// override (or the admin's default) applied to the service's defaults, as the coordinator resolves
// it — the scoring `xkv eval` gives the method of the same policy, allocator and profile.
TEST(EvalRunnerTest, ServiceRequestsScoreAsTheEvalMethodOfTheirPolicy) {
  ImportanceOptions base;  // the service's: window 8, the baselines' kernel 7, per KV head
  struct Case {
    const char* method;   // `xkv eval --methods`
    KvPolicyOverride kv;  // the Generate request's kv_policy / the admin's SetPolicy
    ScoreReduce reduce;
    ScorePool pool;
    int kernel;
  };
  const auto kv = [](const char* policy, const char* profile = "", const char* allocator = "",
                     bool per_head = false) {
    KvPolicyOverride o;
    o.policy = policy;
    o.profile_mode = profile;
    o.allocator = allocator;
    if (per_head) o.per_head = true;
    return o;
  };
  const Case cases[] = {
      {"xkv", kv("xkv"), ScoreReduce::kMax, ScorePool::kMax, kXkvPoolKernel},
      {"xkv:profile=one_pass", kv("xkv", "one_pass"), ScoreReduce::kMax, ScorePool::kMax,
       kXkvPoolKernel},
      {"xkv:profile=per_request", kv("xkv", "sampled:0.5"), ScoreReduce::kMax, ScorePool::kMax,
       kXkvPoolKernel},
      {"xkv:per_head=1", kv("xkv", "", "", true), ScoreReduce::kMax, ScorePool::kMax,
       kXkvPoolKernel},
      // A reconstruct request's window (observed at its prefill; ranked only if the request is
      // preempted after it has generated) scores as eval's mix=max scores its window.
      {"xkv:profile=reconstruct:mix=max", kv("xkv", "reconstruct"), ScoreReduce::kMax,
       ScorePool::kMax, 7},
      {"paper", kv("xkv", "", "paper"), ScoreReduce::kSum, ScorePool::kAvg, 7},
      {"xkv:allocator=paper", kv("xkv", "one_pass", "paper"), ScoreReduce::kSum, ScorePool::kAvg,
       7},
      {"snapkv", kv("snapkv"), ScoreReduce::kSum, ScorePool::kAvg, 7},
      {"snapkv:profile=reconstruct:mix=max", kv("snapkv", "reconstruct"), ScoreReduce::kSum,
       ScorePool::kAvg, 7},
      {"pyramidkv", kv("pyramidkv"), ScoreReduce::kSum, ScorePool::kAvg, 7},
  };
  for (const Case& c : cases) {
    auto method = ParseEvalMethod(c.method, base);
    ASSERT_TRUE(method.ok()) << c.method << ": " << method.status();
    auto spec = ApplyOverride(KvSettings{}, c.kv);
    ASSERT_TRUE(spec.ok()) << c.method << ": " << spec.status();
    const ImportanceOptions service = ScoringFor(*spec, base);
    for (const ImportanceOptions& o : {method->scoring, service}) {
      EXPECT_EQ(o.reduce, c.reduce) << c.method;
      EXPECT_EQ(o.pool, c.pool) << c.method;
      EXPECT_EQ(o.pool_kernel, c.kernel) << c.method;
      EXPECT_EQ(o.window, 8) << c.method;
      EXPECT_EQ(o.granularity, ScoreGranularity::kKvHead) << c.method;
    }
  }
  // A reconstruct request ranks its re-reading's scores alone, unpooled (StageExecutor::Reread):
  // the scoring of eval's xkv:profile=reconstruct (session 12's dev pick over mix=max).
  auto reconstruct = ParseEvalMethod("xkv:profile=reconstruct", base);
  ASSERT_TRUE(reconstruct.ok()) << reconstruct.status();
  EXPECT_FALSE(reconstruct->mix_window);
  auto spec = ApplyOverride(KvSettings{}, kv("xkv", "reconstruct"));
  ASSERT_TRUE(spec.ok()) << spec.status();
  ImportanceOptions reread = ScoringFor(*spec, base);
  reread.pool_kernel = kRereadPoolKernel;
  EXPECT_EQ(reconstruct->scoring.pool_kernel, reread.pool_kernel);
  EXPECT_EQ(reconstruct->scoring.reduce, reread.reduce);
  EXPECT_EQ(reconstruct->scoring.pool, reread.pool);
  EXPECT_EQ(reconstruct->scoring.window, reread.window);
  // AdaKV (snapkv with per-head budgets, eval only) keeps SnapKV's scoring.
  auto ada = ParseEvalMethod("adakv", base);
  ASSERT_TRUE(ada.ok()) << ada.status();
  EXPECT_EQ(ScoringFor(ada->kv, base).pool_kernel, 7);
  EXPECT_EQ(ScoringFor(ada->kv, base).reduce, ScoreReduce::kSum);
}

TEST(EvalRunnerTest, BadMethodParametersNameTheValueAndTheRange) {
  ImportanceOptions base;
  auto expect = [&](const char* method, const char* value, const char* range) {
    const absl::Status s = ParseEvalMethod(method, base).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << method;
    EXPECT_THAT(s.message(), HasSubstr(value)) << method;
    EXPECT_THAT(s.message(), HasSubstr(range)) << method;
  };
  expect("xkv:window=65", "window is 65", "[8, 64]");
  expect("xkv:window=4", "window is 4", "[8, 64]");
  expect("xkv:window=16.5", "window is 16.5", "whole number in [8, 64]");
  expect("snapkv:window=abc", "window='abc'", "not a number");
  expect("xkv:kernel=4", "method kernel is 4", "odd number in [1, 63]");
  expect("xkv:kernel=65", "method kernel is 65", "odd number in [1, 63]");
  expect("xkv:kernel=7.5", "method kernel is 7.5", "whole number in [1, 63]");
  expect("adakv:floor=-0.1", "floor is -0.1", "[0, 1]");
  expect("xkv:floor=2", "floor is 2", "[0, 1]");
  expect("xkv:sinks=65", "sinks is 65", "[0, 64]");
  expect("xkv:sinks=-1", "sinks is -1", "[0, 64]");
  expect("xkv:recent=1.5", "method recent is 1.5", "[0, 1]");
  expect("snapkv:recent=0.5", "recent (0.5) needs policy xkv", "'snapkv'");
  expect("xkv:pool=median", "unknown parameter 'pool=median'", "pool=max|avg");
  auto sinks = ParseEvalMethod("xkv:sinks=0", base);
  ASSERT_TRUE(sinks.ok()) << sinks.status();
  EXPECT_EQ(sinks->kv.sink_tokens, 0);
}

TEST(EvalRunnerTest, ParsesMethodsWithParameters) {
  ImportanceOptions base;
  base.window = 8;
  auto snap = ParseEvalMethod("snapkv", base);
  ASSERT_TRUE(snap.ok()) << snap.status();
  EXPECT_EQ(snap->kv.policy, PolicyKind::kSnapKv);
  EXPECT_EQ(snap->scoring.reduce, ScoreReduce::kSum);
  EXPECT_EQ(snap->scoring.pool, ScorePool::kAvg);
  auto paper = ParseEvalMethod("paper", base);
  ASSERT_TRUE(paper.ok());
  EXPECT_EQ(paper->kv.policy, PolicyKind::kXkv);
  EXPECT_EQ(paper->kv.allocator.kind, AllocatorKind::kPaper);
  EXPECT_EQ(paper->scoring.reduce, ScoreReduce::kSum);
  auto x = ParseEvalMethod("xkv:floor=0.25:window=16:pool=avg:cap=3", base);
  ASSERT_TRUE(x.ok()) << x.status();
  EXPECT_EQ(x->name, "xkv:floor=0.25:window=16:pool=avg:cap=3");
  EXPECT_EQ(x->kv.allocator.kind, AllocatorKind::kGlobal);
  EXPECT_DOUBLE_EQ(x->kv.allocator.floor, 0.25);
  EXPECT_DOUBLE_EQ(x->kv.allocator.cap, 3.0);
  EXPECT_EQ(x->scoring.window, 16);
  EXPECT_EQ(x->scoring.reduce, ScoreReduce::kMax);
  EXPECT_EQ(x->scoring.pool, ScorePool::kAvg);
  auto via_flag = ParseEvalMethod("xkv:window=16:allocator=paper", base);
  ASSERT_TRUE(via_flag.ok()) << via_flag.status();
  EXPECT_EQ(via_flag->kv.allocator.kind, AllocatorKind::kPaper);
  EXPECT_EQ(via_flag->scoring.reduce, ScoreReduce::kSum);  // the paper's scoring
  EXPECT_EQ(via_flag->scoring.window, 16);                 // whatever the parameters' order
  EXPECT_FALSE(ParseEvalMethod("xkv:allocator=best", base).ok());
  EXPECT_FALSE(ParseEvalMethod("snapkv:allocator=paper", base).ok());
  auto bad = ParseEvalMethod("xkv:floor=1.5", base);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("1.5"));
  EXPECT_THAT(bad.status().message(), HasSubstr("[0, 1]"));
  EXPECT_THAT(ParseEvalMethod("xkv:window=0", base).status().message(), HasSubstr("[8, 64]"));
  EXPECT_THAT(ParseEvalMethod("xkv:tau=2", base).status().message(), HasSubstr("unknown"));
  EXPECT_FALSE(ParseEvalMethod("h2o", base).ok());
  // Per-(layer, KV head) budgets: xkv with the global allocator only, one parse rule.
  auto ph = ParseEvalMethod("xkv:per_head=1:floor=0.2", base);
  ASSERT_TRUE(ph.ok()) << ph.status();
  EXPECT_TRUE(ph->kv.allocator.per_head);
  EXPECT_THAT(ParseEvalMethod("xkv:per_head=2", base).status().message(),
              HasSubstr("per_head is '2'; allowed: 1, true, 0, false"));
  EXPECT_THAT(ParseEvalMethod("streaming:per_head=1", base).status().message(),
              HasSubstr("per_head budgets need policy xkv"));
  EXPECT_TRUE(ParseEvalMethod("snapkv:per_head=1", base).ok());  // AdaKV
  EXPECT_FALSE(ParseEvalMethod("paper:per_head=1", base).ok());
  // The reconstruct profile: unpooled unless a kernel is given; only for score-ranking methods.
  auto r = ParseEvalMethod("xkv:profile=reconstruct:floor=0.5", base);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->kv.profile.kind, ProfileModeKind::kReconstruct);
  EXPECT_EQ(r->scoring.pool_kernel, 1);
  auto rk = ParseEvalMethod("snapkv:kernel=3:profile=reconstruct", base);
  ASSERT_TRUE(rk.ok()) << rk.status();
  EXPECT_EQ(rk->scoring.pool_kernel, 3);
  EXPECT_FALSE(rk->value_norm);
  EXPECT_TRUE(ParseEvalMethod("xkv:vnorm=1", base)->value_norm);
  auto mix = ParseEvalMethod("xkv:profile=reconstruct:mix=max", base);
  ASSERT_TRUE(mix.ok()) << mix.status();
  EXPECT_TRUE(mix->mix_window);
  EXPECT_EQ(mix->scoring.pool_kernel, 7);  // the window part: the base kernel, as the stages pool
  EXPECT_THAT(ParseEvalMethod("xkv:mix=max", base).status().message(),
              HasSubstr("needs profile=reconstruct"));
  EXPECT_THAT(ParseEvalMethod("xkv:vnorm=2", base).status().message(), HasSubstr("vnorm=0|1"));
  EXPECT_THAT(ParseEvalMethod("xkv:kernel=4", base).status().message(),
              HasSubstr("odd number in [1, 63]"));
  EXPECT_THAT(ParseEvalMethod("streaming:profile=reconstruct", base).status().message(),
              HasSubstr("'streaming'"));
  EXPECT_THAT(ParseEvalMethod("xkv:profile=magic", base).status().message(),
              HasSubstr("unknown profile mode 'magic'"));
}

}  // namespace
}  // namespace xkv
