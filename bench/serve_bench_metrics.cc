#include "bench/serve_bench_metrics.h"

#include <algorithm>
#include <cmath>
#include <random>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace xkv {
namespace {

double Mean(const std::vector<double>& v) {
  if (v.empty()) return 0;
  double s = 0;
  for (double x : v) s += x;
  return s / v.size();
}

}  // namespace

absl::StatusOr<std::vector<double>> ArrivalTimes(int64_t n, double rate, double burstiness,
                                                 uint64_t seed) {
  if (n < 0) return absl::InvalidArgumentError(absl::StrCat("requests ", n, " (need >= 0)"));
  if (!(rate > 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--rate ", rate, ": requests per second must be > 0 (or inf)"));
  }
  if (!(burstiness > 0) || std::isinf(burstiness)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--burstiness ", burstiness, ": must be > 0 and finite (1: Poisson)"));
  }
  std::vector<double> t(n, 0.0);
  if (std::isinf(rate) || n == 0) return t;
  std::mt19937_64 rng(seed);
  std::gamma_distribution<double> gap(burstiness, 1.0 / (rate * burstiness));
  double sum = 0;
  for (double& x : t) x = sum += gap(rng);
  if (sum > 0) {
    const double scale = (n / rate) / sum;
    for (double& x : t) x *= scale;
  }
  return t;
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double rank = p / 100.0 * (v.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(rank));
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (rank - lo);
}

absl::StatusOr<GoodputSlo> ParseGoodput(absl::string_view text) {
  GoodputSlo slo;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    part = absl::StripAsciiWhitespace(part);
    const std::vector<absl::string_view> kv = absl::StrSplit(part, absl::MaxSplits(':', 1));
    double ms = 0;
    if (kv.size() != 2 || !absl::SimpleAtod(kv[1], &ms) || !std::isfinite(ms) || ms <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("--goodput part '", part, "': want METRIC:MILLISECONDS with a number > 0"));
    }
    double* slot = kv[0] == "ttft"   ? &slo.ttft_ms
                   : kv[0] == "tpot" ? &slo.tpot_ms
                   : kv[0] == "e2el" ? &slo.e2el_ms
                                     : nullptr;
    if (slot == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("--goodput metric '", kv[0], "': one of ttft, tpot, e2el"));
    }
    *slot = ms;
  }
  return slo;
}

std::string GoodputText(const GoodputSlo& slo) {
  std::vector<std::string> parts;
  if (slo.ttft_ms > 0) parts.push_back(absl::StrCat("ttft:", slo.ttft_ms));
  if (slo.tpot_ms > 0) parts.push_back(absl::StrCat("tpot:", slo.tpot_ms));
  if (slo.e2el_ms > 0) parts.push_back(absl::StrCat("e2el:", slo.e2el_ms));
  return absl::StrJoin(parts, ",");
}

bool MeetsSlo(const ServeBenchRequest& q, const GoodputSlo& slo) {
  if (!q.ok) return false;
  const double tpot = q.output_tokens > 1 ? q.tpot_ms : 0;
  return (slo.ttft_ms <= 0 || q.ttft_ms <= slo.ttft_ms) &&
         (slo.tpot_ms <= 0 || tpot <= slo.tpot_ms) && (slo.e2el_ms <= 0 || q.e2e_ms <= slo.e2el_ms);
}

DecodeWindow DecodeWindowOf(const std::vector<ServeBenchRequest>& requests) {
  DecodeWindow w;
  bool any = false;
  for (const ServeBenchRequest& q : requests) {
    if (!q.ok || q.chunks.empty()) continue;
    const double first = q.sent_s + q.chunks.front().ms / 1000;
    const double last = q.sent_s + q.chunks.back().ms / 1000;
    w.start_s = any ? std::max(w.start_s, first) : first;
    w.end_s = any ? std::min(w.end_s, last) : last;
    any = true;
  }
  if (!any || !(w.end_s > w.start_s)) return DecodeWindow{};
  for (const ServeBenchRequest& q : requests) {
    if (!q.ok) continue;
    for (const TokenChunk& c : q.chunks) {
      const double t = q.sent_s + c.ms / 1000;
      if (t > w.start_s && t <= w.end_s) w.tokens += c.tokens;
    }
  }
  w.tokens_per_s = w.tokens / (w.end_s - w.start_s);
  return w;
}

void Summarize(const GoodputSlo& slo, ServeBenchResult& r) {
  std::vector<double> ttft, tpot, itl, e2e, kv_fraction, prompt, output;
  r.completed = r.failed = r.good = 0;
  r.total_input_tokens = r.total_output_tokens = 0;
  for (const ServeBenchRequest& q : r.requests) {
    if (!q.ok) {
      ++r.failed;
      if (r.first_error.empty()) r.first_error = q.error;
      continue;
    }
    ++r.completed;
    if (MeetsSlo(q, slo)) ++r.good;
    ttft.push_back(q.ttft_ms);
    if (q.output_tokens > 1) tpot.push_back(q.tpot_ms);
    itl.insert(itl.end(), q.itl_ms.begin(), q.itl_ms.end());
    e2e.push_back(q.e2e_ms);
    prompt.push_back(q.prompt_tokens);
    output.push_back(q.output_tokens);
    r.total_input_tokens += q.prompt_tokens;
    r.total_output_tokens += q.output_tokens;
    r.peak_request_kv_bytes = std::max(r.peak_request_kv_bytes, q.kv_bytes_held);
    if (q.kv_bytes_full > 0) kv_fraction.push_back(double(q.kv_bytes_held) / q.kv_bytes_full);
  }
  if (r.duration_s > 0) {
    r.request_throughput = r.completed / r.duration_s;
    r.request_goodput = r.good / r.duration_s;
    r.output_throughput = r.total_output_tokens / r.duration_s;
    r.total_token_throughput = (r.total_input_tokens + r.total_output_tokens) / r.duration_s;
  }
  r.mean_prompt_tokens = Mean(prompt);
  r.mean_output_tokens = Mean(output);
  r.ttft_mean = Mean(ttft), r.ttft_p50 = Percentile(ttft, 50), r.ttft_p99 = Percentile(ttft, 99);
  r.tpot_mean = Mean(tpot), r.tpot_p50 = Percentile(tpot, 50), r.tpot_p99 = Percentile(tpot, 99);
  r.itl_mean = Mean(itl), r.itl_p50 = Percentile(itl, 50), r.itl_p99 = Percentile(itl, 99);
  r.e2e_mean = Mean(e2e), r.e2e_p50 = Percentile(e2e, 50), r.e2e_p99 = Percentile(e2e, 99);
  r.mean_kv_fraction = Mean(kv_fraction);
  const DecodeWindow w = DecodeWindowOf(r.requests);
  r.decode_window_s = w.end_s - w.start_s;
  r.decode_window_tokens = w.tokens;
  r.decode_throughput = w.tokens_per_s;
}

}  // namespace xkv
