#include "tools/metrics_http.h"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace xkv {
namespace {

void AppendEscaped(const std::string& text, bool quote, std::string* out) {
  for (char c : text) {
    if (c == '\\') {
      out->append("\\\\");
    } else if (c == '\n') {
      out->append("\\n");
    } else if (c == '"' && quote) {
      out->append("\\\"");
    } else {
      out->push_back(c);
    }
  }
}

// `name{a="x",b="y"}` plus an optional extra label (histogram `le`).
void AppendSeriesName(const std::string& name, const MetricLabels& labels, const char* extra_name,
                      const std::string& extra_value, std::string* out) {
  out->append(name);
  if (labels.empty() && extra_name == nullptr) return;
  out->push_back('{');
  bool first = true;
  for (const auto& [k, v] : labels) {
    if (!first) out->push_back(',');
    first = false;
    out->append(k).append("=\"");
    AppendEscaped(v, true, out);
    out->push_back('"');
  }
  if (extra_name != nullptr) {
    if (!first) out->push_back(',');
    out->append(extra_name).append("=\"").append(extra_value).push_back('"');
  }
  out->push_back('}');
}

const char* TypeName(MetricType type) {
  switch (type) {
    case MetricType::kCounter:
      return "counter";
    case MetricType::kGauge:
      return "gauge";
    case MetricType::kHistogram:
      return "histogram";
  }
  return "untyped";
}

}  // namespace

std::string FormatMetricValue(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  char buf[64];
  std::to_chars_result r = std::to_chars(buf, buf + sizeof(buf), value);
  return std::string(buf, r.ptr);
}

MetricFamily::MetricFamily(std::string name, std::string help, MetricType type,
                           std::vector<double> buckets)
    : name_(std::move(name)), help_(std::move(help)), type_(type), buckets_([&] {
        std::sort(buckets.begin(), buckets.end());
        buckets.erase(std::unique(buckets.begin(), buckets.end()), buckets.end());
        while (!buckets.empty() && std::isinf(buckets.back())) buckets.pop_back();
        return buckets;
      }()) {}

MetricFamily::Series& MetricFamily::Get(const MetricLabels& labels) {
  Series& s = series_[labels];
  if (type_ == MetricType::kHistogram && s.counts.empty()) s.counts.assign(buckets_.size() + 1, 0);
  return s;
}

void MetricFamily::Add(const MetricLabels& labels, double delta) {
  if (type_ == MetricType::kHistogram || (type_ == MetricType::kCounter && !(delta >= 0))) return;
  std::lock_guard<std::mutex> lock(mu_);
  Get(labels).value += delta;
}

void MetricFamily::Set(const MetricLabels& labels, double value) {
  if (type_ != MetricType::kGauge) return;
  std::lock_guard<std::mutex> lock(mu_);
  Get(labels).value = value;
}

void MetricFamily::Observe(const MetricLabels& labels, double value) {
  if (type_ != MetricType::kHistogram) return;
  const size_t bucket =
      std::lower_bound(buckets_.begin(), buckets_.end(), value) - buckets_.begin();
  std::lock_guard<std::mutex> lock(mu_);
  Series& s = Get(labels);
  ++s.counts[bucket];
  s.sum += value;
  ++s.count;
}

void MetricFamily::Clear() {
  std::lock_guard<std::mutex> lock(mu_);
  series_.clear();
}

void MetricFamily::Render(std::string* out) const {
  std::lock_guard<std::mutex> lock(mu_);
  if (series_.empty()) return;
  out->append("# HELP ").append(name_).push_back(' ');
  AppendEscaped(help_, false, out);
  out->append("\n# TYPE ").append(name_).push_back(' ');
  out->append(TypeName(type_)).push_back('\n');
  for (const auto& [labels, s] : series_) {
    if (type_ != MetricType::kHistogram) {
      AppendSeriesName(name_, labels, nullptr, "", out);
      out->append(" ").append(FormatMetricValue(s.value)).push_back('\n');
      continue;
    }
    uint64_t cumulative = 0;
    for (size_t b = 0; b <= buckets_.size(); ++b) {
      cumulative += s.counts[b];
      const std::string le = b < buckets_.size() ? FormatMetricValue(buckets_[b]) : "+Inf";
      AppendSeriesName(name_ + "_bucket", labels, "le", le, out);
      out->append(" ").append(absl::StrCat(cumulative)).push_back('\n');
    }
    AppendSeriesName(name_ + "_sum", labels, nullptr, "", out);
    out->append(" ").append(FormatMetricValue(s.sum)).push_back('\n');
    AppendSeriesName(name_ + "_count", labels, nullptr, "", out);
    out->append(" ").append(absl::StrCat(s.count)).push_back('\n');
  }
}

