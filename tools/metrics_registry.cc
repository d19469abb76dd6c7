#include "tools/metrics_registry.h"

#include <algorithm>
#include <charconv>
#include <cmath>

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

}  // namespace xkv
