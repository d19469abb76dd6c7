// `xkv worker`: one pipeline stage behind the internal xkv.v1.Worker gRPC service. It starts
// empty (health NOT_SERVING); the coordinator's LoadStage assigns its layer range. SIGINT/SIGTERM
// shut it down gracefully.
#include <pthread.h>
#include <signal.h>

#include <cstdio>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "http/probe_routes.h"
#include "tools/commands.h"
#include "tools/flag_set.h"
#include "tools/metrics_registry.h"
#include "tools/tls_flags.h"
#include "worker/listen_address.h"
#include "worker/stage_engine_factory.h"
#include "worker/tls_credentials.h"
#include "worker/worker_limits.h"
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
      r.Gauge("xkv_kv_cache_layer_blocks_free",
              "Free KV blocks of the stage's pool, which all its layers share.");
  layer_used->Clear();
  layer_free->Clear();
  if (executor == nullptr) return;
  const xkv::v1::StatusResponse st = executor->status();
  r.Gauge("xkv_stage_layer_begin", "First layer of the stage.")->Set({}, st.layer_begin());
  r.Gauge("xkv_stage_layer_end", "One past the last layer of the stage.")->Set({}, st.layer_end());
  r.Gauge("xkv_stage_weight_bytes", "Weight bytes of the stage.")->Set({}, st.weight_bytes());
  r.Gauge("xkv_stage_sequences", "Live sequences on the stage.")->Set({}, st.sequences());
  r.Gauge("xkv_kv_cache_blocks_used", "KV blocks in use (all layers of the stage).")
      ->Set({}, st.usage().blocks_used());
  r.Gauge("xkv_kv_cache_blocks_free", "Free KV blocks (all layers of the stage).")
      ->Set({}, st.usage().blocks_free());
  r.Gauge("xkv_kv_cache_bytes_used", "KV bytes held on the stage.")
      ->Set({}, st.usage().kv_bytes_used());
  r.Gauge("xkv_kv_cache_bytes_capacity", "KV byte capacity of the stage.")
      ->Set({}, st.usage().kv_bytes_capacity());
  const int64_t total = st.usage().blocks_used() + st.usage().blocks_free();
  r.Gauge("xkv_kv_cache_usage_ratio", "Used / total KV blocks of the stage.")
      ->Set({}, total > 0 ? static_cast<double>(st.usage().blocks_used()) / total : 0);
  for (const xkv::v1::LayerBlocks& l : st.layers()) {
    const MetricLabels labels = {{"layer", absl::StrCat(l.layer())}};
    layer_used->Set(labels, l.used());
    layer_free->Set(labels, l.free());
  }
}

}  // namespace

