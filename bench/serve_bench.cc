#include "bench/serve_bench.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <ctime>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/status_macros.h"
#include "bench/machine_info.h"
#include "bench/serve_bench_client.h"
#include "bench/serve_bench_metrics.h"
#include "model/gguf.h"
#include "model/tokenizer.h"
#include "xkv/v1/admin.grpc.pb.h"

namespace xkv {
namespace {

using SteadyClock = std::chrono::steady_clock;

constexpr const char* kWords[] = {
    "the",     "river",   "city",   "small",  "people",  "built",    "house",   "garden",
    "morning", "light",   "water",  "market", "bridge",  "history",  "king",    "music",
    "school",  "winter",  "summer", "forest", "stone",   "road",     "window",  "friend",
    "letter",  "story",   "island", "north",  "south",   "mountain", "village", "church",
    "great",   "old",     "new",    "long",   "quiet",   "bright",   "dark",    "green",
    "walked",  "found",   "wrote",  "opened", "carried", "watched",  "learned", "called",
    "and",     "of",      "in",     "with",   "from",    "near",     "after",   "before",
    "a",       "was",     "were",   "they",   "she",     "he",       "we",      "their",
    "ship",    "harbour", "field",  "horse",  "bread",   "fire",     "paper",   "clock",
    "tower",   "square",  "street", "museum", "train",   "station",  "evening", "night"};

// Prompt text of about `tokens` tokens: seeded random words, cut to exactly `tokens` tokens with
// the tokenizer when there is one (the server may count ±1 after re-encoding).
absl::StatusOr<std::string> MakePrompt(const Tokenizer* tok, int64_t tokens, std::mt19937_64& rng) {
  constexpr int kNumWords = sizeof(kWords) / sizeof(kWords[0]);
  std::uniform_int_distribution<int> pick(0, kNumWords - 1);
  std::string text = "Read the notes and continue the story.";
  const int64_t words = tokens + tokens / 4 + 8;
  for (int64_t i = 0; i < words; ++i) {
    absl::StrAppend(&text, (i % 12 == 11) ? ". " : " ", kWords[pick(rng)]);
  }
  if (tok == nullptr) return text;
  ASSIGN_OR_RETURN(std::vector<int32_t> ids, tok->Encode(text, /*parse_special=*/false));
  if (static_cast<int64_t>(ids.size()) > tokens) ids.resize(tokens);
  return tok->Decode(ids);
}

struct Job {
  std::string prompt;
  int64_t output_tokens = 0;
};

// Polls Σ kv_bytes_used over the stages until `done`.
int64_t PollPeakKv(const ServeBenchOptions& o, const std::atomic<bool>& done) {
  auto admin = xkv::v1::Admin::NewStub(
      grpc::CreateChannel(o.admin_server, grpc::InsecureChannelCredentials()));
  int64_t peak = 0;
  while (!done.load()) {
    grpc::ClientContext ctx;
    if (!o.admin_token.empty()) ctx.AddMetadata("authorization", "Bearer " + o.admin_token);
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    xkv::v1::GetClusterStatusResponse r;
    if (admin->GetClusterStatus(&ctx, {}, &r).ok()) {
      int64_t used = 0;
      for (const auto& st : r.stages()) used += st.kv_bytes_used();
      peak = std::max(peak, used);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(o.poll_ms));
  }
  return peak;
}

// Requests in flight at most: one thread and one connection each.
int Slots(const ServeBenchOptions& o) {
  return o.max_concurrency > 0 ? std::min(o.max_concurrency, o.requests) : o.requests;
}

}  // namespace

absl::Status ValidateServeBenchOptions(const ServeBenchOptions& o) {
  const int slots = Slots(o);
  if (o.max_concurrency < 0 || o.requests < 1 || o.warmup < 0 || slots > kMaxServeBenchSlots) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max-concurrency ", o.max_concurrency, ", --requests ", o.requests,
                     ", --warmup ", o.warmup,
                     ": need requests >= 1, warmup >= 0 and 0 <= max-concurrency (0: no cap), with "
                     "at most ",
                     kMaxServeBenchSlots, " requests in flight"));
  }
  if (o.prompt_min < 1 || o.prompt_max < o.prompt_min || o.output_min < 1 ||
      o.output_max < o.output_min) {
    return absl::InvalidArgumentError("bad prompt/output length ranges (need 1 <= min <= max)");
  }
  return ArrivalTimes(0, o.request_rate, o.burstiness, o.seed).status();  // rate, burstiness
}

