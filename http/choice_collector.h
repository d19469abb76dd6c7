// The results of the n coordinator requests behind one OpenAI request (one per choice), as one
// ordered event queue the HTTP handler drains: a GenerateSink per choice pushes, the handler's
// thread pops (blocking with a timeout). Thread-safe.
#ifndef XKV_HTTP_CHOICE_COLLECTOR_H_
#define XKV_HTTP_CHOICE_COLLECTOR_H_

#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "coordinator/coordinator.h"

namespace xkv {

struct ChoiceEvent {
  enum class Kind { kText, kDone, kError };
  int index = 0;
  Kind kind = Kind::kText;
  std::string text;                       // kText
  std::vector<SampledLogprobs> logprobs;  // kText: one per token, when asked
  xkv::v1::Usage usage;                   // kDone
  absl::Status error;                     // kError
};

class ChoiceCollector : public std::enable_shared_from_this<ChoiceCollector> {
 public:
  static std::shared_ptr<ChoiceCollector> Create(int choices);

  // The sink of choice `index` (in [0, choices)); it keeps the collector alive.
  std::shared_ptr<GenerateSink> SinkFor(int index);
  // A choice that could not be submitted: counts as ended.
  void Abandon(int index);

  // Waits up to `timeout` for events and appends them to `out`. False once every choice has ended
  // and its events were returned (nothing more will come).
  bool Next(std::vector<ChoiceEvent>* out, absl::Duration timeout);

 private:
  class Sink;
  explicit ChoiceCollector(int choices) : open_(choices) {}
  void Push(ChoiceEvent event);

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<ChoiceEvent> events_;  // guarded by mu_
  int open_;                        // choices not ended yet; guarded by mu_
};

}  // namespace xkv

#endif  // XKV_HTTP_CHOICE_COLLECTOR_H_
