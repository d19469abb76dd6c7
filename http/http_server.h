// The HTTP listener of `xkv serve`, `xkv coordinator` and `xkv worker`: cpp-httplib with a thread
// pool (concurrent connections and scrapes), a request body limit (413) and graceful shutdown.
// Routes are mounted by the caller (http/probe_routes.h, http/openai_routes.h).
#ifndef XKV_HTTP_HTTP_SERVER_H_
#define XKV_HTTP_HTTP_SERVER_H_

#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"

namespace httplib {
class Server;
}  // namespace httplib

namespace xkv {

struct HttpServerOptions {
  std::string listen;               // host:port, [v6]:port or :port (all interfaces); 0 picks
  int threads = 16;                 // connections served at once (streams hold one each)
  size_t max_body_bytes = 1 << 20;  // larger request bodies get 413
  int io_timeout_s = 10;            // reading a request / writing a chunk
  int keep_alive_timeout_s = 2;     // an idle keep-alive connection is closed after this
};

// Splits `listen` into host and port. INVALID_ARGUMENT unless it is host:port, [v6]:port or :port
// with a decimal port in [0, 65535].
absl::StatusOr<std::pair<std::string, int>> ParseListenAddress(const std::string& listen);

class HttpServer {
 public:
  // Binds, lets `mount` add the routes, and starts serving on a thread of its own. INVALID_ARGUMENT
  // for a malformed address, UNAVAILABLE when it cannot be bound.
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(
      const HttpServerOptions& options, const std::function<void(httplib::Server&)>& mount);
  ~HttpServer();  // Shutdown()

  int port() const { return port_; }
  // Stops accepting, ends streamed responses at their next chunk, waits for the handlers running
  // and joins the threads. Idempotent.
  void Shutdown();

 private:
  HttpServer();

  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
  int port_ = 0;
};

}  // namespace xkv

#endif  // XKV_HTTP_HTTP_SERVER_H_
