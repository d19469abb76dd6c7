#include "bench/serve_bench_metrics.h"

#include <cmath>
#include <limits>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace xkv {
namespace {

using ::testing::HasSubstr;

constexpr double kInf = std::numeric_limits<double>::infinity();

// Coefficient of variation (stddev / mean) of the gaps between consecutive times (from 0).
double GapVariation(const std::vector<double>& t) {
  std::vector<double> gaps;
  double prev = 0;
  for (double x : t) gaps.push_back(x - prev), prev = x;
  double mean = 0, var = 0;
  for (double g : gaps) mean += g;
  mean /= gaps.size();
  for (double g : gaps) var += (g - mean) * (g - mean);
  return std::sqrt(var / gaps.size()) / mean;
}

TEST(ServeBenchArrivalsTest, SeededNonDecreasingAndAtTheMeanRate) {
  const absl::StatusOr<std::vector<double>> a = ArrivalTimes(2000, 4.0, 1.0, 7);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_EQ(a->size(), 2000u);
  EXPECT_GT((*a)[0], 0);  // the first request waits one gap too, as in vLLM
  for (size_t i = 1; i < a->size(); ++i) ASSERT_LE((*a)[i - 1], (*a)[i]) << i;
  // Normalised: n requests at 4 per second end at n / 4 seconds exactly.
  EXPECT_NEAR(a->back(), 500.0, 1e-9);
  EXPECT_EQ(*ArrivalTimes(2000, 4.0, 1.0, 7), *a);
  EXPECT_NE(*ArrivalTimes(2000, 4.0, 1.0, 8), *a);
  // Rates per window of 50 s stay near 4/s (a Poisson count of 200 has a stddev of ~14).
  for (double w = 0; w < 500; w += 50) {
    int in_window = 0;
    for (double t : *a) in_window += t >= w && t < w + 50;
    EXPECT_NEAR(in_window / 50.0, 4.0, 1.5) << "window at " << w;
  }
}

TEST(ServeBenchArrivalsTest, PoissonGapsAreExponentialAndBurstinessShapesThem) {
  // Exponential gaps have a coefficient of variation of 1; gamma(k) gaps 1/sqrt(k).
  EXPECT_NEAR(GapVariation(*ArrivalTimes(20000, 10.0, 1.0, 1)), 1.0, 0.05);
  EXPECT_NEAR(GapVariation(*ArrivalTimes(20000, 10.0, 4.0, 1)), 0.5, 0.03);
  EXPECT_NEAR(GapVariation(*ArrivalTimes(20000, 10.0, 0.25, 1)), 2.0, 0.2);
}

TEST(ServeBenchArrivalsTest, InfiniteRateSendsEverythingAtOnce) {
  EXPECT_EQ(*ArrivalTimes(3, kInf, 1.0, 1), std::vector<double>(3, 0.0));
  EXPECT_TRUE(ArrivalTimes(0, 2.0, 1.0, 1)->empty());
}

TEST(ServeBenchArrivalsTest, RejectsBadRatesAndBurstiness) {
  for (double rate : {0.0, -1.0, std::nan("")}) {
    const absl::StatusOr<std::vector<double>> a = ArrivalTimes(4, rate, 1.0, 1);
    EXPECT_EQ(a.status().code(), absl::StatusCode::kInvalidArgument) << rate;
    EXPECT_THAT(a.status().message(), HasSubstr("--rate"));
  }
  for (double b : {0.0, -2.0, kInf}) {
    const absl::StatusOr<std::vector<double>> a = ArrivalTimes(4, 1.0, b, 1);
    EXPECT_EQ(a.status().code(), absl::StatusCode::kInvalidArgument) << b;
    EXPECT_THAT(a.status().message(), HasSubstr("--burstiness"));
  }
}

TEST(ServeBenchPercentileTest, LinearInterpolationAsNumpy) {
  // numpy.percentile([4, 1, 3, 2], [0, 50, 99, 100]) = [1, 2.5, 3.97, 4].
  const std::vector<double> v = {4, 1, 3, 2};
  EXPECT_DOUBLE_EQ(Percentile(v, 0), 1);
  EXPECT_DOUBLE_EQ(Percentile(v, 50), 2.5);
  EXPECT_NEAR(Percentile(v, 99), 3.97, 1e-12);
  EXPECT_DOUBLE_EQ(Percentile(v, 100), 4);
  EXPECT_DOUBLE_EQ(Percentile({7}, 99), 7);
  EXPECT_DOUBLE_EQ(Percentile({}, 50), 0);
}

TEST(ServeBenchGoodputTest, ParsesTheSloAndNamesWhatIsWrong) {
  const absl::StatusOr<GoodputSlo> slo = ParseGoodput("ttft:500, tpot:50");
  ASSERT_TRUE(slo.ok()) << slo.status();
  EXPECT_EQ(slo->ttft_ms, 500);
  EXPECT_EQ(slo->tpot_ms, 50);
  EXPECT_EQ(slo->e2el_ms, 0);
  EXPECT_EQ(GoodputText(*slo), "ttft:500,tpot:50");
  EXPECT_TRUE(ParseGoodput("")->empty());
  EXPECT_EQ(ParseGoodput("e2el:2500")->e2el_ms, 2500);
  for (const char* bad : {"ttft", "ttft:", "ttft:abc", "ttft:0", "tpot:-3", "ttft:inf"}) {
    const absl::StatusOr<GoodputSlo> s = ParseGoodput(bad);
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(s.status().message(), HasSubstr("METRIC:MILLISECONDS")) << bad;
  }
  const absl::StatusOr<GoodputSlo> unknown = ParseGoodput("itl:5");
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(unknown.status().message(), HasSubstr("'itl'"));
}

ServeBenchRequest Done(int64_t prompt, int64_t output, double ttft, double e2e,
                       std::vector<double> itl) {
  ServeBenchRequest q;
  q.ok = true;
  q.prompt_tokens = prompt;
  q.output_tokens = output;
  q.ttft_ms = ttft;
  q.e2e_ms = e2e;
  q.tpot_ms = output > 1 ? (e2e - ttft) / (output - 1) : 0;
  q.itl_ms = std::move(itl);
  return q;
}

TEST(ServeBenchSummaryTest, ThroughputLatenciesAndGoodputAsVllm) {
  ServeBenchResult r;
  r.duration_s = 2.0;
  r.requests.push_back(Done(100, 3, 100, 140, {20, 20}));   // TPOT 20 ms
  r.requests.push_back(Done(200, 3, 300, 500, {50, 150}));  // TPOT 100 ms
  r.requests.push_back(Done(50, 1, 80, 80, {}));  // one token: TPOT counts 0 for goodput only
  ServeBenchRequest failed;
  failed.error = "code 8: busy";
  r.requests.push_back(failed);

  GoodputSlo slo;
  slo.ttft_ms = 200;
  slo.tpot_ms = 50;
  Summarize(slo, r);
  EXPECT_EQ(r.completed, 3);
  EXPECT_EQ(r.failed, 1);
  EXPECT_EQ(r.first_error, "code 8: busy");
  EXPECT_EQ(r.good, 2);  // the second misses both bounds
  EXPECT_DOUBLE_EQ(r.request_goodput, 1.0);
  EXPECT_DOUBLE_EQ(r.request_throughput, 1.5);
  EXPECT_EQ(r.total_input_tokens, 350);
  EXPECT_EQ(r.total_output_tokens, 7);
  EXPECT_DOUBLE_EQ(r.output_throughput, 3.5);
  EXPECT_DOUBLE_EQ(r.total_token_throughput, 178.5);
  EXPECT_DOUBLE_EQ(r.ttft_mean, 160);
  EXPECT_DOUBLE_EQ(r.ttft_p50, 100);
  EXPECT_DOUBLE_EQ(r.tpot_mean, 60);  // requests of one token have no TPOT
  EXPECT_DOUBLE_EQ(r.tpot_p50, 60);
  EXPECT_DOUBLE_EQ(r.itl_mean, 60);
  EXPECT_DOUBLE_EQ(r.itl_p50, 35);
  EXPECT_NEAR(r.itl_p99, 147.0, 1e-9);  // 50 + 0.97 * 100
  EXPECT_DOUBLE_EQ(r.e2e_p50, 140);

  // Without an SLO every completed request is good; an e2e bound alone.
  Summarize(GoodputSlo{}, r);
  EXPECT_EQ(r.good, 3);
  EXPECT_DOUBLE_EQ(r.request_goodput, r.request_throughput);
  GoodputSlo e2e;
  e2e.e2el_ms = 100;
  Summarize(e2e, r);
  EXPECT_EQ(r.good, 1);
}

TEST(ServeBenchSummaryTest, ABoundIsInclusive) {
  ServeBenchRequest q = Done(10, 2, 200, 250, {50});
  GoodputSlo slo;
  slo.ttft_ms = 200;
  slo.tpot_ms = 50;
  EXPECT_TRUE(MeetsSlo(q, slo));
  slo.tpot_ms = 49.9;
  EXPECT_FALSE(MeetsSlo(q, slo));
  q.ok = false;
  EXPECT_FALSE(MeetsSlo(q, GoodputSlo{}));
}

// A burst of requests on one step clock: step k streams at 10 + 2k ms after the run started;
// request i is sent at sent_s[i], gets its first token at step first[i] and one token every step
// after, `tokens` in all, each chunk arriving 0.1 * i ms after its step (no two on one instant).
ServeBenchRequest OnStepClock(int i, double sent_s, int first, int tokens) {
  ServeBenchRequest q;
  q.ok = true;
  q.sent_s = sent_s;
  for (int k = first; k < first + tokens; ++k) {
    q.chunks.push_back({10 + 2.0 * k + 0.1 * i - 1000 * sent_s, 1});
  }
  return q;
}

TEST(ServeBenchDecodeWindowTest, FromTheLastFirstTokenToTheFirstCompletion) {
  std::vector<ServeBenchRequest> burst = {OnStepClock(0, 0.0, 0, 20), OnStepClock(1, 0.004, 5, 20),
                                          OnStepClock(2, 0.001, 10, 20)};
  ServeBenchRequest failed = OnStepClock(3, 0.0, 30, 5);  // failed: never counted
  failed.ok = false;
  burst.push_back(failed);
  const DecodeWindow w = DecodeWindowOf(burst);
  // Start: request 2's first token (step 10, +0.2 ms); end: request 0's last (step 19).
  EXPECT_NEAR(w.start_s, 0.0302, 1e-12);
  EXPECT_NEAR(w.end_s, 0.048, 1e-12);
  // Steps 11..19 of request 0 (9), 11..18 of requests 1 and 2 (8 each; their step 19 comes after
  // the end, request 2's step 10 is the start itself).
  EXPECT_EQ(w.tokens, 25);
  EXPECT_NEAR(w.tokens_per_s, 25 / 0.0178, 1e-6);

  // Chunks of several tokens count every token.
  burst[0].chunks[15].tokens = 3;
  EXPECT_EQ(DecodeWindowOf(burst).tokens, 27);

  // Through Summarize into the result (and its JSON fields).
  ServeBenchResult r;
  r.duration_s = 1;
  r.requests = burst;
  Summarize(GoodputSlo{}, r);
  EXPECT_EQ(r.decode_window_tokens, 27);
  EXPECT_NEAR(r.decode_window_s, 0.0178, 1e-12);
  EXPECT_NEAR(r.decode_throughput, 27 / 0.0178, 1e-6);
}

TEST(ServeBenchDecodeWindowTest, EmptyWhenTheRequestsNeverAllDecodedTogether) {
  // A closed loop of one slot: the second request starts after the first completed.
  const DecodeWindow w = DecodeWindowOf({OnStepClock(0, 0.0, 0, 10), OnStepClock(1, 0.03, 10, 10)});
  EXPECT_EQ(w.tokens, 0);
  EXPECT_EQ(w.tokens_per_s, 0);
  EXPECT_EQ(w.end_s - w.start_s, 0);
  EXPECT_EQ(DecodeWindowOf({}).tokens_per_s, 0);
  // One request alone: its own decode after its first token.
  const DecodeWindow one = DecodeWindowOf({OnStepClock(0, 0.0, 0, 11)});
  EXPECT_EQ(one.tokens, 10);
  EXPECT_NEAR(one.tokens_per_s, 10 / 0.020, 1e-6);
}

}  // namespace
}  // namespace xkv
