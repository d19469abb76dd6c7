#include "embedded/local_generation.h"

#include <condition_variable>
#include <memory>
#include <mutex>
#include <utility>

#include "absl/strings/str_cat.h"

namespace xkv {
namespace {

// Collects one request's stream; the waiter sleeps on the shared condition variable.
class CollectingSink final : public GenerateSink {
 public:
  struct Shared {
    std::mutex mu;
    std::condition_variable done;
    size_t remaining = 0;
  };

  CollectingSink(size_t index, LocalResult* result, Shared* shared, const DeltaCallback* on_delta)
      : index_(index), result_(result), shared_(shared), on_delta_(on_delta) {}

  void OnDelta(const std::string& text, absl::Span<const int32_t> token_ids,
               absl::Span<const SampledLogprobs>) override {
    result_->text += text;
    result_->tokens.insert(result_->tokens.end(), token_ids.begin(), token_ids.end());
    if (*on_delta_) (*on_delta_)(index_, text, token_ids);
  }
  void OnDone(const xkv::v1::Usage& usage) override {
    result_->usage = usage;
    End(absl::OkStatus());
  }
  void OnError(const absl::Status& status) override { End(status); }

 private:
  void End(const absl::Status& status) {
    std::lock_guard<std::mutex> lock(shared_->mu);
    result_->status = status;
    if (--shared_->remaining == 0) shared_->done.notify_all();
  }

  const size_t index_;
  LocalResult* const result_;
  Shared* const shared_;
  const DeltaCallback* const on_delta_;
};

}  // namespace

absl::StatusOr<std::vector<LocalResult>> GenerateLocally(Coordinator& coordinator,
                                                         std::vector<GenerateParams> requests,
                                                         const DeltaCallback& on_delta) {
  std::vector<LocalResult> results(requests.size());
  CollectingSink::Shared shared;
  shared.remaining = requests.size();
  std::vector<uint64_t> submitted;
  for (size_t i = 0; i < requests.size(); ++i) {
    absl::StatusOr<uint64_t> id =
        coordinator.Submit(std::move(requests[i]),
                           std::make_shared<CollectingSink>(i, &results[i], &shared, &on_delta));
    if (!id.ok()) {
      // The sinks of the requests already in flight point into `results`: end them first.
      for (uint64_t s : submitted) coordinator.Cancel(s);
      std::unique_lock<std::mutex> lock(shared.mu);
      shared.remaining -= requests.size() - submitted.size();
      shared.done.wait(lock, [&] { return shared.remaining == 0; });
      if (requests.size() == 1) return id.status();
      return absl::Status(id.status().code(),
                          absl::StrCat("request ", i, ": ", id.status().message()));
    }
    submitted.push_back(*id);
  }
  std::unique_lock<std::mutex> lock(shared.mu);
  shared.done.wait(lock, [&] { return shared.remaining == 0; });
  return results;
}

}  // namespace xkv
