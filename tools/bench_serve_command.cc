// `xkv bench serve`: the closed-loop serving benchmark (bench/serve_bench.h) against a running
// Generation service, once per policy of --policies with the same seeded workload.
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "bench/serve_bench.h"
#include "tools/flag_set.h"

namespace xkv {

int RunBenchServe(int argc, char** argv) {
  ServeBenchOptions o;
  o.model_path = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
  std::string policies;
  int64_t clients = o.clients, requests = o.requests, warmup = o.warmup, seed = o.seed;
  int64_t poll_ms = o.poll_ms;
  FlagSet flags("bench serve",
                "Closed-loop load against a running Generation service (xkv serve or coordinator)"
                "\nor, with --endpoint openai, any OpenAI-compatible server (/v1/completions):"
                "\n--clients concurrent streams until --requests finished; TTFT, TPOT, ITL (p50, "
                "p99),\nthroughput and peak KV bytes as a Markdown table (vLLM benchmark_serving "
                "definitions).");
  flags.String("endpoint", &o.endpoint,
               "grpc (xkv.v1.Generation) or openai (POST /v1/completions, streamed)");
  flags.String("server", &o.server, "Generation address, or [http://]host:port with openai");
  flags.String("model-name", &o.model_name,
               "openai: the request's model ('' = the first of GET /v1/models)");
  flags.String("api-key", &o.api_key, "openai: bearer API key (or $OPENAI_API_KEY)");
  flags.String("admin", &o.admin_server, "Admin address: poll GetClusterStatus for peak KV bytes");
  flags.String("token", &o.admin_token, "Admin bearer token");
  flags.String("model", &o.model_path, "GGUF whose tokenizer sizes the prompts ('' = words)");
  flags.Int("clients", &clients, "concurrent clients (closed loop)");
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
  o.clients = static_cast<int>(clients);
  o.requests = static_cast<int>(requests);
  o.warmup = static_cast<int>(warmup);
  o.seed = static_cast<uint64_t>(seed);
  o.poll_ms = static_cast<int>(poll_ms);
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
  return 0;
}

}  // namespace xkv
