#include "tools/metrics_registry.h"

#include <cmath>
#include <limits>
#include <string>

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

}  // namespace
}  // namespace xkv
