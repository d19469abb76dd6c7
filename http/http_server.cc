#include "http/http_server.h"

#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <chrono>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"

namespace xkv {

absl::StatusOr<std::pair<std::string, int>> ParseListenAddress(const std::string& listen) {
  const size_t colon = listen.rfind(':');
  const auto bad = [&listen] {
    return absl::InvalidArgumentError(absl::StrCat(
        "listen address '", listen, "' must be host:port, [v6]:port or :port (port 0-65535)"));
  };
  if (colon == std::string::npos) return bad();
  std::string host = listen.substr(0, colon);
  const std::string port_text = listen.substr(colon + 1);
  int port = -1;
  const auto [end, ec] =
      std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (port_text.empty() || ec != std::errc() || end != port_text.data() + port_text.size() ||
      port < 0 || port > 65535) {
    return bad();
  }
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  } else if (host.find(':') != std::string::npos) {
    return bad();  // a bare IPv6 address needs brackets
  }
  if (host.empty()) host = "0.0.0.0";
  return std::make_pair(host, port);
}

HttpServer::HttpServer() : server_(std::make_unique<httplib::Server>()) {}

HttpServer::~HttpServer() { Shutdown(); }

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(
    const HttpServerOptions& options, const std::function<void(httplib::Server&)>& mount) {
  auto address = ParseListenAddress(options.listen);
  if (!address.ok()) return address.status();
  std::unique_ptr<HttpServer> s(new HttpServer());
  httplib::Server& server = *s->server_;
  const size_t threads = static_cast<size_t>(std::max(1, options.threads));
  server.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  server.set_payload_max_length(options.max_body_bytes);
  server.set_read_timeout(options.io_timeout_s);
  server.set_write_timeout(options.io_timeout_s);
  server.set_keep_alive_timeout(options.keep_alive_timeout_s);
  // SO_REUSEADDR only: httplib's default adds SO_REUSEPORT, which would let a second server bind
  // a port that is in use instead of failing.
  server.set_socket_options([](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  mount(server);
  const auto& [host, port] = *address;
  if (port == 0) {
    s->port_ = server.bind_to_any_port(host);
    if (s->port_ <= 0) s->port_ = 0;
  } else if (server.bind_to_port(host, port)) {
    s->port_ = port;
  }
  if (s->port_ == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", options.listen));
  }
  auto exited = std::make_shared<std::atomic<bool>>(false);
  s->thread_ = std::thread([server = s->server_.get(), exited] {
    server->listen_after_bind();
    *exited = true;
  });
  // httplib's stop() is a no-op until the accept loop runs: wait for it, so that a Shutdown right
  // after Start cannot miss it.
  while (!server.is_running() && !*exited) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return s;
}

void HttpServer::Shutdown() {
  server_->stop();
  if (thread_.joinable()) thread_.join();
}

}  // namespace xkv
