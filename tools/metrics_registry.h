// A tiny Prometheus metrics registry (counters, gauges, fixed-bucket histograms; text exposition
// format 0.0.4), thread-safe; the HTTP server (http/) serves its text on GET /metrics. The `xkv`
// commands fill the registry at scrape time from the existing status APIs (collectors), so the
// coordinator and worker libraries know nothing about it.
#ifndef XKV_TOOLS_METRICS_REGISTRY_H_
#define XKV_TOOLS_METRICS_REGISTRY_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace xkv {

// Label name/value pairs, in the order they are written.
using MetricLabels = std::vector<std::pair<std::string, std::string>>;

enum class MetricType { kCounter, kGauge, kHistogram };

// One metric family (one name, one type, any number of label sets). Thread-safe.
class MetricFamily {
 public:
  MetricFamily(std::string name, std::string help, MetricType type, std::vector<double> buckets);

  const std::string& name() const { return name_; }
  MetricType type() const { return type_; }

  // Counter: adds delta (>= 0; negative deltas are ignored). Gauge: adds delta.
  void Add(const MetricLabels& labels, double delta = 1);
  // Gauge only (ignored for other types).
  void Set(const MetricLabels& labels, double value);
  // Histogram only (ignored for other types).
  void Observe(const MetricLabels& labels, double value);
  // Drops every label set (scrape-time gauges whose label sets may change, e.g. stages).
  void Clear();
  // Appends the family in text exposition format; nothing when it has no samples.
  void Render(std::string* out) const;

 private:
  struct Series {
    double value = 0;              // counter / gauge
    std::vector<uint64_t> counts;  // histogram: per bucket (not cumulative), +Inf last
    double sum = 0;                // histogram
    uint64_t count = 0;            // histogram
  };
  Series& Get(const MetricLabels& labels);  // under mu_

  const std::string name_;
  const std::string help_;
  const MetricType type_;
  const std::vector<double> buckets_;  // sorted upper bounds, without +Inf
  mutable std::mutex mu_;
  std::map<MetricLabels, Series> series_;  // guarded by mu_
};

class MetricsRegistry {
 public:
  // Declare a family; declaring an existing name again returns the existing family (its type
  // and buckets are kept). The pointer stays valid for the registry's lifetime.
  MetricFamily* Counter(const std::string& name, const std::string& help);
  MetricFamily* Gauge(const std::string& name, const std::string& help);
  MetricFamily* Histogram(const std::string& name, const std::string& help,
                          std::vector<double> buckets);
  // Runs before every Render (one at a time), e.g. to refresh gauges from a status API.
  void AddCollector(std::function<void(MetricsRegistry&)> collector);
  // Runs the collectors, then writes every family in declaration order.
  std::string Render();

 private:
  MetricFamily* Declare(const std::string& name, const std::string& help, MetricType type,
                        std::vector<double> buckets);

  std::mutex collect_mu_;  // one Render at a time runs the collectors
  std::mutex mu_;          // guards the fields below
  std::vector<std::unique_ptr<MetricFamily>> families_;
  std::vector<std::function<void(MetricsRegistry&)>> collectors_;
};

// Formats a sample value the way Prometheus parses it (shortest round trip, +Inf, -Inf, NaN).
std::string FormatMetricValue(double value);

}  // namespace xkv

#endif  // XKV_TOOLS_METRICS_REGISTRY_H_
