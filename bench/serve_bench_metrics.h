// The arithmetic of `xkv bench serve`, as vLLM's serving benchmark (benchmarks/serve.py) defines
// it: request arrival times, percentiles, goodput under a service-level objective, and the
// aggregate figures of one run.
#ifndef XKV_BENCH_SERVE_BENCH_METRICS_H_
#define XKV_BENCH_SERVE_BENCH_METRICS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "bench/serve_bench.h"

namespace xkv {

// Send times in seconds after the start of the run, one per request, non-decreasing. rate = +inf:
// all 0 (everything sent at once). Otherwise request i waits the sum of i + 1 gaps drawn from
// Gamma(shape = burstiness, scale = 1 / (rate * burstiness)) (burstiness 1: exponential gaps, a
// Poisson process), then all times are scaled so that the last one is n / rate (vLLM's
// normalisation: the run offers exactly `rate` on average, whatever the seed). The same seed gives
// the same times. INVALID_ARGUMENT unless rate > 0 and 0 < burstiness < +inf.
absl::StatusOr<std::vector<double>> ArrivalTimes(int64_t n, double rate, double burstiness,
                                                 uint64_t seed);

// Percentile p in [0, 100] with linear interpolation (numpy's default); 0 for no values.
double Percentile(std::vector<double> values, double p);

// "ttft:MS,tpot:MS,e2el:MS" (any subset, any order; milliseconds, > 0) as vLLM's --goodput.
// "" is no SLO. INVALID_ARGUMENT naming the part that is wrong.
absl::StatusOr<GoodputSlo> ParseGoodput(absl::string_view text);
// The SLO as the flag spells it ("" when none).
std::string GoodputText(const GoodputSlo& slo);

// A completed request meets every part of the SLO that is set (TPOT counts as 0 for a request of
// one output token, as vLLM does).
bool MeetsSlo(const ServeBenchRequest& request, const GoodputSlo& slo);

// Fills the aggregate fields of `result` from its requests and duration_s.
void Summarize(const GoodputSlo& slo, ServeBenchResult& result);

}  // namespace xkv

#endif  // XKV_BENCH_SERVE_BENCH_METRICS_H_