int RunWorker(int argc, char** argv) {
  std::string listen = "127.0.0.1:50061";
  std::string health_listen;
  std::string device = "cpu";
  int64_t threads = 1;
  std::string metrics_listen;
  TlsFiles tls_files;
  std::string control_peer;
  bool insecure = false;
  WorkerLimits limits;
  int64_t max_message_mb = 0;
  FlagSet flags("worker",
                "Serve one pipeline stage (xkv.v1.Worker) for a coordinator; the coordinator "
                "assigns the model file and layer range with LoadStage.");
  flags.String("listen", &listen,
               "host:port of the Worker service (port 0 picks a free port); an address other than "
               "loopback needs --tls-cert/--tls-key/--tls-ca or --insecure");
  RegisterTlsFlags(flags,
                   "this worker (the server side, and the client side towards the next worker)",
                   &tls_files);
  flags.String("tls-control-peer", &control_peer,
               "with mutual TLS: only a peer whose certificate names this (CN or DNS SAN; "
               "scripts/make-dev-ca's coordinator: xkv-coordinator) may LoadStage, Step, Compact, "
               "Release or read Status; other workers may only push hidden rows (empty: any peer "
               "of the CA)");
  flags.Bool("insecure", &insecure,
             "serve plaintext without peer authentication on a non-loopback --listen (anyone "
             "who reaches the port controls the stage; only on a trusted, isolated network)");
  flags.String("health-listen", &health_listen,
               "host:port of a plaintext server with only grpc.health.v1 (Kubernetes gRPC probes "
               "cannot present a client certificate; empty: off)");
  flags.String("model-dir", &limits.model_dir,
               "folder of the GGUF models: LoadStage's model_path must name a file inside it");
  int64_t old_max_step_tokens = 0;
  double gpu_memory_utilization = kDefaultGpuMemoryUtilization;
  flags.Int("max-batched-tokens", &limits.max_step_tokens,
            "most tokens (hidden rows) one step may carry, at least the coordinator's "
            "--max-batched-tokens; sizes a GPU stage's step scratch (a value above what the "
            "device holds fails LoadStage with the limit)");
  flags.Int("max-step-tokens", &old_max_step_tokens, "old name of --max-batched-tokens");
  flags.Double("gpu-memory-utilization", &gpu_memory_utilization,
               "fraction of the GPU's free memory a CUDA stage may use, in (0, 1]: weights, step "
               "scratch, and the KV pool gets the rest");
  flags.Int(
      "max-message-mb", &max_message_mb,
      "gRPC receive limit in MiB; must hold one step, --max-batched-tokens x hidden x 4 bytes "
      "(0: sized for a hidden size of 8192)");
  flags.Int("max-kv-bytes", &limits.max_kv_bytes,
            "bound on a stage's KV pool in bytes (0: for a CPU stage this host's memory or its "
            "cgroup limit; a CUDA stage's engine sizes its pool against the device)");
  flags.String("device", &device, "device of this stage: cpu or cuda:N (CUDA builds)");
  flags.Int("threads", &threads, "CPU threads for the stage's compute");
  flags.String("metrics-listen", &metrics_listen,
               "host:port of the Prometheus /metrics endpoint (empty: off)");
  if (auto code = flags.ParseOrExitCode(argc, argv, 2)) return *code;
  if (absl::StatusOr<int> d = ParseStageDevice(device); !d.ok()) return Fail(d.status());
  if (threads < 1) return Fail(absl::InvalidArgumentError("--threads must be >= 1"));
  if (old_max_step_tokens != 0) {
    if (flags.WasSet("max-batched-tokens") && old_max_step_tokens != limits.max_step_tokens) {
      return Fail(absl::InvalidArgumentError(
          "--max-step-tokens and --max-batched-tokens disagree: give --max-batched-tokens only "
          "(--max-step-tokens is its old name)"));
    }
    limits.max_step_tokens = old_max_step_tokens;
  }
  if (absl::Status s = ValidateGpuMemoryUtilization(gpu_memory_utilization); !s.ok()) {
    return Fail(s);
  }
  if (limits.max_step_tokens < 1 || max_message_mb < 0 || max_message_mb > 2047 ||
      limits.max_kv_bytes < 0) {
    return Fail(absl::InvalidArgumentError(
        "--max-batched-tokens must be >= 1, --max-message-mb in [0, 2047], --max-kv-bytes >= "
        "0"));
  }
  limits.max_message_bytes =
      max_message_mb > 0 ? max_message_mb << 20 : DefaultMaxMessageBytes(limits.max_step_tokens);
  absl::StatusOr<std::optional<TlsMaterial>> tls = LoadTlsMaterial(tls_files);
  if (!tls.ok()) return Fail(tls.status());
  if (!tls->has_value() && !control_peer.empty()) {
    return Fail(absl::InvalidArgumentError("--tls-control-peer needs mutual TLS (--tls-*)"));
  }
  if (!tls->has_value() && !insecure && !IsLoopbackListenAddress(listen)) {
    return Fail(absl::InvalidArgumentError(
        absl::StrCat("--listen ", listen,
                     " is not a loopback address: give --tls-cert, --tls-key and "
                     "--tls-ca (mutual TLS), or --insecure to serve it unauthenticated")));
  }
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
  options.service.limits = limits;
  options.service.gpu_memory_utilization = gpu_memory_utilization;
  options.health_listen = health_listen;
  if (tls->has_value()) {
    options.credentials = MutualTlsServerCredentials(**tls);
    options.service.link_credentials = MutualTlsChannelCredentials(**tls);
    options.service.control_peer = control_peer;
  }
  absl::StatusOr<std::unique_ptr<WorkerServer>> server = WorkerServer::Start(options);
  if (!server.ok()) return Fail(server.status());
  // "(port N)" is what scripts and tests read back.
  std::fprintf(stderr,
               "xkv worker: listening on %s (port %d), %s, device %s, waiting for LoadStage\n",
               listen.c_str(), (*server)->port(),
               tls->has_value() ? "mutual TLS" : "plaintext (unauthenticated)", device.c_str());
  if (!health_listen.empty()) {
    std::fprintf(stderr, "xkv worker: serving grpc.health.v1 on port %d\n",
                 (*server)->health_port());
  }
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
