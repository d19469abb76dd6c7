// `xkv bench serve`: the serving benchmark (bench/serve_bench.h) against a running Generation
// service or OpenAI-compatible server, once per policy of --policies with the same seeded workload
// and arrival times.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_split.h"
#include "bench/serve_bench.h"
#include "bench/serve_bench_metrics.h"
#include "tools/flag_set.h"

namespace xkv {
int RunBenchServe(int argc, char** argv) {
  ServeBenchOptions o;
  o.model_path = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
  std::string policies, goodput, json;
  int64_t concurrency = o.max_concurrency, requests = o.requests, warmup = o.warmup, seed = o.seed;
  int64_t poll_ms = o.poll_ms;
  FlagSet flags(
      "bench serve",
      "Load against a running Generation service (xkv serve or coordinator) or, with --endpoint\n"
      "openai, any OpenAI-compatible server (/v1/completions), as vLLM's serving benchmark: "
      "--requests\nsent at seeded Poisson arrivals (--rate; inf: all at once), at most "
      "--max-concurrency in\nflight. Throughput, goodput under --goodput, TTFT, TPOT, ITL (mean, "
      "p50, p99) and peak\nKV bytes as a Markdown table; --json writes them too.");
  flags.String("endpoint", &o.endpoint,
               "grpc (xkv.v1.Generation) or openai (POST /v1/completions, streamed)");
  flags.String("server", &o.server, "Generation address, or [http://]host:port with openai");
  flags.String("model-name", &o.model_name,
               "openai: the request's model ('' = the first of GET /v1/models)");
  flags.String("api-key", &o.api_key, "openai: bearer API key (or $OPENAI_API_KEY)");
  flags.String("admin", &o.admin_server, "Admin address: poll GetClusterStatus for peak KV bytes");
  flags.String("token", &o.admin_token, "Admin bearer token");
  flags.String("model", &o.model_path, "GGUF whose tokenizer sizes the prompts ('' = words)");
  flags.Double("rate", &o.request_rate, "requests per second, Poisson arrivals (inf: all at once)");
  flags.Double("burstiness", &o.burstiness,
               "gamma shape of the arrival gaps (1: Poisson; < 1 burstier, > 1 more even)");
  flags.Int("max-concurrency", &concurrency, "requests in flight at most (0: no cap)");
  flags.Int("clients", &concurrency, "the same as --max-concurrency (older name)");
  flags.String("goodput", &goodput,
               "SLO for goodput, milliseconds: ttft:MS,tpot:MS,e2el:MS (any of them)");
  flags.String("json", &json, "also write the results as JSON to this file");
  flags.Int("requests", &requests, "requests timed (after the warm-up)");
  flags.Int("warmup", &warmup, "untimed requests first");
  flags.Int("prompt-min", &o.prompt_min, "shortest prompt, tokens");
  flags.Int("prompt-max", &o.prompt_max, "longest prompt, tokens");
  flags.Int("output-min", &o.output_min, "shortest output, tokens");
  flags.Int("output-max", &o.output_max, "longest output, tokens");
  flags.Int("seed", &seed, "workload seed");
  flags.String("policies", &policies,
               "comma-separated KV policy overrides to compare ('' = the service's default)");
  flags.Double("retention", &o.retention, "retention target for xkv (0 = the service's)");
  flags.Double("budget-fraction", &o.budget_fraction, "kept prompt fraction (0 = the service's)");
  flags.Int("poll-ms", &poll_ms, "GetClusterStatus interval");
  flags.Double("timeout", &o.timeout_s, "per-request deadline, seconds");
  if (auto code = flags.ParseOrExitCode(argc, argv, 3)) return *code;
  if (o.api_key.empty()) {
    if (const char* env = std::getenv("OPENAI_API_KEY"); env != nullptr) o.api_key = env;
  }
  absl::StatusOr<GoodputSlo> slo = ParseGoodput(goodput);
  if (!slo.ok()) {
    std::fprintf(stderr, "xkv bench serve: %s\n", std::string(slo.status().message()).c_str());
    return 2;
  }
  o.goodput = *slo;
  for (const auto& [name, v] : {std::pair<const char*, int64_t>{"max-concurrency", concurrency},
                                {"requests", requests},
                                {"warmup", warmup},
                                {"poll-ms", poll_ms}}) {
    if (v < 0 || v > std::numeric_limits<int>::max()) {
      std::fprintf(stderr, "xkv bench serve: --%s %lld out of range (0..%d)\n", name,
                   static_cast<long long>(v), std::numeric_limits<int>::max());
      return 2;
    }
  }
  o.max_concurrency = static_cast<int>(concurrency);
  o.requests = static_cast<int>(requests);
  o.warmup = static_cast<int>(warmup);
  o.seed = static_cast<uint64_t>(seed);
  o.poll_ms = static_cast<int>(poll_ms);
  if (absl::Status s = ValidateServeBenchOptions(o); !s.ok()) {
    std::fprintf(stderr, "xkv bench serve: %s\n", std::string(s.message()).c_str());
    return 2;
  }
  std::vector<std::string> names = absl::StrSplit(policies, ',', absl::SkipEmpty());
  if (names.empty()) names.push_back("");
  std::vector<ServeBenchResult> results;
  for (const std::string& name : names) {
    ServeBenchOptions run = o;
    run.policy = name;
    if (name == "full") run.retention = run.budget_fraction = 0;  // no target for a full cache
    std::fprintf(stderr, "xkv bench serve: %s ...\n", name.empty() ? "default" : name.c_str());
    absl::StatusOr<ServeBenchResult> r = RunServeBench(run);
    if (!r.ok()) {
      std::fprintf(stderr, "xkv bench serve: %s\n", std::string(r.status().message()).c_str());
      return 1;
    }
    results.push_back(*std::move(r));
  }
  std::fputs(FormatServeBench(o, results).c_str(), stdout);
  if (!json.empty()) {
    std::ofstream f(json, std::ios::binary | std::ios::trunc);
    f << ServeBenchJson(o, results);
    f.close();
    if (!f) {
      std::fprintf(stderr, "xkv bench serve: could not write %s\n", json.c_str());
      return 1;
    }
  }
  return 0;
}

}  // namespace xkv
