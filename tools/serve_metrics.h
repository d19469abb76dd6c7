// The Prometheus metrics of `xkv serve` / `xkv coordinator`: per-request families (vLLM-style
// names and buckets) fed by the coordinator's on_request_done, and scrape-time gauges from its
// admin getters (queue, batch, stages, KV blocks, the live profile).
#ifndef XKV_TOOLS_SERVE_METRICS_H_
#define XKV_TOOLS_SERVE_METRICS_H_

#include <functional>
#include <string>

#include "coordinator/coordinator.h"

namespace xkv {

// CoordinatorOptions::on_request_done of a process that serves metrics.
void RecordServedRequest(const RequestRecord& record);

// Declares the families and adds the scrape-time collector over `coordinator` (once per process);
// returns the /metrics text renderer.
std::function<std::string()> ServingMetrics(Coordinator* coordinator);

}  // namespace xkv

#endif  // XKV_TOOLS_SERVE_METRICS_H_
