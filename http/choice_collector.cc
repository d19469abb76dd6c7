#include "http/choice_collector.h"

#include <utility>

namespace xkv {

class ChoiceCollector::Sink final : public GenerateSink {
 public:
  Sink(std::shared_ptr<ChoiceCollector> c, int index) : c_(std::move(c)), index_(index) {}
  void OnDelta(const std::string& text, absl::Span<const int32_t>,
               absl::Span<const SampledLogprobs> logprobs) override {
    if (text.empty() && logprobs.empty()) return;
    c_->Push({.index = index_,
              .kind = ChoiceEvent::Kind::kText,
              .text = text,
              .logprobs = {logprobs.begin(), logprobs.end()}});
  }
  void OnDone(const xkv::v1::Usage& usage) override {
    c_->Push({.index = index_, .kind = ChoiceEvent::Kind::kDone, .usage = usage});
  }
  void OnError(const absl::Status& status) override {
    c_->Push({.index = index_, .kind = ChoiceEvent::Kind::kError, .error = status});
  }

 private:
  const std::shared_ptr<ChoiceCollector> c_;
  const int index_;
};

std::shared_ptr<ChoiceCollector> ChoiceCollector::Create(int choices) {
  return std::shared_ptr<ChoiceCollector>(new ChoiceCollector(choices));
}

std::shared_ptr<GenerateSink> ChoiceCollector::SinkFor(int index) {
  return std::make_shared<Sink>(shared_from_this(), index);
}

void ChoiceCollector::Abandon(int) {
  std::lock_guard<std::mutex> lock(mu_);
  --open_;
  cv_.notify_all();
}

void ChoiceCollector::Push(ChoiceEvent event) {
  std::lock_guard<std::mutex> lock(mu_);
  if (event.kind != ChoiceEvent::Kind::kText) --open_;
  events_.push_back(std::move(event));
  cv_.notify_all();
}

bool ChoiceCollector::Next(std::vector<ChoiceEvent>* out, absl::Duration timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, absl::ToChronoNanoseconds(timeout),
               [this] { return !events_.empty() || open_ <= 0; });
  while (!events_.empty()) {
    out->push_back(std::move(events_.front()));
    events_.pop_front();
  }
  return open_ > 0;
}

}  // namespace xkv
