// The bounds a worker puts on everything that reaches it over the Worker service. They are checked
// where a request arrives (StageOptionsFromRequest, StageExecutor::Step and Compact, the PushHidden
// handler), before any work, with INVALID_ARGUMENT (or RESOURCE_EXHAUSTED) naming the field, its
// value and the allowed range.
#ifndef XKV_WORKER_WORKER_LIMITS_H_
#define XKV_WORKER_WORKER_LIMITS_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace xkv {

// Longest wait for the previous stage's hidden rows a request may ask for (link_timeout_ms).
inline constexpr absl::Duration kMaxLinkTimeout = absl::Seconds(60);
// Largest KV block (tokens) a LoadStage may ask for.
inline constexpr int kMaxBlockTokens = 1024;
// Largest KV capacity a LoadStage may name (sums over layers cannot overflow); the worker's
// memory bound (WorkerLimits::max_kv_bytes) is usually far below.
inline constexpr int64_t kMaxCapacityBlocks = int64_t{1} << 40;
inline constexpr int64_t kMaxCapacityBytes = int64_t{1} << 60;
// Largest observation window (and pooling kernel) a LoadStage may ask for.
inline constexpr int kMaxImportanceWindow = 4096;
// Most pipeline stages a LoadStage may name.
inline constexpr int kMaxStages = 4096;
// Longest error text a previous stage may forward (PushHidden error_message); longer is cut.
inline constexpr size_t kMaxForwardedErrorBytes = 4096;

// Room for a PushHidden's other fields (and the gRPC framing) next to its rows.
inline constexpr int64_t kMessageOverheadBytes = 64 << 10;
// The widest hidden state the default message limit is sized for (Llama-3-70B's); wider models
// need --max-message-mb (LoadStage says so).
inline constexpr int64_t kDefaultMaxHidden = 8192;

// The gRPC receive limit that holds one step of `max_step_tokens` rows of kDefaultMaxHidden
// floats, below gRPC's 2 GiB.
constexpr int64_t DefaultMaxMessageBytes(int64_t max_step_tokens) {
  const int64_t cap = (int64_t{2047} << 20);
  return max_step_tokens > (cap - kMessageOverheadBytes) / (kDefaultMaxHidden * 4)
             ? cap
             : max_step_tokens * kDefaultMaxHidden * 4 + kMessageOverheadBytes;
}

struct WorkerLimits {
  // LoadStage's model_path must name a GGUF file inside this directory (empty: no model loads).
  std::string model_dir;
  // Token rows of one step (the sum of its sequences' n_new) and hence of one PushHidden.
  int64_t max_step_tokens = 16384;
  // A stage's KV pool (all its layers) in bytes; 0: the host's memory (HostMemoryBytes()).
  int64_t max_kv_bytes = 0;
  // The gRPC receive limit of the Worker server: one PushHidden of max_step_tokens rows must fit
  // (LoadStage checks it against the model's hidden size).
  int64_t max_message_bytes = DefaultMaxMessageBytes(16384);
  // Hidden-row deliveries waiting for their step (HiddenMailbox): how many and for how long.
  int max_pending_steps = 64;
  absl::Duration pending_ttl = 2 * kMaxLinkTimeout;
};

// `value` in [lo, hi], or INVALID_ARGUMENT naming `field`, the value and the range (`why`, when
// given, in parentheses).
absl::Status CheckRange(absl::string_view field, int64_t value, int64_t lo, int64_t hi,
                        absl::string_view why = "");
// link_timeout_ms in [0, kMaxLinkTimeout] (0: the stage's default).
absl::Status CheckLinkTimeout(int64_t ms);

}  // namespace xkv

#endif  // XKV_WORKER_WORKER_LIMITS_H_