absl::StatusOr<ServeBenchResult> RunServeBench(const ServeBenchOptions& o) {
  RETURN_IF_ERROR(ValidateServeBenchOptions(o));
  std::unique_ptr<GgufFile> file;
  std::unique_ptr<Tokenizer> tok;
  if (!o.model_path.empty()) {
    ASSIGN_OR_RETURN(file, GgufFile::Open(o.model_path));
    ASSIGN_OR_RETURN(tok, Tokenizer::FromGguf(*file));
  }
  // The whole workload and its arrival times are drawn up front from the seed: the same for every
  // policy compared.
  ASSIGN_OR_RETURN(const std::vector<double> arrivals,
                   ArrivalTimes(o.requests, o.request_rate, o.burstiness, o.seed));
  std::mt19937_64 rng(o.seed);
  std::uniform_int_distribution<int64_t> plen(o.prompt_min, o.prompt_max);
  std::uniform_int_distribution<int64_t> olen(o.output_min, o.output_max);
  std::vector<Job> jobs(o.warmup + o.requests);
  for (Job& j : jobs) {
    const int64_t p = plen(rng);
    j.output_tokens = olen(rng);
    ASSIGN_OR_RETURN(j.prompt, MakePrompt(tok.get(), p, rng));
  }

  ServeBenchResult result;
  result.label = o.policy.empty() ? "service default" : o.policy;
  ASSIGN_OR_RETURN(std::unique_ptr<ServeBenchClient> warm, MakeServeBenchClient(o));
  for (int i = 0; i < o.warmup; ++i) {
    ServeBenchRequest w = warm->Run(jobs[i].prompt, jobs[i].output_tokens);
    if (!w.ok) return absl::UnavailableError(absl::StrCat("warm-up request failed: ", w.error));
  }

  result.requests.resize(o.requests);
  // One connection per slot: a slot takes the next request in arrival order and sends it at its
  // arrival time, or at once when it arrived while every slot was busy (vLLM's semaphore).
  std::atomic<int> next{0};
  const int slots = Slots(o);
  std::vector<std::unique_ptr<ServeBenchClient>> connections;
  for (int c = 0; c < slots; ++c) {
    ASSIGN_OR_RETURN(std::unique_ptr<ServeBenchClient> client, MakeServeBenchClient(o));
    connections.push_back(std::move(client));
  }
  // After the connections: a failed connection returns with no thread running.
  std::atomic<bool> done{false};
  int64_t peak_cluster = -1;
  std::thread poller;
  if (!o.admin_server.empty()) poller = std::thread([&] { peak_cluster = PollPeakKv(o, done); });
  const SteadyClock::time_point start = SteadyClock::now();
  std::vector<std::thread> threads;
  for (int c = 0; c < slots; ++c) {
    threads.emplace_back([&, own = connections[c].get()] {
      for (int i = next++; i < o.requests; i = next++) {
        std::this_thread::sleep_until(start + std::chrono::duration_cast<SteadyClock::duration>(
                                                  std::chrono::duration<double>(arrivals[i])));
        const Job& job = jobs[o.warmup + i];
        const double sent = std::chrono::duration<double>(SteadyClock::now() - start).count();
        result.requests[i] = own->Run(job.prompt, job.output_tokens);
        result.requests[i].sent_s = sent;
      }
    });
  }
  for (std::thread& t : threads) t.join();
  result.duration_s = std::chrono::duration<double>(SteadyClock::now() - start).count();
  done = true;
  if (poller.joinable()) poller.join();
  result.peak_cluster_kv_bytes = peak_cluster;
  Summarize(o.goodput, result);
  return result;
}

namespace {

std::string TodayUtc() {
  char date[32];
  const std::time_t now = std::time(nullptr);
  std::strftime(date, sizeof(date), "%Y-%m-%d", std::gmtime(&now));
  return date;
}

// "Open loop: Poisson arrivals at 2 requests/s (seed 1), at most 8 in flight" and the like.
std::string LoadText(const ServeBenchOptions& o) {
  const std::string cap = o.max_concurrency > 0
                              ? absl::StrCat("at most ", o.max_concurrency, " in flight")
                              : std::string("no concurrency cap");
  if (std::isinf(o.request_rate)) {
    return absl::StrCat(o.max_concurrency > 0 ? "Closed loop" : "Burst",
                        ": every request sent at once (--rate inf), ", cap);
  }
  return absl::StrFormat("Open loop: %s arrivals at %g requests/s (seed %d), %s",
                         o.burstiness == 1 ? std::string("Poisson")
                                           : absl::StrFormat("gamma (burstiness %g)", o.burstiness),
                         o.request_rate, o.seed, cap);
}

}  // namespace

