#include "http/http_server.h"

#include <arpa/inet.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "http/probe_routes.h"

namespace xkv {
namespace {

constexpr char kBody[] = "# TYPE xkv_test_total counter\nxkv_test_total 7\n";

class ProbeServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<HttpServer>> s = StartProbeServer(
        {.listen = "127.0.0.1:0", .threads = 4, .max_body_bytes = 1024},
        {.metrics = [] { return std::string(kBody); },
         .ready =
             [this] {
               return ready_ ? absl::OkStatus() : absl::UnavailableError("stage 1 is NOT_SERVING");
             }});
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = *std::move(s);
    ASSERT_GT(server_->port(), 0);
  }

  httplib::Client Client() { return httplib::Client("127.0.0.1", server_->port()); }

  std::atomic<bool> ready_{true};
  std::unique_ptr<HttpServer> server_;
};

TEST_F(ProbeServerTest, MetricsHealthAndReady) {
  httplib::Client c = Client();
  httplib::Result m = c.Get("/metrics");
  ASSERT_TRUE(m);
  EXPECT_EQ(m->status, 200);
  EXPECT_EQ(m->body, kBody);
  EXPECT_EQ(m->get_header_value("Content-Type"), "text/plain; version=0.0.4; charset=utf-8");
  EXPECT_EQ(c.Get("/metrics?x=1")->body, kBody);
  EXPECT_EQ(c.Get("/health")->status, 200);
  EXPECT_EQ(c.Get("/ready")->status, 200);
  ready_ = false;
  httplib::Result r = c.Get("/ready");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 503);
  EXPECT_EQ(r->body, "stage 1 is NOT_SERVING\n");
  EXPECT_EQ(c.Get("/health")->status, 200) << "liveness does not depend on readiness";
}

// Sends raw bytes and returns the server's answer up to the end of its headers (3 s at most).
std::string Exchange(int port, const std::string& request) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr = {};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    ADD_FAILURE() << "connect failed";
    return "";
  }
  timeval timeout = {3, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  (void)!send(fd, request.data(), request.size(), MSG_NOSIGNAL);
  std::string answer;
  char buf[4096];
  for (ssize_t n;
       answer.find("\r\n\r\n") == std::string::npos && (n = recv(fd, buf, sizeof(buf), 0)) > 0;) {
    answer.append(buf, n);
  }
  close(fd);
  return answer;
}

TEST_F(ProbeServerTest, BadRequestsAreAnsweredAndTheServerKeepsServing) {
  const int port = server_->port();
  EXPECT_EQ(Exchange(port, "GET / HTTP/1.1\r\nConnection: close\r\n\r\n").rfind("HTTP/1.1 404", 0),
            0u);
  EXPECT_EQ(Exchange(port, "GET /metricsx HTTP/1.0\r\n\r\n").rfind("HTTP/1.1 404", 0), 0u);
  EXPECT_EQ(Exchange(port, "garbage\r\n\r\n").rfind("HTTP/1.1 400", 0), 0u);
  EXPECT_EQ(Exchange(port, std::string("\0\xff\x01 \r\n\r\n", 9)).rfind("HTTP/1.1 400", 0), 0u);
  EXPECT_EQ(
      Exchange(port, "POST /metrics HTTP/1.1\r\nContent-Length: 5000\r\nConnection: close\r\n\r\n" +
                         std::string(5000, 'x'))
          .rfind("HTTP/1.1 413", 0),
      0u)
      << "a body over max_body_bytes";
  httplib::Client c = Client();
  httplib::Result ok = c.Get("/metrics");
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->body, kBody);
}

TEST(HttpServerTest, ServesConnectionsConcurrently) {
  // Every request waits until all four are inside a handler: one connection at a time would hang
  // (bounded by the 5 s wait, then the test fails).
  constexpr int kClients = 4;
  std::mutex mu;
  std::condition_variable cv;
  int inside = 0;
  absl::StatusOr<std::unique_ptr<HttpServer>> s = HttpServer::Start(
      {.listen = "127.0.0.1:0", .threads = kClients}, [&](httplib::Server& server) {
        server.Get("/wait", [&](const httplib::Request&, httplib::Response& res) {
          std::unique_lock<std::mutex> lock(mu);
          ++inside;
          cv.notify_all();
          const bool all =
              cv.wait_for(lock, std::chrono::seconds(5), [&] { return inside >= kClients; });
          res.set_content(all ? "all" : "alone", "text/plain");
        });
      });
  ASSERT_TRUE(s.ok()) << s.status();
  std::vector<std::string> bodies(kClients);
  std::vector<std::thread> threads;
  for (int i = 0; i < kClients; ++i) {
    threads.emplace_back([&, i] {
      httplib::Client c("127.0.0.1", (*s)->port());
      if (httplib::Result r = c.Get("/wait")) bodies[i] = r->body;
    });
  }
  for (std::thread& t : threads) t.join();
  for (const std::string& b : bodies) EXPECT_EQ(b, "all");
}

TEST_F(ProbeServerTest, ShutdownIsIdempotentAndStopsListening) {
  const int port = server_->port();
  server_->Shutdown();
  server_->Shutdown();
  httplib::Client c("127.0.0.1", port);
  EXPECT_FALSE(c.Get("/health"));
}

TEST(HttpServerStartTest, RejectsBadAddresses) {
  for (const char* bad :
       {"no-port", "127.0.0.1:http", "127.0.0.1:", "127.0.0.1:70000", "::1:80", "127.0.0.1:-1"}) {
    absl::StatusOr<std::unique_ptr<HttpServer>> s = StartProbeServer({.listen = bad}, {});
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  absl::StatusOr<std::pair<std::string, int>> v6 = ParseListenAddress("[::1]:8080");
  ASSERT_TRUE(v6.ok());
  EXPECT_EQ(v6->first, "::1");
  EXPECT_EQ(v6->second, 8080);
  EXPECT_EQ(ParseListenAddress(":9").value().first, "0.0.0.0");
}

TEST(HttpServerStartTest, AnAddressInUseIsUnavailable) {
  absl::StatusOr<std::unique_ptr<HttpServer>> a = StartProbeServer({.listen = "127.0.0.1:0"}, {});
  ASSERT_TRUE(a.ok());
  absl::StatusOr<std::unique_ptr<HttpServer>> b =
      StartProbeServer({.listen = "127.0.0.1:" + std::to_string((*a)->port())}, {});
  EXPECT_EQ(b.status().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace xkv
