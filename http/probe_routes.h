// The operational routes: GET /health (liveness: the process serves HTTP), GET /ready (readiness:
// `ready` answers OK) and GET /metrics (Prometheus text exposition 0.0.4).
#ifndef XKV_HTTP_PROBE_ROUTES_H_
#define XKV_HTTP_PROBE_ROUTES_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "http/http_server.h"

namespace httplib {
class Server;
}  // namespace httplib

namespace xkv {

struct ProbeRoutes {
  std::function<std::string()> metrics;  // the /metrics text; unset: no /metrics route
  std::function<absl::Status()> ready;   // /ready: 200 when OK, else 503 with the message
};

void MountProbeRoutes(httplib::Server& server, ProbeRoutes routes);

// An HTTP server with only these routes (e.g. --metrics-listen).
absl::StatusOr<std::unique_ptr<HttpServer>> StartProbeServer(const HttpServerOptions& options,
                                                             ProbeRoutes routes);

}  // namespace xkv

#endif  // XKV_HTTP_PROBE_ROUTES_H_
