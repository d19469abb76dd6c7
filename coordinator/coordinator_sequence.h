// The coordinator's per-request state (private to coordinator*.cc).
#ifndef XKV_COORDINATOR_COORDINATOR_SEQUENCE_H_
#define XKV_COORDINATOR_COORDINATOR_SEQUENCE_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "allocator/kv_policy.h"
#include "coordinator/coordinator.h"
#include "coordinator/generate_params.h"
#include "coordinator/kv_budgeting.h"
#include "model/stage_engine.h"
#include "model/stop_matcher.h"
#include "xkv/v1/worker.pb.h"

namespace xkv {

struct Coordinator::Sequence {
  uint64_t id = 0;
  GenerateParams params;
  KvSettings kv;
  std::vector<int32_t> prompt;
  std::shared_ptr<GenerateSink> sink;
  std::unique_ptr<StopMatcher> stop;
  std::string utf8_pending;  // bytes of an incomplete UTF-8 character held back

  bool compress = false;            // some layers will be evicted
  bool needs_profile_pass = false;  // xkv per_request: scores-only pass first
  // The reconstruct profile: each re-reading step's input and prompt span (PlanRereads), run after
  // the prefill; pending until the last one's scores are in (the compaction waits for them).
  std::vector<std::vector<int32_t>> reread_inputs;
  std::vector<RereadSpan> reread_spans;
  bool reread_pending = false;
  bool budgets_known = false;
  bool compacted = false;
  bool profiled = false;  // budgets solved from this request's own gains
  PolicyBudgets budgets;
  std::optional<double> retention;
  bool reachable = true;
  std::vector<xkv::v1::LayerGains> gains;  // the latest observed curves (for retention)

  bool started = false;  // the stages hold state for it
  int restarts = 0;      // times a failed step sent it back to the queue (FailStep)
  int32_t last_token = -1;
  // Written by the loop thread only; atomic so that PredictedStageKvBytes may read it under mu_.
  std::atomic<int64_t> generated{0};
  std::vector<xkv::v1::LayerSize> layers;  // latest per-layer sizes
  std::vector<int32_t> output_ids;         // every token sampled for it, in order
  // Preempted: the stages' input on re-admission, prompt + output_ids (empty: the prompt).
  std::vector<int32_t> recompute;

  absl::Time submitted, admitted, first_token, prefill_done;
  absl::Time last_token_time;       // when the latest generated token arrived
  std::vector<double> itl_seconds;  // gaps between consecutive generated tokens
  bool admitted_set = false;
  double profile_ms = 0, solve_ms = 0;
};

}  // namespace xkv

#endif  // XKV_COORDINATOR_COORDINATOR_SEQUENCE_H_
