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

// The pure decode phase of a burst, as llama-batched-bench's S_TG counts it: the window from the
// moment the last completed request received its first token (every request is decoding from then
// on) to the moment the first one received its last token (one stops decoding). Tokens in the
// window are those of every completed request's chunks that arrived in (start, end]; the rate is
// tokens / (end - start). Meaningful when the B requests were sent together (--rate inf,
// --requests B, --max-concurrency B or 0); the window is empty (all 0) when some request finished
// before another started decoding (a closed loop of more requests than slots) or when fewer than
// one completed request streamed two chunks.
struct DecodeWindow {
  double start_s = 0, end_s = 0;  // seconds after the timed run started
  int64_t tokens = 0;
  double tokens_per_s = 0;
};
DecodeWindow DecodeWindowOf(const std::vector<ServeBenchRequest>& requests);

// Fills the aggregate fields of `result` from its requests and duration_s.
void Summarize(const GoodputSlo& slo, ServeBenchResult& result);

}  // namespace xkv

#endif  // XKV_BENCH_SERVE_BENCH_METRICS_H_
