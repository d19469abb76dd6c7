// `xkv bench serve`: a load generator against a running xkv Generation service or any
// OpenAI-compatible server (bench/serve_bench_client.h), as vLLM's serving benchmark runs one.
//
// Requests are sent at seeded Poisson arrival times (--rate R requests/s; +inf: all at once) and
// at most max_concurrency are in flight (0: no cap); a request that arrives while the cap is
// reached waits for a free slot, in arrival order. --rate inf with a cap is a closed loop of that
// many clients. Prompt and output lengths are drawn per request from seeded uniform
// ranges (prompts are built from the model's tokenizer to the drawn token count; outputs use
// ignore_eos so every request generates exactly its drawn length). Metrics follow vLLM's
// benchmark_serving:
//   TTFT  time from sending the request to the first streamed token;
//   TPOT  per request (e2e latency − TTFT) / (output tokens − 1);
//   ITL   every gap between consecutive streamed token chunks;
//   throughput  requests/s and output (and total) tokens/s over the wall time of the run;
//   goodput     requests/s that met every part of the SLO (TTFT, TPOT, e2e latency bounds).
// KV memory: the peak of a request's own KV bytes (Usage.kv_bytes_held) and, with an Admin
// address, the peak of Σ stages' kv_bytes_used polled through GetClusterStatus.
#ifndef XKV_BENCH_SERVE_BENCH_H_
#define XKV_BENCH_SERVE_BENCH_H_

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace xkv {

// Goodput's service-level objective, in milliseconds; 0: that part is not checked.
struct GoodputSlo {
  double ttft_ms = 0;
  double tpot_ms = 0;
  double e2el_ms = 0;
  bool empty() const { return ttft_ms <= 0 && tpot_ms <= 0 && e2el_ms <= 0; }
};

struct ServeBenchOptions {
  std::string endpoint = "grpc";           // grpc (xkv.v1.Generation) | openai (HTTP)
  std::string server = "127.0.0.1:50051";  // grpc: host:port; openai: [http://]host:port
  std::string model_name;                  // openai: the request's model ("" = GET /v1/models)
  std::string api_key;                     // openai: Authorization: Bearer
  std::string admin_server;                // Admin ("" = no cluster polling)
  std::string admin_token;
  std::string model_path;  // GGUF whose tokenizer builds prompts of exact token counts
  double request_rate = std::numeric_limits<double>::infinity();  // requests/s
  double burstiness = 1;    // gamma shape of the gaps between arrivals (1: Poisson)
  int max_concurrency = 4;  // requests in flight at most; 0: no cap
  int requests = 24;
  GoodputSlo goodput;
  int64_t prompt_min = 200, prompt_max = 600;  // prompt tokens, uniform
  int64_t output_min = 32, output_max = 32;    // output tokens, uniform
  uint64_t seed = 1;
  int warmup = 1;  // requests sent (one at a time) before timing
  // Per-request KV policy override ("" = the service's), with at most one target.
  std::string policy;
  double retention = 0;        // > 0: retention target
  double budget_fraction = 0;  // > 0: kept fraction of the prompt prefix
  int poll_ms = 20;            // GetClusterStatus interval
  double timeout_s = 600;      // per-request deadline
};

// Requests in flight at most (one thread and one connection each).
inline constexpr int kMaxServeBenchSlots = 4096;

// A streamed chunk that carried tokens: when it arrived (ms after the request was sent) and how
// many tokens it carried.
struct TokenChunk {
  double ms = 0;
  int64_t tokens = 0;
};

struct ServeBenchRequest {
  double sent_s = 0;          // when it was sent, seconds after the timed run started
  int64_t prompt_tokens = 0;  // as the server counted them
  int64_t output_tokens = 0;
  double ttft_ms = 0;
  double e2e_ms = 0;
  double tpot_ms = 0;          // 0 when output_tokens < 2
  std::vector<double> itl_ms;  // gaps between token chunks
  std::vector<TokenChunk> chunks;
  int64_t kv_bytes_held = 0;  // Usage
  int64_t kv_bytes_full = 0;
  bool ok = false;
  std::string error;
};

struct ServeBenchResult {
  std::string label;  // policy shown in the table
  std::vector<ServeBenchRequest> requests;
  double duration_s = 0;
  int completed = 0, failed = 0;
  int good = 0;  // completed within the SLO (options.goodput); = completed without one
  int64_t total_input_tokens = 0, total_output_tokens = 0;
  double request_throughput = 0;      // completed / s
  double request_goodput = 0;         // good / s
  double output_throughput = 0;       // output tokens / s
  double total_token_throughput = 0;  // (prompt + output) tokens / s
  double mean_prompt_tokens = 0, mean_output_tokens = 0;
  double ttft_mean = 0, ttft_p50 = 0, ttft_p99 = 0;  // ms
  double tpot_mean = 0, tpot_p50 = 0, tpot_p99 = 0;
  double itl_mean = 0, itl_p50 = 0, itl_p99 = 0;
  double e2e_mean = 0, e2e_p50 = 0, e2e_p99 = 0;
  // The window in which every completed request was decoding (DecodeWindowOf): its length, the
  // tokens streamed in it and their rate; 0 when there is no such window.
  double decode_window_s = 0;
  int64_t decode_window_tokens = 0;
  double decode_throughput = 0;        // "decode tok/s (all B decoding)"
  int64_t peak_request_kv_bytes = 0;   // max Usage.kv_bytes_held
  double mean_kv_fraction = 0;         // mean kv_bytes_held / kv_bytes_full
  int64_t peak_cluster_kv_bytes = -1;  // max Σ kv_bytes_used; -1 without an Admin address
  std::string first_error;
};

// INVALID_ARGUMENT naming the flag of a count, length range, rate or burstiness out of range.
absl::Status ValidateServeBenchOptions(const ServeBenchOptions& options);

// Validates, draws the workload, runs it and summarises it.
absl::StatusOr<ServeBenchResult> RunServeBench(const ServeBenchOptions& options);

// A Markdown section: machine, date, load and one table row per result.
std::string FormatServeBench(const ServeBenchOptions& options,
                             const std::vector<ServeBenchResult>& results);
// The same as JSON (vLLM's result keys where it has one: request_throughput, mean_ttft_ms,
// median_ttft_ms, p99_ttft_ms, ...), one object per result under "results".
std::string ServeBenchJson(const ServeBenchOptions& options,
                           const std::vector<ServeBenchResult>& results);

}  // namespace xkv

#endif  // XKV_BENCH_SERVE_BENCH_H_
