#include "http/probe_routes.h"

#include <httplib.h>

#include <utility>

namespace xkv {

void MountProbeRoutes(httplib::Server& server, ProbeRoutes routes) {
  server.Get("/health", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("ok\n", "text/plain; charset=utf-8");
  });
  server.Get("/ready", [ready = routes.ready](const httplib::Request&, httplib::Response& res) {
    const absl::Status s = ready ? ready() : absl::OkStatus();
    if (s.ok()) {
      res.set_content("ready\n", "text/plain; charset=utf-8");
      return;
    }
    res.status = 503;
    res.set_content(std::string(s.message()) + "\n", "text/plain; charset=utf-8");
  });
  if (routes.metrics) {
    server.Get("/metrics", [metrics = std::move(routes.metrics)](const httplib::Request&,
                                                                 httplib::Response& res) {
      res.set_content(metrics(), "text/plain; version=0.0.4; charset=utf-8");
    });
  }
}

absl::StatusOr<std::unique_ptr<HttpServer>> StartProbeServer(const HttpServerOptions& options,
                                                             ProbeRoutes routes) {
  return HttpServer::Start(
      options, [&routes](httplib::Server& server) { MountProbeRoutes(server, std::move(routes)); });
}

}  // namespace xkv
