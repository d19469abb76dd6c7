#include "worker/worker_limits.h"

#include "absl/strings/str_cat.h"

namespace xkv {

absl::Status CheckRange(absl::string_view field, int64_t value, int64_t lo, int64_t hi,
                        absl::string_view why) {
  if (value >= lo && value <= hi) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(field, " ", value, " is outside [", lo, ", ", hi,
                                                 "]", why.empty() ? "" : " (", why,
                                                 why.empty() ? "" : ")"));
}

absl::Status CheckLinkTimeout(int64_t ms) {
  return CheckRange("link_timeout_ms", ms, 0, absl::ToInt64Milliseconds(kMaxLinkTimeout),
                    "0: the stage's default");
}

}  // namespace xkv