MetricFamily* MetricsRegistry::Declare(const std::string& name, const std::string& help,
                                       MetricType type, std::vector<double> buckets) {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& f : families_) {
    if (f->name() == name) return f.get();
  }
  families_.push_back(std::make_unique<MetricFamily>(name, help, type, std::move(buckets)));
  return families_.back().get();
}

MetricFamily* MetricsRegistry::Counter(const std::string& name, const std::string& help) {
  return Declare(name, help, MetricType::kCounter, {});
}

MetricFamily* MetricsRegistry::Gauge(const std::string& name, const std::string& help) {
  return Declare(name, help, MetricType::kGauge, {});
}

MetricFamily* MetricsRegistry::Histogram(const std::string& name, const std::string& help,
                                         std::vector<double> buckets) {
  return Declare(name, help, MetricType::kHistogram, std::move(buckets));
}

void MetricsRegistry::AddCollector(std::function<void(MetricsRegistry&)> collector) {
  std::lock_guard<std::mutex> lock(mu_);
  collectors_.push_back(std::move(collector));
}

std::string MetricsRegistry::Render() {
  std::lock_guard<std::mutex> collect(collect_mu_);
  std::vector<std::function<void(MetricsRegistry&)>> collectors;
  {
    std::lock_guard<std::mutex> lock(mu_);
    collectors = collectors_;
  }
  for (const auto& c : collectors) c(*this);  // may declare families: mu_ not held
  std::vector<const MetricFamily*> families;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& f : families_) families.push_back(f.get());
  }
  std::string out;
  for (const MetricFamily* f : families) f->Render(&out);
  return out;
}

// --- HTTP server ---

namespace {

// Splits host:port, [v6]:port or :port. false when malformed.
bool SplitHostPort(const std::string& listen, std::string* host, std::string* port) {
  size_t colon = listen.rfind(':');
  if (colon == std::string::npos || colon + 1 == listen.size()) return false;
  *host = listen.substr(0, colon);
  *port = listen.substr(colon + 1);
  if (host->size() >= 2 && host->front() == '[' && host->back() == ']') {
    *host = host->substr(1, host->size() - 2);
  }
  return port->find_first_not_of("0123456789") == std::string::npos;
}

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Waits until fd is ready for `events` or the deadline passes; false on timeout or error.
bool WaitFd(int fd, short events, int64_t deadline_ms) {
  for (;;) {
    const int64_t left = deadline_ms - NowMs();
    if (left <= 0) return false;
    pollfd p = {fd, events, 0};
    int n = poll(&p, 1, static_cast<int>(left));
    if (n < 0 && errno == EINTR) continue;
    return n > 0 && (p.revents & (events | POLLHUP | POLLERR)) != 0;
  }
}

void SendAll(int fd, const std::string& data, int64_t deadline_ms) {
  size_t sent = 0;
  while (sent < data.size()) {
    ssize_t n = send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
    if (n > 0) {
      sent += static_cast<size_t>(n);
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (!WaitFd(fd, POLLOUT, deadline_ms)) return;
    } else {
      return;
    }
  }
}

std::string Response(int code, const char* reason, const std::string& content_type,
                     const std::string& body, bool head) {
  std::string r =
      absl::StrCat("HTTP/1.1 ", code, " ", reason, "\r\nContent-Type: ", content_type,
                   "\r\nContent-Length: ", body.size(), "\r\nConnection: close\r\n\r\n");
  if (!head) r += body;
  return r;
}

}  // namespace

absl::StatusOr<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Start(
    const MetricsHttpServerOptions& options, std::function<std::string()> render) {
  std::string host, port;
  if (!SplitHostPort(options.listen, &host, &port)) {
    return absl::InvalidArgumentError("metrics listen address must be host:port, got '" +
                                      options.listen + "'");
  }
  addrinfo hints = {};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  addrinfo* found = nullptr;
  if (int rc = getaddrinfo(host.empty() ? nullptr : host.c_str(), port.c_str(), &hints, &found);
      rc != 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot resolve metrics address ", options.listen, ": ", gai_strerror(rc)));
  }
  int fd = -1;
  std::string error = "no address";
  for (addrinfo* a = found; a != nullptr && fd < 0; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) continue;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, a->ai_addr, a->ai_addrlen) != 0 || listen(fd, 16) != 0) {
      error = std::strerror(errno);
      close(fd);
      fd = -1;
    }
  }
  freeaddrinfo(found);
  if (fd < 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen for metrics on ", options.listen, ": ", error));
  }
  auto server = std::unique_ptr<MetricsHttpServer>(new MetricsHttpServer());
  server->options_ = options;
  server->render_ = std::move(render);
  server->listen_fd_ = fd;
  sockaddr_storage bound = {};
  socklen_t len = sizeof(bound);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &len) == 0) {
    if (bound.ss_family == AF_INET) {
      server->port_ = ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
    } else if (bound.ss_family == AF_INET6) {
      server->port_ = ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port);
    }
  }
  if (pipe2(server->wake_fds_, O_CLOEXEC | O_NONBLOCK) != 0) {
    return absl::InternalError(absl::StrCat("pipe: ", std::strerror(errno)));
  }
  server->thread_ = std::thread([s = server.get()] { s->Loop(); });
  return server;
}

