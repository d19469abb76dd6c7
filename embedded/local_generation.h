// The blocking form of Coordinator::Submit for one process (`xkv generate`, tests): submits every
// request at once (so they are batched like concurrent clients of the service), streams each
// delta to an optional callback and waits until every request has ended.
#ifndef XKV_EMBEDDED_LOCAL_GENERATION_H_
#define XKV_EMBEDDED_LOCAL_GENERATION_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "coordinator/coordinator.h"
#include "coordinator/generate_params.h"
#include "xkv/v1/generation.pb.h"

namespace xkv {

struct LocalResult {
  absl::Status status;          // the request's own outcome
  std::string text;             // every emitted byte
  std::vector<int32_t> tokens;  // generated ids (EOS excluded)
  xkv::v1::Usage usage;         // when status is OK
};

// Called from the coordinator's loop thread, in order per request.
using DeltaCallback =
    std::function<void(size_t request, const std::string& text, absl::Span<const int32_t> tokens)>;

// A request refused at submission (bad input, too long) is the call's error, naming its index when
// there are several; a request that fails later ends only itself (its LocalResult::status).
absl::StatusOr<std::vector<LocalResult>> GenerateLocally(Coordinator& coordinator,
                                                         std::vector<GenerateParams> requests,
                                                         const DeltaCallback& on_delta = nullptr);

}  // namespace xkv

#endif  // XKV_EMBEDDED_LOCAL_GENERATION_H_
