#include "model/kv_compressor.h"

#include <algorithm>
#include <chrono>
#include <functional>
#include <numeric>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace xkv {
namespace {

using Clock = std::chrono::steady_clock;

enum class Route {
  kKeepAll,   // nothing evicted
  kInFlight,  // budgets known before the real prefill: compact layer by layer during it
  kAfter,     // hold the full KV until every layer reported, then solve and compact
};

double MsSince(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

// One request's part of a chunked prefill.
struct SeqRun {
  absl::Span<const int32_t> prompt;
  KvCache* cache = nullptr;
  bool observe = false;  // observe the final chunk
  std::vector<float>* logits = nullptr;
  std::vector<int64_t> starts;
  size_t next = 0;
};
using LayerHook = std::function<absl::Status(int run, const LayerObservation& obs)>;

// Runs every request's chunks, batching one chunk of each live request per step; the final chunk
// of a request with `observe` reports its layers to hook(run index, observation).
absl::Status RunChunkedPrefill(LlamaModel& model, std::vector<SeqRun>& runs, int64_t chunk,
                               int window, const LayerHook& hook) {
  for (SeqRun& r : runs) r.starts = PrefillChunkStarts(r.prompt.size(), chunk, window);
  while (true) {
    BatchStep step;
    std::vector<int32_t> tokens;
    std::vector<int> keys;
    std::vector<bool> final_chunk;
    for (size_t i = 0; i < runs.size(); ++i) {
      SeqRun& r = runs[i];
      if (r.next >= r.starts.size()) continue;
      const bool last = r.next + 1 == r.starts.size();
      const int64_t begin = r.starts[r.next];
      const int64_t end = last ? static_cast<int64_t>(r.prompt.size()) : r.starts[r.next + 1];
      step.sequences.push_back({r.cache, end - begin, begin, last && r.observe});
      tokens.insert(tokens.end(), r.prompt.begin() + begin, r.prompt.begin() + end);
      keys.push_back(static_cast<int>(i));
      final_chunk.push_back(last);
      ++r.next;
    }
    if (step.sequences.empty()) return absl::OkStatus();
    if (hook) {
      step.observer = [&](const LayerObservation& obs) { return hook(keys[obs.sequence], obs); };
    }
    ASSIGN_OR_RETURN(std::vector<float> logits, model.Forward(tokens, step));
    const int64_t vocab = model.config().vocab_size;
    for (size_t s = 0; s < keys.size(); ++s) {
      if (!final_chunk[s]) continue;
      runs[keys[s]].logits->assign(logits.begin() + s * vocab, logits.begin() + (s + 1) * vocab);
    }
  }
}

absl::Status ValidateRequests(const LlamaModel& model, absl::Span<const PrefillRequest> requests) {
  const ModelConfig& c = model.config();
  if (model.layer_begin() != 0 || model.layer_end() != c.n_layers) {
    return absl::FailedPreconditionError("kv compressor: the model must hold every layer");
  }
  absl::flat_hash_set<const KvCache*> seen;
  for (const PrefillRequest& r : requests) {
    const std::string who = absl::StrCat("kv compressor: request ", r.request_id, ": ");
    if (r.prompt.empty()) return absl::InvalidArgumentError(who + "empty prompt");
    if (r.cache == nullptr) return absl::InvalidArgumentError(who + "no cache");
    if (!seen.insert(r.cache).second) {
      return absl::InvalidArgumentError(who + "shares its cache with another request");
    }
    const KvCache& k = *r.cache;
    if (k.layer_begin() != 0 || k.layer_end() != c.n_layers || k.n_kv_heads() != c.n_kv_heads ||
        k.head_dim() != c.head_dim) {
      return absl::InvalidArgumentError(who + "cache shape does not match the model");
    }
    for (int l = 0; l < c.n_layers; ++l) {
      if (k.length(l) != 0) {
        return absl::InvalidArgumentError(
            absl::StrCat(who, "cache must be fresh; layer ", l, " holds ", k.length(l), " tokens"));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateImportance(const ImportanceOptions& o, int64_t prefill_chunk) {
  if (o.window < 1 || o.pool_kernel < 1 || o.pool_kernel % 2 == 0) {
    return absl::InvalidArgumentError(absl::StrCat("kv compressor: observation window ", o.window,
                                                   " must be >= 1 and pool kernel ", o.pool_kernel,
                                                   " odd and >= 1"));
  }
  if (prefill_chunk < 0 || (prefill_chunk > 0 && prefill_chunk < o.window)) {
    return absl::InvalidArgumentError(
        absl::StrCat("kv compressor: prefill chunk ", prefill_chunk,
                     " must be 0 (whole prompt) or >= the observation window w = ", o.window));
  }
  return absl::OkStatus();
}

}  // namespace

std::vector<int64_t> PrefillChunkStarts(int64_t prompt_len, int64_t chunk, int window) {
  if (chunk <= 0 || chunk >= prompt_len) return {0};
  int64_t last = ((prompt_len - 1) / chunk) * chunk;
  if (prompt_len - last < window) last = std::max<int64_t>(0, prompt_len - window);
  std::vector<int64_t> starts;
  for (int64_t s = 0; s < last; s += chunk) starts.push_back(s);
  starts.push_back(last);
  return starts;
}

struct KvCompressor::Job {
  const PrefillRequest* request = nullptr;
  int64_t T = 0;
  Route route = Route::kKeepAll;
  bool mini = false;      // scores from the per_request mini-prefill
  bool collect = false;   // the real prefill collects the scores
  bool profiled = false;  // xkv solved on this request's own profile
  CollectedScores scores;
  AllocationPlan plan;
  std::vector<float> logits;
  double profile_ms = 0.0, solve_ms = 0.0, prefill_ms = 0.0;
};

absl::StatusOr<std::unique_ptr<KvCompressor>> KvCompressor::Create(
    const KvCompressorOptions& options) {
  RETURN_IF_ERROR(ValidateSettings(options.kv));
  RETURN_IF_ERROR(ValidateImportance(options.importance, options.prefill_chunk));
  std::unique_ptr<KvCompressor> c(new KvCompressor(options));
  c->options_.importance = ScoringFor(options.kv, options.importance);
  if (options.kv.profile.kind == ProfileModeKind::kSampled) {
    ASSIGN_OR_RETURN(c->store_, ProfileStore::Create({options.kv.profile.sample_rate, options.seed,
                                                      options.profile_store_window}));
  }
  return c;
}

absl::Status KvCompressor::Validate(const LlamaModel& model,
                                    absl::Span<const PrefillRequest> requests) const {
  RETURN_IF_ERROR(ValidateRequests(model, requests));
  if (options_.kv.policy == PolicyKind::kFull ||
      options_.kv.target.kind != KvTarget::Kind::kTokens) {
    return absl::OkStatus();
  }
  const int64_t L = model.config().n_layers, w = options_.importance.window;
  for (const PrefillRequest& r : requests) {
    const int64_t T = r.prompt.size(), P = T - w;
    if (P > 0 && options_.kv.target.amount > L * P) {
      return absl::InvalidArgumentError(absl::StrCat(
          "kv compressor: request ", r.request_id, ": token budget ", options_.kv.target.amount,
          " is above a full cache; it must be in [0, ", L * P, "] for a prompt of ", T, " tokens (",
          L, " layers x ", P, " evictable = T - w)"));
    }
  }
  return absl::OkStatus();
}

std::vector<KvCompressor::Job> KvCompressor::MakeJobs(const LlamaModel& model,
                                                      absl::Span<const PrefillRequest> requests) {
  const ModelConfig& c = model.config();
  const bool xkv = NeedsProfile(options_.kv.policy);
  std::vector<Job> jobs(requests.size());
  for (size_t i = 0; i < requests.size(); ++i) {
    Job& job = jobs[i];
    job.request = &requests[i];
    job.T = requests[i].prompt.size();
    job.scores = MakeCollectedScores(c, 0, c.n_layers, job.T, options_.importance);
    if (options_.kv.policy == PolicyKind::kFull || job.T <= options_.importance.window) {
      job.route = Route::kKeepAll;
    } else if (!xkv) {  // baselines: budgets independent of the scores
      job.route = Route::kInFlight;
      job.collect = NeedsScores(options_.kv.policy);
    } else if (options_.kv.profile.kind == ProfileModeKind::kPerRequest) {
      job.route = Route::kInFlight;
      job.mini = job.profiled = true;
    } else {
      job.profiled = options_.kv.profile.kind == ProfileModeKind::kOnePass ||
                     store_->ShouldProfile(requests[i].request_id);
      job.route = job.profiled ? Route::kAfter : Route::kInFlight;
      job.collect = true;
    }
  }
  return jobs;
}

absl::Status KvCompressor::MiniPrefill(LlamaModel& model, std::vector<Job>& jobs) {
  const ModelConfig& c = model.config();
  ImportanceCollector collector(c, 0, c.n_layers, options_.importance);
  BatchStep step;
  step.scores_only = true;
  std::vector<int32_t> tokens;
  std::vector<int> keys;
  for (size_t j = 0; j < jobs.size(); ++j) {
    if (!jobs[j].mini) continue;
    RETURN_IF_ERROR(collector.Expect(static_cast<int>(j), jobs[j].T));
    step.sequences.push_back({jobs[j].request->cache, jobs[j].T, 0, true});
    const absl::Span<const int32_t> p = jobs[j].request->prompt;
    tokens.insert(tokens.end(), p.begin(), p.end());
    keys.push_back(static_cast<int>(j));
  }
  if (keys.empty()) return absl::OkStatus();
  step.observer = collector.ObserverFor(keys);
  const auto t0 = Clock::now();
  RETURN_IF_ERROR(model.Forward(tokens, step).status());
  const double ms = MsSince(t0);
  for (int j : keys) {
    jobs[j].scores = collector.Take(j);
    jobs[j].profile_ms = ms;
  }
  return absl::OkStatus();
}

absl::Status KvCompressor::PrepareBudgets(const ModelConfig& config, std::vector<Job>& jobs) {
  for (Job& job : jobs) {
    if (job.route != Route::kInFlight) continue;
    const auto t0 = Clock::now();
    PolicyBudgets b;
    if (NeedsProfile(options_.kv.policy) && !job.mini) {  // sampled, not profiled
      ASSIGN_OR_RETURN(
          b, SampledBudgets(*store_, options_.kv,
                            {config.n_layers, job.scores.prefix_len(),
                             config.KvBytesPerTokenPerLayer(static_cast<int>(sizeof(float)))}));
    } else {
      ASSIGN_OR_RETURN(b, SolveBudgets(job.scores, config, options_.kv));
    }
    job.plan = PlanSkeleton(job.scores, options_.kv, std::move(b));
    job.solve_ms += MsSince(t0);
  }
  return absl::OkStatus();
}

absl::Status KvCompressor::CompactInFlight(Job& job, const CollectedScores& scores, int layer) {
  const auto t0 = Clock::now();
  const int i = layer - job.plan.layer_begin;
  ASSIGN_OR_RETURN(
      std::vector<std::vector<int32_t>> kept,
      KeptSlots(scores, layer, job.plan.budgets.budgets[i], ToPolicyOptions(options_.kv)));
  RETURN_IF_ERROR(CompactLayer(*job.request->cache, layer, job.T, kept));
  job.plan.kept[i] = std::move(kept);
  job.solve_ms += MsSince(t0);
  return absl::OkStatus();
}

absl::Status KvCompressor::Finish(const ModelConfig& config, Job& job) {
  const auto t0 = Clock::now();
  switch (job.route) {
    case Route::kKeepAll:
      job.plan = PlanSkeleton(job.scores, options_.kv, PolicyBudgets{});
      return absl::OkStatus();
    case Route::kInFlight:
      RETURN_IF_ERROR(CompactInFlight(job, job.scores, config.n_layers - 1));
      RETURN_IF_ERROR(FinishPlan(job.scores, options_.kv, &job.plan));
      break;
    case Route::kAfter: {
      ASSIGN_OR_RETURN(job.plan, PlanAllocation(job.scores, config, options_.kv));
      RETURN_IF_ERROR(ApplyAllocation(*job.request->cache, job.plan));
      if (store_ != nullptr && job.profiled) {
        RETURN_IF_ERROR(store_->AddSample(job.plan.budgets.budgets, job.scores.prefix_len()));
      }
      break;
    }
  }
  job.solve_ms += MsSince(t0);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<CompressedPrefill>> KvCompressor::Prefill(
    LlamaModel& model, absl::Span<const PrefillRequest> requests) {
  RETURN_IF_ERROR(Validate(model, requests));
  const ModelConfig& c = model.config();
  std::vector<Job> jobs = MakeJobs(model, requests);
  RETURN_IF_ERROR(MiniPrefill(model, jobs));
  RETURN_IF_ERROR(PrepareBudgets(c, jobs));
  ImportanceCollector collector(c, 0, c.n_layers, options_.importance);
  std::vector<SeqRun> runs(jobs.size());
  for (size_t j = 0; j < jobs.size(); ++j) {
    if (jobs[j].collect) RETURN_IF_ERROR(collector.Expect(static_cast<int>(j), jobs[j].T));
    runs[j] = {jobs[j].request->prompt, jobs[j].request->cache, jobs[j].route != Route::kKeepAll,
               &jobs[j].logits};
  }
  const LayerHook hook = [&](int j, const LayerObservation& obs) -> absl::Status {
    Job& job = jobs[j];
    if (job.collect) RETURN_IF_ERROR(collector.Observe(j, obs));
    if (job.route != Route::kInFlight || obs.layer == 0) return absl::OkStatus();
    return CompactInFlight(job, job.collect ? *collector.scores(j) : job.scores, obs.layer - 1);
  };
  const auto t0 = Clock::now();
  RETURN_IF_ERROR(
      RunChunkedPrefill(model, runs, options_.prefill_chunk, options_.importance.window, hook));
  const double prefill_ms = MsSince(t0);
  std::vector<CompressedPrefill> out(jobs.size());
  for (size_t j = 0; j < jobs.size(); ++j) {
    Job& job = jobs[j];
    if (job.collect) {
      job.scores = collector.Take(static_cast<int>(j));
      job.profile_ms += collector.milliseconds(static_cast<int>(j));
    }
    RETURN_IF_ERROR(Finish(c, job));
    CompressedPrefill& r = out[j];
    r.logits = std::move(job.logits);
    r.next_position = job.T;
    r.report = MakeReport(*job.request->cache, job.plan, c);
    r.report.profiled = job.profiled;
    r.report.profile_ms = job.profile_ms;
    r.report.solve_ms = job.solve_ms;
    r.report.prefill_ms = prefill_ms;
    r.plan = std::move(job.plan);
    if (options_.keep_scores) r.scores = std::move(job.scores);
  }
  return out;
}

absl::StatusOr<std::vector<ScoredPrefill>> PrefillWithScores(
    LlamaModel& model, absl::Span<const PrefillRequest> requests,
    const ImportanceOptions& importance, int64_t prefill_chunk) {
  RETURN_IF_ERROR(ValidateImportance(importance, prefill_chunk));
  RETURN_IF_ERROR(ValidateRequests(model, requests));
  const ModelConfig& c = model.config();
  ImportanceCollector collector(c, 0, c.n_layers, importance);
  std::vector<ScoredPrefill> out(requests.size());
  std::vector<SeqRun> runs(requests.size());
  for (size_t i = 0; i < requests.size(); ++i) {
    const int64_t T = requests[i].prompt.size();
    RETURN_IF_ERROR(collector.Expect(static_cast<int>(i), T));
    runs[i] = {requests[i].prompt, requests[i].cache, T > importance.window, &out[i].logits};
  }
  const LayerHook hook = [&](int i, const LayerObservation& obs) {
    return collector.Observe(i, obs);
  };
  RETURN_IF_ERROR(RunChunkedPrefill(model, runs, prefill_chunk, importance.window, hook));
  for (size_t i = 0; i < requests.size(); ++i) out[i].scores = collector.Take(static_cast<int>(i));
  return out;
}

}  // namespace xkv
