#include "allocator/profile_store.h"

#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "allocator/kv_policy.h"

namespace xkv {
namespace {

uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

}  // namespace

absl::StatusOr<std::unique_ptr<ProfileStore>> ProfileStore::Create(
    const ProfileStoreOptions& options) {
  if (!(options.sample_rate > 0.0 && options.sample_rate <= 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("profile sample rate ", options.sample_rate, " must be in (0, 1]"));
  }
  if (options.window < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("profile store window ", options.window, " must be >= 0"));
  }
  return std::unique_ptr<ProfileStore>(new ProfileStore(options));
}

bool ProfileStore::ShouldProfile(uint64_t request_id, double rate) const {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (samples_ == 0) return true;
  }
  const uint64_t bits = SplitMix64(options_.seed ^ SplitMix64(request_id));
  const double u = static_cast<double>(bits >> 11) * 0x1.0p-53;  // uniform in [0, 1)
  return u < rate;
}

absl::Status ProfileStore::AddSample(absl::Span<const int64_t> budgets, int64_t prefix_len) {
  if (prefix_len < 1 || budgets.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("profile sample: prefix_len ", prefix_len,
                                                   " must be >= 1 and budgets non-empty (got ",
                                                   budgets.size(), ")"));
  }
  for (size_t l = 0; l < budgets.size(); ++l) {
    if (budgets[l] < 0 || budgets[l] > prefix_len) {
      return absl::InvalidArgumentError(absl::StrCat("profile sample: budget ", budgets[l],
                                                     " of layer ", l, " must be in [0, ",
                                                     prefix_len, "]"));
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (samples_ > 0 && budgets.size() != mean_.size()) {
    return absl::InvalidArgumentError(absl::StrCat("profile sample has ", budgets.size(),
                                                   " layers, earlier samples ", mean_.size()));
  }
  if (samples_ == 0) mean_.assign(budgets.size(), 0.0);
  ++samples_;
  const int64_t n = options_.window > 0 ? std::min(samples_, options_.window) : samples_;
  for (size_t l = 0; l < budgets.size(); ++l) {
    const double f = static_cast<double>(budgets[l]) / static_cast<double>(prefix_len);
    mean_[l] += (f - mean_[l]) / static_cast<double>(n);
  }
  return absl::OkStatus();
}

int64_t ProfileStore::num_samples() const {
  std::lock_guard<std::mutex> lock(mu_);
  return samples_;
}

std::vector<double> ProfileStore::MeanFractions() const {
  std::lock_guard<std::mutex> lock(mu_);
  return mean_;
}

absl::StatusOr<std::vector<int64_t>> ProfileStore::BudgetsFor(int64_t prefix_len,
                                                              int64_t total_tokens) const {
  const std::vector<double> mean = MeanFractions();
  if (mean.empty()) {
    return absl::FailedPreconditionError("profile store has no samples yet");
  }
  const int64_t L = static_cast<int64_t>(mean.size());
  if (prefix_len < 0 || total_tokens < 0 || total_tokens > L * prefix_len) {
    return absl::InvalidArgumentError(absl::StrCat(
        "total tokens ", total_tokens, " must be in [0, ", L * std::max<int64_t>(0, prefix_len),
        "] (layers x prefix length ", prefix_len, ")"));
  }
  return RoundBudgetsToTotal(mean, total_tokens, prefix_len);
}

absl::StatusOr<std::vector<int64_t>> ProfileStore::BudgetsFor(int64_t prefix_len) const {
  const std::vector<double> mean = MeanFractions();
  const double kept = std::accumulate(mean.begin(), mean.end(), 0.0);
  const int64_t total = std::llround(kept * static_cast<double>(std::max<int64_t>(0, prefix_len)));
  return BudgetsFor(prefix_len,
                    std::min<int64_t>(total, mean.size() * std::max<int64_t>(0, prefix_len)));
}

}  // namespace xkv
