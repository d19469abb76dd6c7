// One connection of `xkv bench serve`: sends a request, reads its stream and measures it (TTFT,
// ITL, end-to-end, usage). Two endpoints: xkv's gRPC Generation service and any OpenAI-compatible
// HTTP server (POST /v1/completions with stream: true; xkv's own --http-listen, vLLM, llama.cpp's
// server, ...).
#ifndef XKV_BENCH_SERVE_BENCH_CLIENT_H_
#define XKV_BENCH_SERVE_BENCH_CLIENT_H_

#include <chrono>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "bench/serve_bench.h"

namespace xkv {

class ServeBenchClient {
 public:
  virtual ~ServeBenchClient() = default;
  // Greedy, ignore_eos, exactly `output_tokens` tokens, with the options' KV policy override.
  virtual ServeBenchRequest Run(const std::string& prompt, int64_t output_tokens) = 0;
};

// options.endpoint: "grpc" (options.server = host:port) or "openai" (options.server = host:port or
// http://host:port; the model id from options.model_name, else the first of GET /v1/models).
absl::StatusOr<std::unique_ptr<ServeBenchClient>> MakeServeBenchClient(
    const ServeBenchOptions& options);

// The stream timing of one request, shared by both endpoints.
class StreamClock {
 public:
  StreamClock() : start_(std::chrono::steady_clock::now()), last_(start_) {}
  // A streamed chunk that carried `tokens` tokens: TTFT for the first, an inter-token gap after;
  // its time and size go to out.chunks.
  void Chunk(ServeBenchRequest& out, int64_t tokens);
  // End of the stream: e2e latency, TPOT, `ok` unless out.error is set; output_tokens defaults
  // to `streamed` when the server sent no usage.
  void Finish(ServeBenchRequest& out, int64_t streamed);

 private:
  std::chrono::steady_clock::time_point start_, last_;
  bool first_ = true;
};

}  // namespace xkv

#endif  // XKV_BENCH_SERVE_BENCH_CLIENT_H_
