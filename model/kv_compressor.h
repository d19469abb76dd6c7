// The XKV compression step inside prefill (DESIGN.md §3.4–3.6), batch-first: several prompts of
// different lengths per call, each with its own fresh KvCache. Returns each prompt's last-position
// logits and an AllocationReport; the caches are left compacted, ready for decoding at position
// T (prompt length) + generated — never the (smaller) cache length.
//
// What runs, per request (T = prompt length, w = observation window):
// - policy full, or T <= w: a plain prefill, nothing evicted (the report says why).
// - baselines (snapkv, pyramidkv, streaming): budgets do not depend on scores, so they are known
//   before the prefill; one prefill, and each layer is compacted as soon as the model moves on
//   to the next layer (see "in-flight compaction" below). Top-score selection uses the scores of
//   that same prefill's window queries.
// - xkv, profile per_request (the paper): a scores-only mini-prefill (no KV writes, stops after
//   the last layer's scores), solve, then the real prefill with in-flight compaction. Both passes
//   see the same Q/K, so the selection equals one_pass's exactly (checked by the tests).
// - xkv, profile one_pass: one prefill observing the window; the request's FULL KV is held until
//   every layer has reported, then solve and compact. Transient memory: the full cache.
// - xkv, profile sampled:ρ: a seeded ProfileStore decides per request id. Profiled: like one_pass,
//   and its budgets (as fractions of P) are added to the running mean. Not profiled: budgets are
//   the running mean (ProfileStore::BudgetsFor) — known up front, so in-flight compaction — but
//   WHICH tokens a layer keeps still comes from that layer's own scores (the one prefill's window
//   queries; cheap). "Not profiled" means the allocation is not re-solved, not blind selection.
//   Decisions are made for the whole batch up front; samples are added after it, in order.
//
// In-flight compaction: when the model reports layer l of a request's final chunk (its observer
// runs after layer l's KV is appended), layer l-1 is finished — its attention has run for every
// token — and is compacted then; the last layer is compacted after the step. This relies on the
// model touching only layer l's cache while in layer l. Transient memory: compacted layers plus at
// most two full layers (with chunking, every layer holds the full prefix of earlier chunks until
// the final chunk runs — chunks attend to all earlier tokens).
//
// Chunking (prefill_chunk > 0): the importance window must be the prompt's last w queries, so the
// final chunk is widened to >= w tokens; only the final chunk is observed. The per_request
// mini-prefill always runs each prompt as one chunk (it writes no KV for later chunks to read).
//
// Not thread-safe per LlamaModel (one Prefill at a time per model); the profile store is shared
// and thread-safe.
#ifndef XKV_MODEL_KV_COMPRESSOR_H_
#define XKV_MODEL_KV_COMPRESSOR_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "allocator/kv_policy.h"
#include "allocator/kv_spec.h"
#include "allocator/profile_store.h"
#include "kernels/cpu/importance.h"
#include "model/importance_collector.h"
#include "model/kv_allocation.h"
#include "model/kv_cache.h"
#include "model/llama_model.h"

namespace xkv {

struct KvCompressorOptions {
  KvSettings kv;  // policy, target, profile mode, allocator (allocator/kv_spec.h)
  // Window, pool kernel and granularity; the reduction and pooling follow ScoringFor(kv, ·).
  ImportanceOptions importance;
  uint64_t seed = 0;                 // sampled mode: per-request decisions (seed, request id)
  int64_t profile_store_window = 0;  // sampled mode: ProfileStoreOptions::window (0 = plain mean)
  int64_t prefill_chunk = 0;         // max prompt tokens per sequence per step; 0 = whole prompt
  bool keep_scores = false;          // return each request's collected scores
};

struct PrefillRequest {
  absl::Span<const int32_t> prompt;  // token ids, >= 1
  KvCache* cache = nullptr;          // fresh (every layer empty), covering the model's layers
  uint64_t request_id = 0;           // sampled mode decisions
};

struct CompressedPrefill {
  std::vector<float> logits;  // fp32 [vocab]: the last prompt position
  int64_t next_position = 0;  // position of the first generated token = prompt length
  AllocationReport report;
  AllocationPlan plan;                    // budgets and kept slots per layer per KV head
  std::optional<CollectedScores> scores;  // when options.keep_scores (and scores were collected)
};

class KvCompressor {
 public:
  // INVALID_ARGUMENT for bad options (target out of range, chunk < window, bad importance window
  // or pool kernel, sample rate outside (0, 1]).
  static absl::StatusOr<std::unique_ptr<KvCompressor>> Create(const KvCompressorOptions& options);

  // Prefills every request (the model must hold all layers plus embedding and lm_head) and
  // compacts its cache. INVALID_ARGUMENT (naming the request id) for a bad request, e.g. a token
  // budget above a full cache for its prompt; the solver's errors surface unchanged. Requests are
  // validated before any compute; on a later error the caches may be partly filled or compacted
  // (Clear() them before reuse).
  absl::StatusOr<std::vector<CompressedPrefill>> Prefill(LlamaModel& model,
                                                         absl::Span<const PrefillRequest> requests);

  const KvCompressorOptions& options() const { return options_; }
  // The sampled mode's store (nullptr in other modes).
  const ProfileStore* profile_store() const { return store_.get(); }

 private:
  struct Job;
  explicit KvCompressor(const KvCompressorOptions& options) : options_(options) {}
  absl::Status Validate(const LlamaModel& model, absl::Span<const PrefillRequest> requests) const;
  std::vector<Job> MakeJobs(const LlamaModel& model, absl::Span<const PrefillRequest> requests);
  absl::Status MiniPrefill(LlamaModel& model, std::vector<Job>& jobs);
  absl::Status PrepareBudgets(const ModelConfig& config, std::vector<Job>& jobs);
  absl::Status CompactInFlight(Job& job, const CollectedScores& scores, int layer);
  absl::Status Finish(const ModelConfig& config, Job& job);

  KvCompressorOptions options_;
  std::unique_ptr<ProfileStore> store_;
};

// Evaluation harness: ONE full prefill per request (caches left full) plus its collected scores,
// so many policies/targets can share it through CompactCopy. Same batching and chunking rules.
struct ScoredPrefill {
  std::vector<float> logits;  // fp32 [vocab]: the last prompt position
  CollectedScores scores;
};
absl::StatusOr<std::vector<ScoredPrefill>> PrefillWithScores(
    LlamaModel& model, absl::Span<const PrefillRequest> requests,
    const ImportanceOptions& importance, int64_t prefill_chunk = 0);

// Chunk start offsets of a prompt of T tokens: chunks of <= chunk tokens (0 = one chunk), the
// last widened to min(T, window) tokens when shorter. Requires chunk == 0 or chunk >= window.
std::vector<int64_t> PrefillChunkStarts(int64_t prompt_len, int64_t chunk, int window);

}  // namespace xkv

#endif  // XKV_MODEL_KV_COMPRESSOR_H_
