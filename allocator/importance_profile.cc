#include "allocator/importance_profile.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace xkv {
namespace {

// Sorts n finite, non-negative floats descending. Their bit patterns order like the values, so an
// LSD radix sort (3 passes of 11 bits) gives std::sort's result in O(n); small rows use std::sort.
void SortDescendingNonNegative(float* x, int64_t n, std::vector<uint32_t>& a,
                               std::vector<uint32_t>& b) {
  if (n < 512) {
    std::sort(x, x + n, std::greater<float>());
    return;
  }
  a.resize(n);
  b.resize(n);
  std::memcpy(a.data(), x, n * sizeof(float));
  for (int shift = 0; shift < 33; shift += 11) {
    int64_t count[2049] = {0};
    for (int64_t i = 0; i < n; ++i) ++count[((a[i] >> shift) & 2047) + 1];
    for (int d = 0; d < 2048; ++d) count[d + 1] += count[d];
    for (int64_t i = 0; i < n; ++i) b[count[(a[i] >> shift) & 2047]++] = a[i];
    a.swap(b);
  }
  for (int64_t i = 0; i < n; ++i) std::memcpy(&x[n - 1 - i], &a[i], sizeof(float));
}

void FillRetention(LayerProfile& p) {
  p.retention.assign(p.gain.size() + 1, 0.0);
  for (size_t k = 0; k < p.gain.size(); ++k) p.retention[k + 1] = p.retention[k] + p.gain[k];
}

}  // namespace

absl::StatusOr<LayerProfile> BuildLayerProfile(absl::Span<const float> scores, int heads,
                                               int64_t prefix_len) {
  if (heads < 1 || prefix_len < 0) {
    return absl::InvalidArgumentError(absl::StrCat("importance profile: heads ", heads,
                                                   " must be >= 1 and prefix_len ", prefix_len,
                                                   " must be >= 0"));
  }
  if (static_cast<int64_t>(scores.size()) != heads * prefix_len) {
    return absl::InvalidArgumentError(
        absl::StrCat("importance profile: ", scores.size(),
                     " scores, expected heads*prefix_len = ", heads * prefix_len));
  }
  LayerProfile p;
  p.heads = heads;
  p.prefix_len = prefix_len;
  p.sorted_scores.assign(scores.begin(), scores.end());
  for (size_t i = 0; i < scores.size(); ++i) {
    if (!std::isfinite(scores[i]) || scores[i] < 0.0f) {
      return absl::InvalidArgumentError(absl::StrCat(
          "importance profile: score[", i, "] = ", scores[i], " must be finite and >= 0"));
    }
    p.sorted_scores[i] += 0.0f;  // -0 -> +0
    p.total_mass += scores[i];
  }
  std::vector<double> column_sum(prefix_len, 0.0);
  std::vector<uint32_t> scratch_a, scratch_b;
  for (int h = 0; h < heads; ++h) {
    float* row = p.sorted_scores.data() + h * prefix_len;
    SortDescendingNonNegative(row, prefix_len, scratch_a, scratch_b);
    for (int64_t k = 0; k < prefix_len; ++k) column_sum[k] += row[k];
  }
  if (p.total_mass > 0.0) {
    p.gain.resize(prefix_len);
    // Column sums of descending rows are non-increasing and division is monotone, so the gains
    // stay non-increasing in floating point too.
    for (int64_t k = 0; k < prefix_len; ++k) p.gain[k] = column_sum[k] / p.total_mass;
    FillRetention(p);
  } else {
    p.gain.assign(prefix_len, 0.0);
    p.retention.assign(prefix_len + 1, 1.0);
  }
  return p;
}

absl::StatusOr<LayerProfile> LayerProfileFromGains(std::vector<double> gains) {
  for (size_t k = 0; k < gains.size(); ++k) {
    if (!std::isfinite(gains[k]) || gains[k] < 0.0) {
      return absl::InvalidArgumentError(
          absl::StrCat("gain curve: g(", k + 1, ") = ", gains[k], " must be finite and >= 0"));
    }
    if (k > 0 && gains[k] > gains[k - 1]) {
      return absl::InvalidArgumentError(absl::StrCat("gain curve: g(", k + 1, ") = ", gains[k],
                                                     " exceeds g(", k, ") = ", gains[k - 1],
                                                     "; gains must be non-increasing"));
    }
    gains[k] += 0.0;  // -0 -> +0
  }
  LayerProfile p;
  p.heads = 1;
  p.prefix_len = static_cast<int64_t>(gains.size());
  p.total_mass = 1.0;
  p.gain = std::move(gains);
  FillRetention(p);
  return p;
}

}  // namespace xkv
