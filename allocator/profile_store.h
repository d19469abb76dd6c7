// Profile sampling for `--profile=sampled:ρ` (DESIGN.md §3.5): only a seeded random fraction ρ of
// requests runs the mini-prefill; the others get budgets from the running mean of per-layer
// budgets expressed as FRACTIONS of prompt length (so they transfer across prompt lengths).
#ifndef XKV_ALLOCATOR_PROFILE_STORE_H_
#define XKV_ALLOCATOR_PROFILE_STORE_H_

#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace xkv {

struct ProfileStoreOptions {
  double sample_rate = 0.25;  // ρ in (0, 1]
  uint64_t seed = 0;          // decisions are a pure function of (seed, request id)
  // 0: plain running mean over all samples. n > 0: once n samples are in, new samples weigh 1/n
  // (an exponential moving average that follows drift in the workload).
  int64_t window = 0;
};

// Thread-safe.
class ProfileStore {
 public:
  // INVALID_ARGUMENT when sample_rate is outside (0, 1] or window < 0.
  static absl::StatusOr<std::unique_ptr<ProfileStore>> Create(const ProfileStoreOptions& options);

  // THE sampled-profile decision: Bernoulli(rate) for one request, deterministic in (seed,
  // request_id). Always true until the first sample arrives (there is no mean to fall back on
  // yet). The one-argument form uses the store's own rate ρ.
  bool ShouldProfile(uint64_t request_id, double rate) const;
  bool ShouldProfile(uint64_t request_id) const {
    return ShouldProfile(request_id, options_.sample_rate);
  }

  // Folds one profiled request in: budgets [L] of kept prefix tokens for a prefix of prefix_len
  // (>= 1) tokens, each in [0, prefix_len]; L must match earlier samples.
  absl::Status AddSample(absl::Span<const int64_t> budgets, int64_t prefix_len);

  int64_t num_samples() const;
  // [L] mean budget fraction per layer; empty before the first sample.
  std::vector<double> MeanFractions() const;

  // Budgets [L] for a new prompt with prefix_len P: the mean fractions scaled so they sum to
  // total_tokens, rounded by largest remainder and clamped to [0, P]. FAILED_PRECONDITION before
  // the first sample; INVALID_ARGUMENT when total_tokens is outside [0, L*P].
  absl::StatusOr<std::vector<int64_t>> BudgetsFor(int64_t prefix_len, int64_t total_tokens) const;
  // As above with total_tokens = round(P * sum of mean fractions) (the same kept fraction).
  absl::StatusOr<std::vector<int64_t>> BudgetsFor(int64_t prefix_len) const;

 private:
  explicit ProfileStore(const ProfileStoreOptions& options) : options_(options) {}

  const ProfileStoreOptions options_;
  mutable std::mutex mu_;
  int64_t samples_ = 0;       // guarded by mu_
  std::vector<double> mean_;  // guarded by mu_; [L]
};

}  // namespace xkv

#endif  // XKV_ALLOCATOR_PROFILE_STORE_H_
