#include "tools/metrics_http.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmath>
#include <limits>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace xkv {
namespace {

TEST(MetricsRegistryTest, CounterTextFormat) {
  MetricsRegistry r;
  MetricFamily* c = r.Counter("xkv_requests_total", "Requests.\nBy code \\ status.");
  c->Add({{"code", "OK"}});
  c->Add({{"code", "OK"}}, 2);
  c->Add({{"code", "a\"b\\c\nd"}}, 0.5);
  c->Add({{"code", "OK"}}, -5);  // ignored: counters only go up
  EXPECT_EQ(r.Render(),
            "# HELP xkv_requests_total Requests.\\nBy code \\\\ status.\n"
            "# TYPE xkv_requests_total counter\n"
            "xkv_requests_total{code=\"OK\"} 3\n"
            "xkv_requests_total{code=\"a\\\"b\\\\c\\nd\"} 0.5\n");
}

TEST(MetricsRegistryTest, GaugeTextFormatAndClear) {
  MetricsRegistry r;
  MetricFamily* g = r.Gauge("xkv_kv_cache_blocks_used", "Blocks in use.");
  g->Set({{"stage", "0"}, {"layer", "3"}}, 12);
  g->Set({}, 1234567890123.0);
  g->Add({}, 1);
  EXPECT_EQ(r.Render(),
            "# HELP xkv_kv_cache_blocks_used Blocks in use.\n"
            "# TYPE xkv_kv_cache_blocks_used gauge\n"
            "xkv_kv_cache_blocks_used 1234567890124\n"
            "xkv_kv_cache_blocks_used{stage=\"0\",layer=\"3\"} 12\n");
  g->Clear();
  EXPECT_EQ(r.Render(), "");  // a family without samples is not written
}

TEST(MetricsRegistryTest, HistogramTextFormat) {
  MetricsRegistry r;
  MetricFamily* h = r.Histogram("xkv_ttft_seconds", "TTFT.", {1, 0.1, 0.5});
  h->Observe({}, 0.05);
  h->Observe({}, 0.1);  // le is inclusive
  h->Observe({}, 0.7);
  h->Observe({}, 3);
  EXPECT_EQ(r.Render(),
            "# HELP xkv_ttft_seconds TTFT.\n"
            "# TYPE xkv_ttft_seconds histogram\n"
            "xkv_ttft_seconds_bucket{le=\"0.1\"} 2\n"
            "xkv_ttft_seconds_bucket{le=\"0.5\"} 2\n"
            "xkv_ttft_seconds_bucket{le=\"1\"} 3\n"
            "xkv_ttft_seconds_bucket{le=\"+Inf\"} 4\n"
            "xkv_ttft_seconds_sum 3.85\n"
            "xkv_ttft_seconds_count 4\n");
}

TEST(MetricsRegistryTest, CollectorsRunAtRenderAndRedeclareReturnsSameFamily) {
  MetricsRegistry r;
  int scrapes = 0;
  r.AddCollector([&scrapes](MetricsRegistry& reg) {
    reg.Gauge("xkv_scrapes", "Scrapes.")->Set({}, ++scrapes);
  });
  EXPECT_EQ(r.Render(), "# HELP xkv_scrapes Scrapes.\n# TYPE xkv_scrapes gauge\nxkv_scrapes 1\n");
  EXPECT_EQ(r.Render(), "# HELP xkv_scrapes Scrapes.\n# TYPE xkv_scrapes gauge\nxkv_scrapes 2\n");
  EXPECT_EQ(r.Gauge("xkv_scrapes", "other"), r.Gauge("xkv_scrapes", "again"));
}

TEST(MetricsRegistryTest, FormatsSpecialValues) {
  EXPECT_EQ(FormatMetricValue(0.1), "0.1");
  EXPECT_EQ(FormatMetricValue(-2), "-2");
  EXPECT_EQ(FormatMetricValue(std::numeric_limits<double>::infinity()), "+Inf");
  EXPECT_EQ(FormatMetricValue(-std::numeric_limits<double>::infinity()), "-Inf");
  EXPECT_EQ(FormatMetricValue(std::nan("")), "NaN");
}

// Sends `request` to 127.0.0.1:port, half-closes, returns everything the server answers.
std::string Exchange(int port, const std::string& request) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  EXPECT_GE(fd, 0);
  sockaddr_in addr = {};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    ADD_FAILURE() << "connect failed";
    return "";
  }
  size_t sent = 0;
  while (sent < request.size()) {
    ssize_t n = send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) break;  // the server may answer (431) and stop reading early
    sent += static_cast<size_t>(n);
  }
  shutdown(fd, SHUT_WR);
  std::string answer;
  char buf[4096];
  for (ssize_t n; (n = recv(fd, buf, sizeof(buf), 0)) > 0;) answer.append(buf, n);
  close(fd);
  return answer;
}

class MetricsHttpServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    registry_.Counter("xkv_test_total", "A test counter.")->Add({}, 7);
    MetricsHttpServerOptions options;
    options.listen = "127.0.0.1:0";
    options.max_request_bytes = 1024;
    absl::StatusOr<std::unique_ptr<MetricsHttpServer>> s =
        MetricsHttpServer::Start(options, [this] { return registry_.Render(); });
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = *std::move(s);
    ASSERT_GT(server_->port(), 0);
  }

  MetricsRegistry registry_;
  std::unique_ptr<MetricsHttpServer> server_;
};

constexpr char kBody[] =
    "# HELP xkv_test_total A test counter.\n"
    "# TYPE xkv_test_total counter\n"
    "xkv_test_total 7\n";

TEST_F(MetricsHttpServerTest, GetMetricsReturnsTheText) {
  const std::string answer =
      Exchange(server_->port(), "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n");
  EXPECT_EQ(answer.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << answer;
  EXPECT_NE(answer.find("Content-Type: text/plain; version=0.0.4"), std::string::npos);
  EXPECT_NE(answer.find(absl::StrCat("Content-Length: ", sizeof(kBody) - 1, "\r\n")),
            std::string::npos);
  EXPECT_EQ(answer.substr(answer.find("\r\n\r\n") + 4), kBody);
}

TEST_F(MetricsHttpServerTest, BadRequestsAreAnsweredAndTheServerKeepsServing) {
  EXPECT_EQ(Exchange(server_->port(), "GET / HTTP/1.1\r\n\r\n").rfind("HTTP/1.1 404", 0), 0u);
  EXPECT_EQ(Exchange(server_->port(), "GET /metricsx HTTP/1.0\r\n\r\n").rfind("HTTP/1.1 404", 0),
            0u);
  EXPECT_EQ(Exchange(server_->port(), "POST /metrics HTTP/1.1\r\n\r\n").rfind("HTTP/1.1 405", 0),
            0u);
  EXPECT_EQ(Exchange(server_->port(), "garbage\r\n\r\n").rfind("HTTP/1.1 400", 0), 0u);
  EXPECT_EQ(
      Exchange(server_->port(), std::string("\0\xff\x01 \r\n\r\n", 9)).rfind("HTTP/1.1 400", 0),
      0u);
  EXPECT_EQ(Exchange(server_->port(), "GET /metrics HTTP/1.1\r\n").rfind("HTTP/1.1 400", 0), 0u)
      << "closed before the end of the headers";
  EXPECT_EQ(Exchange(server_->port(), "").rfind("HTTP/1.1 400", 0), 0u);
  EXPECT_EQ(Exchange(server_->port(), "GET /metrics HTTP/1.1\r\nX: " + std::string(5000, 'a'))
                .rfind("HTTP/1.1 431", 0),
            0u);
  const std::string ok = Exchange(server_->port(), "GET /metrics?x=1 HTTP/1.1\r\n\r\n");
  EXPECT_EQ(ok.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << ok;
  EXPECT_EQ(ok.substr(ok.find("\r\n\r\n") + 4), kBody);
}

TEST_F(MetricsHttpServerTest, ShutdownIsIdempotentAndStopsListening) {
  const int port = server_->port();
  server_->Shutdown();
  server_->Shutdown();
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr = {};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_NE(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  close(fd);
}

TEST(MetricsHttpServerStartTest, RejectsBadAddresses) {
  EXPECT_FALSE(MetricsHttpServer::Start({.listen = "no-port"}, [] { return ""; }).ok());
  EXPECT_FALSE(MetricsHttpServer::Start({.listen = "127.0.0.1:http"}, [] { return ""; }).ok());
  EXPECT_FALSE(MetricsHttpServer::Start({.listen = "127.0.0.1:"}, [] { return ""; }).ok());
}

}  // namespace
}  // namespace xkv