std::string FormatServeBench(const ServeBenchOptions& o,
                             const std::vector<ServeBenchResult>& results) {
  const std::string slo = GoodputText(o.goodput);
  std::string out = absl::StrFormat(
      "%s, %s (%u hardware threads), %s endpoint. %s; %d requests (+%d warm-up), prompt %d-%d "
      "tokens, output %d-%d tokens (uniform, seed %d, ignore_eos), greedy. Goodput SLO: %s.\n\n",
      TodayUtc(), CpuModel(), std::thread::hardware_concurrency(), o.endpoint, LoadText(o),
      o.requests, o.warmup, o.prompt_min, o.prompt_max, o.output_min, o.output_max, o.seed,
      slo.empty() ? "none (goodput = throughput)" : slo);
  absl::StrAppend(&out,
                  "| policy | completed/failed | duration s | req/s | goodput req/s | out tok/s | "
                  "total tok/s | TTFT mean / p50 / p99 ms | TPOT mean / p50 / p99 ms | ITL mean / "
                  "p50 / p99 ms | e2e p50 / p99 s | decode tok/s (all B decoding) | peak KV, one "
                  "request | mean KV vs full | peak KV, cluster |\n"
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (const ServeBenchResult& r : results) {
    absl::StrAppendFormat(
        &out,
        "| %s | %d/%d | %.2f | %.3f | %.3f | %.1f | %.1f | %.0f / %.0f / %.0f | %.2f / %.2f / "
        "%.2f | %.2f / %.2f / %.2f | %.2f / %.2f | %s | %.2f MiB | %.1f%% | %s |\n",
        r.label, r.completed, r.failed, r.duration_s, r.request_throughput, r.request_goodput,
        r.output_throughput, r.total_token_throughput, r.ttft_mean, r.ttft_p50, r.ttft_p99,
        r.tpot_mean, r.tpot_p50, r.tpot_p99, r.itl_mean, r.itl_p50, r.itl_p99, r.e2e_p50 / 1000,
        r.e2e_p99 / 1000,
        r.decode_throughput > 0 ? absl::StrFormat("%.1f (%d tokens in %.3f s)", r.decode_throughput,
                                                  r.decode_window_tokens, r.decode_window_s)
                                : std::string("-"),
        r.peak_request_kv_bytes / 1048576.0, 100 * r.mean_kv_fraction,
        r.peak_cluster_kv_bytes < 0
            ? std::string("-")
            : absl::StrFormat("%.2f MiB", r.peak_cluster_kv_bytes / 1048576.0));
  }
  if (!results.empty()) {
    absl::StrAppendFormat(&out,
                          "\nMean prompt %.0f tokens, mean output %.0f tokens (server counts).\n",
                          results[0].mean_prompt_tokens, results[0].mean_output_tokens);
  }
  for (const ServeBenchResult& r : results) {
    if (!r.first_error.empty()) {
      absl::StrAppendFormat(&out, "\n%s: first error: %s\n", r.label, r.first_error);
    }
  }
  return out;
}

std::string ServeBenchJson(const ServeBenchOptions& o,
                           const std::vector<ServeBenchResult>& results) {
  using Json = nlohmann::json;
  Json slo = Json::object();
  if (o.goodput.ttft_ms > 0) slo["ttft_ms"] = o.goodput.ttft_ms;
  if (o.goodput.tpot_ms > 0) slo["tpot_ms"] = o.goodput.tpot_ms;
  if (o.goodput.e2el_ms > 0) slo["e2el_ms"] = o.goodput.e2el_ms;
  Json j = {{"date", TodayUtc()},
            {"machine", CpuModel()},
            {"endpoint", o.endpoint},
            {"server", o.server},
            // JSON has no infinity: "inf" as vLLM's command line spells it.
            {"request_rate", std::isinf(o.request_rate) ? Json("inf") : Json(o.request_rate)},
            {"burstiness", o.burstiness},
            {"max_concurrency", o.max_concurrency},
            {"num_prompts", o.requests},
            {"warmup", o.warmup},
            {"prompt_tokens", {o.prompt_min, o.prompt_max}},
            {"output_tokens", {o.output_min, o.output_max}},
            {"seed", o.seed},
            {"goodput_slo", slo},
            {"results", Json::array()}};
  for (const ServeBenchResult& r : results) {
    j["results"].push_back({{"label", r.label},
                            {"completed", r.completed},
                            {"failed", r.failed},
                            {"duration", r.duration_s},
                            {"total_input_tokens", r.total_input_tokens},
                            {"total_output_tokens", r.total_output_tokens},
                            {"request_throughput", r.request_throughput},
                            {"request_goodput", r.request_goodput},
                            {"output_throughput", r.output_throughput},
                            {"total_token_throughput", r.total_token_throughput},
                            {"mean_ttft_ms", r.ttft_mean},
                            {"median_ttft_ms", r.ttft_p50},
                            {"p99_ttft_ms", r.ttft_p99},
                            {"mean_tpot_ms", r.tpot_mean},
                            {"median_tpot_ms", r.tpot_p50},
                            {"p99_tpot_ms", r.tpot_p99},
                            {"mean_itl_ms", r.itl_mean},
                            {"median_itl_ms", r.itl_p50},
                            {"p99_itl_ms", r.itl_p99},
                            {"mean_e2el_ms", r.e2e_mean},
                            {"median_e2el_ms", r.e2e_p50},
                            {"p99_e2el_ms", r.e2e_p99},
                            {"decode_window_s", r.decode_window_s},
                            {"decode_window_tokens", r.decode_window_tokens},
                            {"decode_throughput_all_decoding", r.decode_throughput},
                            {"peak_request_kv_bytes", r.peak_request_kv_bytes},
                            {"mean_kv_fraction", r.mean_kv_fraction},
                            {"peak_cluster_kv_bytes", r.peak_cluster_kv_bytes},
                            {"first_error", r.first_error}});
  }
  return j.dump(2) + "\n";
}

}  // namespace xkv
