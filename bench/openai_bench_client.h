// `xkv bench serve --endpoint openai`: a benchmark connection to any OpenAI-compatible server
// (POST /v1/completions, stream: true, stream_options.include_usage), measured from its
// server-sent events. xkv's own server also reports KV bytes (usage.xkv); others report none.
#ifndef XKV_BENCH_OPENAI_BENCH_CLIENT_H_
#define XKV_BENCH_OPENAI_BENCH_CLIENT_H_

#include <memory>

#include "absl/status/statusor.h"
#include "bench/serve_bench_client.h"

namespace xkv {

// UNAVAILABLE when options.model_name is empty and GET /v1/models fails or lists nothing.
absl::StatusOr<std::unique_ptr<ServeBenchClient>> MakeOpenAiBenchClient(
    const ServeBenchOptions& options);

}  // namespace xkv

#endif  // XKV_BENCH_OPENAI_BENCH_CLIENT_H_
