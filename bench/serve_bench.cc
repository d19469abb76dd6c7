#include "bench/serve_bench.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <ctime>
#include <fstream>
#include <mutex>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/status_macros.h"
#include "bench/machine_info.h"
#include "bench/serve_bench_client.h"
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

double Mean(const std::vector<double>& v) {
  if (v.empty()) return 0;
  double s = 0;
  for (double x : v) s += x;
  return s / v.size();
}

}  // namespace

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double rank = p / 100.0 * (v.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(rank));
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (rank - lo);
}

void Summarize(ServeBenchResult& r) {
  std::vector<double> ttft, tpot, itl, e2e, kv_fraction, prompt, output;
  int64_t prompt_total = 0, output_total = 0;
  r.completed = r.failed = 0;
  for (const ServeBenchRequest& q : r.requests) {
    if (!q.ok) {
      ++r.failed;
      if (r.first_error.empty()) r.first_error = q.error;
      continue;
    }
    ++r.completed;
    ttft.push_back(q.ttft_ms);
    if (q.output_tokens > 1) tpot.push_back(q.tpot_ms);
    itl.insert(itl.end(), q.itl_ms.begin(), q.itl_ms.end());
    e2e.push_back(q.e2e_ms);
    prompt.push_back(q.prompt_tokens);
    output.push_back(q.output_tokens);
    prompt_total += q.prompt_tokens;
    output_total += q.output_tokens;
    r.peak_request_kv_bytes = std::max(r.peak_request_kv_bytes, q.kv_bytes_held);
    if (q.kv_bytes_full > 0) kv_fraction.push_back(double(q.kv_bytes_held) / q.kv_bytes_full);
  }
  if (r.duration_s > 0) {
    r.request_throughput = r.completed / r.duration_s;
    r.output_throughput = output_total / r.duration_s;
    r.total_token_throughput = (prompt_total + output_total) / r.duration_s;
  }
  r.mean_prompt_tokens = Mean(prompt);
  r.mean_output_tokens = Mean(output);
  r.ttft_mean = Mean(ttft), r.ttft_p50 = Percentile(ttft, 50), r.ttft_p99 = Percentile(ttft, 99);
  r.tpot_mean = Mean(tpot), r.tpot_p50 = Percentile(tpot, 50), r.tpot_p99 = Percentile(tpot, 99);
  r.itl_mean = Mean(itl), r.itl_p50 = Percentile(itl, 50), r.itl_p99 = Percentile(itl, 99);
  r.e2e_p50 = Percentile(e2e, 50), r.e2e_p99 = Percentile(e2e, 99);
  r.mean_kv_fraction = Mean(kv_fraction);
}

absl::StatusOr<ServeBenchResult> RunServeBench(const ServeBenchOptions& o) {
  if (o.clients < 1 || o.requests < 1) {
    return absl::InvalidArgumentError("clients and requests must be >= 1");
  }
  if (o.prompt_min < 1 || o.prompt_max < o.prompt_min || o.output_min < 1 ||
      o.output_max < o.output_min) {
    return absl::InvalidArgumentError("bad prompt/output length ranges (need 1 <= min <= max)");
  }
  std::unique_ptr<GgufFile> file;
  std::unique_ptr<Tokenizer> tok;
  if (!o.model_path.empty()) {
    ASSIGN_OR_RETURN(file, GgufFile::Open(o.model_path));
    ASSIGN_OR_RETURN(tok, Tokenizer::FromGguf(*file));
  }
  // The whole workload is drawn up front from the seed: the same for every policy compared.
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

  std::atomic<bool> done{false};
  int64_t peak_cluster = -1;
  std::thread poller;
  if (!o.admin_server.empty()) poller = std::thread([&] { peak_cluster = PollPeakKv(o, done); });
  result.requests.resize(o.requests);
  std::atomic<int> next{0};
  std::vector<std::unique_ptr<ServeBenchClient>> connections;
  for (int c = 0; c < o.clients; ++c) {
    ASSIGN_OR_RETURN(std::unique_ptr<ServeBenchClient> client, MakeServeBenchClient(o));
    connections.push_back(std::move(client));
  }
  const SteadyClock::time_point start = SteadyClock::now();
  std::vector<std::thread> clients;
  for (int c = 0; c < o.clients; ++c) {
    clients.emplace_back([&, own = connections[c].get()] {
      for (int i = next++; i < o.requests; i = next++) {
        const Job& job = jobs[o.warmup + i];
        result.requests[i] = own->Run(job.prompt, job.output_tokens);
      }
    });
  }
  for (std::thread& t : clients) t.join();
  result.duration_s = std::chrono::duration<double>(SteadyClock::now() - start).count();
  done = true;
  if (poller.joinable()) poller.join();
  result.peak_cluster_kv_bytes = peak_cluster;
  Summarize(result);
  return result;
}

std::string FormatServeBench(const ServeBenchOptions& o,
                             const std::vector<ServeBenchResult>& results) {
  char date[32];
  const std::time_t now = std::time(nullptr);
  std::strftime(date, sizeof(date), "%Y-%m-%d", std::gmtime(&now));
  std::string out = absl::StrFormat(
      "%s, %s (%u hardware threads), %s endpoint. Closed loop: %d clients, %d requests (+%d "
      "warm-up), prompt %d-%d tokens, output %d-%d tokens (uniform, seed %d, ignore_eos), "
      "greedy.\n\n",
      date, CpuModel(), std::thread::hardware_concurrency(), o.endpoint, o.clients, o.requests,
      o.warmup, o.prompt_min, o.prompt_max, o.output_min, o.output_max, o.seed);
  absl::StrAppend(&out,
                  "| policy | ok/failed | req/s | out tok/s | total tok/s | TTFT p50 / p99 ms | "
                  "TPOT p50 / p99 ms | ITL p50 / p99 ms | e2e p50 / p99 s | peak KV, one request "
                  "| mean KV vs full | peak KV, cluster |\n"
                  "|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (const ServeBenchResult& r : results) {
    absl::StrAppendFormat(
        &out,
        "| %s | %d/%d | %.3f | %.2f | %.1f | %.0f / %.0f | %.1f / %.1f | %.1f / %.1f | %.1f / "
        "%.1f | %.2f MiB | %.1f%% | %s |\n",
        r.label, r.completed, r.failed, r.request_throughput, r.output_throughput,
        r.total_token_throughput, r.ttft_p50, r.ttft_p99, r.tpot_p50, r.tpot_p99, r.itl_p50,
        r.itl_p99, r.e2e_p50 / 1000, r.e2e_p99 / 1000, r.peak_request_kv_bytes / 1048576.0,
        100 * r.mean_kv_fraction,
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

}  // namespace xkv