MetricsHttpServer::~MetricsHttpServer() { Shutdown(); }

void MetricsHttpServer::Shutdown() {
  if (!stopped_.exchange(true) && wake_fds_[1] >= 0) {
    char c = 0;
    (void)!write(wake_fds_[1], &c, 1);
  }
  if (thread_.joinable()) thread_.join();
  for (int* fd : {&listen_fd_, &wake_fds_[0], &wake_fds_[1]}) {
    if (*fd >= 0) close(*fd);
    *fd = -1;
  }
}

void MetricsHttpServer::Loop() {
  while (!stopped_.load()) {
    pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {wake_fds_[0], POLLIN, 0}};
    int n = poll(fds, 2, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (fds[1].revents != 0 || stopped_.load()) return;
    if ((fds[0].revents & POLLIN) == 0) continue;
    int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) continue;  // EAGAIN, ECONNABORTED, EMFILE...: try again on the next wakeup
    Serve(fd);
    // Half-close, then read what the client still sends (briefly), so close() does not reset
    // the connection before the client has read the answer.
    shutdown(fd, SHUT_WR);
    const int64_t linger = NowMs() + std::min(options_.io_timeout_ms, 200);
    char sink[1024];
    while (WaitFd(fd, POLLIN, linger) && recv(fd, sink, sizeof(sink), 0) > 0) {
    }
    close(fd);
  }
}

void MetricsHttpServer::Serve(int fd) {
  const int64_t deadline = NowMs() + options_.io_timeout_ms;
  std::string request;
  size_t header_end = std::string::npos;
  char buf[1024];
  while (header_end == std::string::npos) {
    if (request.size() > options_.max_request_bytes) {
      SendAll(fd,
              Response(431, "Request Header Fields Too Large", "text/plain", "too large\n", false),
              deadline);
      return;
    }
    ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n > 0) {
      request.append(buf, static_cast<size_t>(n));
      header_end = request.find("\r\n\r\n");
      if (header_end == std::string::npos) header_end = request.find("\n\n");
    } else if (n == 0) {
      break;  // the client closed early: answer what we have (likely 400)
    } else if (errno == EINTR) {
      continue;
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      if (!WaitFd(fd, POLLIN, deadline)) return;  // timed out: drop the connection
    } else {
      return;
    }
  }
  // Request line: METHOD SP TARGET SP HTTP/1.x
  const size_t eol = request.find_first_of("\r\n");
  const std::string line = request.substr(0, eol);
  const size_t sp1 = line.find(' ');
  const size_t sp2 = sp1 == std::string::npos ? std::string::npos : line.find(' ', sp1 + 1);
  if (header_end == std::string::npos || sp1 == std::string::npos || sp2 == std::string::npos ||
      line.find(' ', sp2 + 1) != std::string::npos || line.compare(sp2 + 1, 7, "HTTP/1.") != 0) {
    SendAll(fd, Response(400, "Bad Request", "text/plain", "bad request\n", false), deadline);
    return;
  }
  const std::string method = line.substr(0, sp1);
  std::string path = line.substr(sp1 + 1, sp2 - sp1 - 1);
  path = path.substr(0, path.find('?'));
  const bool head = method == "HEAD";
  if (path != "/metrics") {
    SendAll(fd, Response(404, "Not Found", "text/plain", "not found\n", head), deadline);
  } else if (method != "GET" && !head) {
    SendAll(fd, Response(405, "Method Not Allowed", "text/plain", "method not allowed\n", false),
            deadline);
  } else {
    SendAll(fd, Response(200, "OK", "text/plain; version=0.0.4; charset=utf-8", render_(), head),
            deadline);
  }
}

}  // namespace xkv
