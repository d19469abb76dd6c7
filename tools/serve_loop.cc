#include "tools/serve_loop.h"

#include <time.h>

#include <csignal>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>

#include "http/openai_routes.h"
#include "http/probe_routes.h"
#include "tools/serve_metrics.h"

namespace xkv {
namespace {

volatile std::sig_atomic_t g_stop = 0;
void OnSignal(int) { g_stop = 1; }

int Fail(const char* command, const absl::Status& status) {
  std::fprintf(stderr, "xkv %s: %s\n", command, std::string(status.message()).c_str());
  return 1;
}

}  // namespace

int ServeUntilSignal(const ServeFlags& f, Coordinator* coordinator, const char* command) {
  absl::StatusOr<CoordinatorServerOptions> so = ServerOptionsFromFlags(f);
  if (!so.ok()) return Fail(command, so.status());
  absl::StatusOr<HttpApiOptions> http_options = HttpApiOptionsFromFlags(f);
  if (!http_options.ok()) return Fail(command, http_options.status());
  absl::StatusOr<std::unique_ptr<CoordinatorServer>> server =
      CoordinatorServer::Start(*so, coordinator);
  if (!server.ok()) return Fail(command, server.status());
  const CoordinatorOptions& o = coordinator->options();
  std::fprintf(stderr,
               "xkv %s: steps of up to %lld tokens (--max-batched-tokens), up to %lld of one "
               "prompt (--prefill-chunk), %lld micro-batches in flight; reconstruct re-reads %lld "
               "prompt tokens a step (--reconstruct-chunk, fit to a step)\n",
               command, static_cast<long long>(o.scheduler.step_token_budget),
               static_cast<long long>(o.scheduler.prefill_chunk),
               static_cast<long long>(o.scheduler.micro_batches),
               static_cast<long long>(coordinator->RereadChunk()));
  std::fprintf(stderr, "xkv %s: serving Generation on port %d, Admin on port %d\n", command,
               (*server)->port(), (*server)->admin_port());
  ProbeRoutes probes;
  if (!f.metrics_listen.empty() || !f.http_listen.empty()) {
    probes.metrics = ServingMetrics(coordinator);
  }
  probes.ready = [coordinator] { return coordinator->Readiness(); };
  std::unique_ptr<HttpServer> metrics, http;
  absl::Status started = absl::OkStatus();
  if (!f.metrics_listen.empty()) {
    absl::StatusOr<std::unique_ptr<HttpServer>> m =
        StartProbeServer({.listen = f.metrics_listen}, probes);
    if (m.ok()) {
      metrics = *std::move(m);
      std::fprintf(stderr, "xkv %s: serving /metrics on port %d\n", command, metrics->port());
    }
    started = m.status();
  }
  if (started.ok() && !f.http_listen.empty()) {
    absl::StatusOr<std::unique_ptr<HttpServer>> h =
        HttpServer::Start(http_options->server, [&](httplib::Server& s) {
          MountProbeRoutes(s, probes);
          MountOpenAiRoutes(s, coordinator, http_options->routes);
        });
    if (h.ok()) {
      http = *std::move(h);
      std::fprintf(stderr, "xkv %s: serving the OpenAI API on port %d\n", command, http->port());
    }
    started = h.status();
  }
  if (started.ok()) {
    std::signal(SIGINT, OnSignal);
    std::signal(SIGTERM, OnSignal);
    while (!g_stop) {
      struct timespec ts = {0, 100 * 1000 * 1000};
      nanosleep(&ts, nullptr);
    }
    std::fprintf(stderr, "xkv %s: shutting down\n", command);
  }
  // The coordinator's Shutdown ends every open request with UNAVAILABLE: HTTP streams end with an
  // error event and [DONE], waiting HTTP requests answer 503, gRPC streams get the status; new
  // requests meanwhile get 503 too (the coordinator stays alive for probes until this returns).
  // Then the HTTP threads (each answer written) and the gRPC server stop.
  coordinator->Shutdown();
  for (HttpServer* s : {metrics.get(), http.get()}) {
    if (s != nullptr) s->Shutdown();
  }
  (*server)->Shutdown();
  return started.ok() ? 0 : Fail(command, started);
}

}  // namespace xkv
