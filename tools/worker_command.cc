// `xkv worker`: one pipeline stage behind the internal xkv.v1.Worker gRPC service. It starts
// empty (health NOT_SERVING); the coordinator's LoadStage assigns its layer range. SIGINT/SIGTERM
// shut it down gracefully.
#include <pthread.h>
#include <signal.h>

#include <cstdio>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "http/probe_routes.h"
#include "tools/commands.h"
#include "tools/flag_set.h"
#include "tools/metrics_registry.h"
#include "worker/stage_engine_factory.h"
#include "worker/worker_service.h"

namespace xkv {
namespace {

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "xkv worker: %s\n", std::string(status.message()).c_str());
  return 1;
}

// Scrape-time metrics from the loaded stage's StageExecutor::status() (xkv_stage_loaded 0 and
// nothing else before LoadStage).
void CollectWorkerMetrics(WorkerService* service, MetricsRegistry& r) {
  std::shared_ptr<StageExecutor> executor = service->executor();
  r.Gauge("xkv_stage_loaded", "1 once the coordinator has loaded a stage.")
      ->Set({}, executor != nullptr);
  MetricFamily* layer_used =
      r.Gauge("xkv_kv_cache_layer_blocks_used", "KV blocks in use per layer of the stage.");
  MetricFamily* layer_free =
      r.Gauge("xkv_kv_cache_layer_blocks_free", "Free KV blocks per layer of the stage.");
  layer_used->Clear();
  layer_free->Clear();
  if (executor == nullptr) return;
  const StageStatus st = executor->status();
  r.Gauge("xkv_stage_layer_begin", "First layer of the stage.")->Set({}, st.layer_begin);
  r.Gauge("xkv_stage_layer_end", "One past the last layer of the stage.")->Set({}, st.layer_end);
  r.Gauge("xkv_stage_weight_bytes", "Weight bytes of the stage.")->Set({}, st.weight_bytes);
  r.Gauge("xkv_stage_sequences", "Live sequences on the stage.")->Set({}, st.sequences);
  r.Gauge("xkv_kv_cache_blocks_used", "KV blocks in use (all layers of the stage).")
      ->Set({}, st.usage.blocks_used);
  r.Gauge("xkv_kv_cache_blocks_free", "Free KV blocks (all layers of the stage).")
      ->Set({}, st.usage.blocks_free);
  r.Gauge("xkv_kv_cache_bytes_used", "KV bytes held on the stage.")
      ->Set({}, st.usage.kv_bytes_used);
  r.Gauge("xkv_kv_cache_bytes_capacity", "KV byte capacity of the stage.")
      ->Set({}, st.usage.kv_bytes_capacity);
  const int64_t total = st.usage.blocks_used + st.usage.blocks_free;
  r.Gauge("xkv_kv_cache_usage_ratio", "Used / total KV blocks of the stage.")
      ->Set({}, total > 0 ? static_cast<double>(st.usage.blocks_used) / total : 0);
  for (const LayerBlockUsage& l : st.layers) {
    const MetricLabels labels = {{"layer", absl::StrCat(l.layer)}};
    layer_used->Set(labels, l.used);
    layer_free->Set(labels, l.free);
  }
}

}  // namespace

int RunWorker(int argc, char** argv) {
  std::string listen = "0.0.0.0:50061";
  std::string device = "cpu";
  int64_t threads = 1;
  std::string metrics_listen;
  FlagSet flags("worker",
                "Serve one pipeline stage (xkv.v1.Worker) for a coordinator; the coordinator "
                "assigns the model file and layer range with LoadStage.");
  flags.String("listen", &listen, "host:port to listen on (port 0 picks a free port)");
  flags.String("device", &device, "device of this stage: cpu or cuda:N (CUDA builds)");
  flags.Int("threads", &threads, "CPU threads for the stage's compute");
  flags.String("metrics-listen", &metrics_listen,
               "host:port of the Prometheus /metrics endpoint (empty: off)");
  if (absl::Status s = flags.Parse(argc, argv, 2); !s.ok()) return Fail(s);
  if (flags.help_requested()) {
    std::fputs(flags.Usage().c_str(), stdout);
    return 0;
  }
  if (absl::StatusOr<int> d = ParseStageDevice(device); !d.ok()) return Fail(d.status());
  if (threads < 1) return Fail(absl::InvalidArgumentError("--threads must be >= 1"));
  // Block the shutdown signals before gRPC starts its threads, so only sigwait sees them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  WorkerServerOptions options;
  options.listen = listen;
  options.service.device = device;
  options.service.num_threads = static_cast<int>(threads);
  absl::StatusOr<std::unique_ptr<WorkerServer>> server = WorkerServer::Start(options);
  if (!server.ok()) return Fail(server.status());
  std::fprintf(stderr, "xkv worker: listening on %s (port %d), device %s, waiting for LoadStage\n",
               listen.c_str(), (*server)->port(), device.c_str());
  MetricsRegistry registry;
  std::unique_ptr<HttpServer> metrics;
  if (!metrics_listen.empty()) {
    WorkerService* service = &(*server)->service();
    registry.AddCollector([service](MetricsRegistry& r) { CollectWorkerMetrics(service, r); });
    absl::StatusOr<std::unique_ptr<HttpServer>> m = StartProbeServer(
        {.listen = metrics_listen},
        {.metrics = [&registry] { return registry.Render(); },
         .ready =
             [service] {
               return service->executor() != nullptr
                          ? absl::OkStatus()
                          : absl::UnavailableError("no stage loaded (waiting for LoadStage)");
             }});
    if (!m.ok()) {
      (*server)->Shutdown();
      return Fail(m.status());
    }
    metrics = *std::move(m);
    std::fprintf(stderr, "xkv worker: serving /metrics on port %d\n", metrics->port());
  }
  int signal = 0;
  sigwait(&signals, &signal);
  std::fprintf(stderr, "xkv worker: signal %d, shutting down\n", signal);
  if (metrics != nullptr) metrics->Shutdown();
  (*server)->Shutdown();
  (*server)->Wait();
  return 0;
}

}  // namespace xkv
