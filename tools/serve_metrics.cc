#include "tools/serve_metrics.h"

#include "absl/strings/str_cat.h"
#include "tools/metrics_registry.h"

namespace xkv {
namespace {

void CollectStageMetrics(const xkv::v1::GetClusterStatusResponse& cluster, MetricsRegistry& r) {
  struct StageGauge {
    const char* name;
    const char* help;
    int64_t (xkv::v1::StageStatus::*get)() const;
  };
  static constexpr StageGauge kStage[] = {
      {"xkv_stage_weight_bytes", "Weight bytes of the stage.", &xkv::v1::StageStatus::weight_bytes},
      {"xkv_kv_cache_bytes_used", "KV bytes held on the stage.",
       &xkv::v1::StageStatus::kv_bytes_used},
      {"xkv_kv_cache_bytes_capacity", "KV byte capacity of the stage.",
       &xkv::v1::StageStatus::kv_bytes_capacity},
      {"xkv_kv_cache_bytes_predicted",
       "The stage planner's expected KV bytes of the stage at the live load.",
       &xkv::v1::StageStatus::kv_bytes_predicted},
      {"xkv_kv_cache_blocks_used", "KV blocks in use on the stage (all its layers).",
       &xkv::v1::StageStatus::blocks_used},
      {"xkv_kv_cache_blocks_free", "Free KV blocks on the stage (all its layers).",
       &xkv::v1::StageStatus::blocks_free},
  };
  MetricFamily* up = r.Gauge("xkv_stage_up", "1 when the stage answers and serves.");
  MetricFamily* usage = r.Gauge("xkv_kv_cache_usage_ratio", "Used / total KV blocks per stage.");
  up->Clear();
  usage->Clear();
  for (const StageGauge& g : kStage) r.Gauge(g.name, g.help)->Clear();
  for (const xkv::v1::StageStatus& s : cluster.stages()) {
    const MetricLabels labels = {{"stage", absl::StrCat(s.index())}};
    up->Set(labels, s.health() == xkv::v1::HEALTH_STATE_SERVING);
    if (s.health() == xkv::v1::HEALTH_STATE_UNREACHABLE) continue;
    for (const StageGauge& g : kStage) r.Gauge(g.name, g.help)->Set(labels, (s.*g.get)());
    const int64_t total = s.blocks_used() + s.blocks_free();
    if (total > 0) usage->Set(labels, static_cast<double>(s.blocks_used()) / total);
  }
}

void CollectProfileMetrics(const xkv::v1::GetAllocationResponse& alloc, MetricsRegistry& r) {
  // The live profile: mean kept fraction of the prompt prefix per layer (all layers hold the
  // same bytes per token, so their mean is the KV bytes held / full cache).
  MetricFamily* kept = r.Gauge("xkv_kv_kept_fraction", "Mean kept prefix fraction per layer.");
  MetricFamily* held = r.Gauge("xkv_kv_bytes_held_ratio", "Mean KV bytes held / full cache.");
  MetricFamily* ratio =
      r.Gauge("xkv_kv_compression_ratio", "Full cache / KV bytes held (1 / held ratio).");
  kept->Clear();
  held->Clear();
  ratio->Clear();
  r.Gauge("xkv_kv_profile_samples", "Profiles behind the kept-fraction means.")
      ->Set({}, static_cast<double>(alloc.samples()));
  if (alloc.samples() > 0 && alloc.layers_size() > 0) {
    double sum = 0;
    for (const xkv::v1::LayerAllocationStat& l : alloc.layers()) {
      kept->Set({{"layer", absl::StrCat(l.layer())}}, l.mean_kept_fraction());
      sum += l.mean_kept_fraction();
    }
    const double mean = sum / alloc.layers_size();
    held->Set({}, mean);
    if (mean > 0) ratio->Set({}, 1 / mean);
  }
}

// Scrape-time metrics from the coordinator's admin getters (GetClusterStatus asks every stage).
void CollectCoordinatorMetrics(Coordinator* c, MetricsRegistry& r) {
  const xkv::v1::ServiceConfig config = c->GetConfig();
  const xkv::v1::GetClusterStatusResponse cluster = c->GetClusterStatus();
  const xkv::v1::GetAllocationResponse alloc = c->GetAllocation();
  r.Gauge("xkv_num_requests_running", "Requests running (in the batch).")
      ->Set({}, cluster.running_requests());
  r.Gauge("xkv_num_requests_waiting", "Requests waiting in the queue.")
      ->Set({}, cluster.queued_requests());
  r.Gauge("xkv_num_requests_prefilling", "Running requests without a token yet.")
      ->Set({}, static_cast<double>(c->PrefillingRequests()));
  r.Gauge("xkv_max_queue", "Waiting requests before RESOURCE_EXHAUSTED (--max-queue).")
      ->Set({}, config.max_queue());
  r.Gauge("xkv_max_batch", "Running sequences per step (--max-batch).")
      ->Set({}, config.max_batch());
  r.Gauge("xkv_draining", "1 while Admin Drain stops admission.")->Set({}, cluster.draining());
  const xkv::v1::KvPolicySpec& p = config.default_policy();
  MetricFamily* retention =
      r.Gauge("xkv_retention_target", "Default xkv average-retention target (when set).");
  MetricFamily* fraction =
      r.Gauge("xkv_budget_fraction_target", "Default kept prefix fraction (when set).");
  retention->Clear();
  fraction->Clear();
  if (p.has_retention()) retention->Set({}, p.retention());
  if (p.has_budget_fraction()) fraction->Set({}, p.budget_fraction());
  CollectStageMetrics(cluster, r);
  CollectProfileMetrics(alloc, r);
}

// The process's request metrics: fed by the coordinator's on_request_done, served on /metrics.
MetricsRegistry& ServingRegistry() {
  static MetricsRegistry* registry = new MetricsRegistry();
  return *registry;
}

// Declares the request families (vLLM-style names and buckets) and returns them in order.
struct RequestFamilies {
  MetricFamily *requests, *prompt_tokens, *generation_tokens, *ttft, *e2e, *tpot, *itl, *profile,
      *solve, *queue;
};
RequestFamilies DeclareRequestFamilies(MetricsRegistry& r) {
  return {
      r.Counter("xkv_requests_total", "Finished or rejected Generate requests by status code."),
      r.Counter("xkv_prompt_tokens_total", "Prompt tokens of finished requests."),
      r.Counter("xkv_generation_tokens_total", "Generated tokens of finished requests."),
      r.Histogram("xkv_time_to_first_token_seconds", "Submit to first token.",
                  {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80}),
      r.Histogram("xkv_e2e_request_latency_seconds", "Submit to the last token.",
                  {0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 60, 120, 240}),
      r.Histogram("xkv_time_per_output_token_seconds",
                  "Per request: (end - first token) / (output tokens - 1).",
                  {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5}),
      r.Histogram(
          "xkv_inter_token_latency_seconds",
          "Each gap between consecutive generated tokens of a request.",
          {0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2.5}),
      r.Histogram("xkv_request_profile_seconds",
                  "Per profiled request: importance profiling (the mini-prefill, or the scoring "
                  "inside an observed prefill).",
                  {0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}),
      r.Histogram("xkv_request_solve_seconds", "Per profiled request: the per-layer budget solver.",
                  {0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1}),
      r.Histogram("xkv_request_queue_seconds",
                  "Submit to admission (the part of TTFT spent waiting for a batch slot and KV).",
                  {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80}),
  };
}

}  // namespace

void RecordServedRequest(const RequestRecord& rec) {
  const RequestFamilies f = DeclareRequestFamilies(ServingRegistry());
  f.requests->Add({{"code", absl::StatusCodeToString(rec.code)}});
  if (rec.e2e_seconds < 0) return;  // rejected at submit: no tokens, no latencies
  f.prompt_tokens->Add({}, static_cast<double>(rec.prompt_tokens));
  f.generation_tokens->Add({}, static_cast<double>(rec.completion_tokens));
  if (rec.code != absl::StatusCode::kOk) return;
  if (rec.ttft_seconds >= 0) {
    f.ttft->Observe({}, rec.ttft_seconds);
    f.queue->Observe({}, rec.queue_seconds);
  }
  f.e2e->Observe({}, rec.e2e_seconds);
  if (rec.tpot_seconds >= 0) f.tpot->Observe({}, rec.tpot_seconds);
  for (double gap : rec.itl_seconds) f.itl->Observe({}, gap);
  if (rec.profile_seconds > 0) f.profile->Observe({}, rec.profile_seconds);
  if (rec.solve_seconds > 0) f.solve->Observe({}, rec.solve_seconds);
}

std::function<std::string()> ServingMetrics(Coordinator* coordinator) {
  MetricsRegistry& registry = ServingRegistry();
  DeclareRequestFamilies(registry);
  registry.AddCollector(
      [coordinator](MetricsRegistry& r) { CollectCoordinatorMetrics(coordinator, r); });
  return [&registry] { return registry.Render(); };
}

}  // namespace xkv
