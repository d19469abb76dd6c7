// Runs one EvalPrompt (bench/eval_prompts.h) through every method x budget of `xkv eval` on any
// StageEngine holding the whole model (CPU, or CUDA with `--device cuda:N`), sharing ONE prefill
// of the prompt between all of them (StageEngine::CopySequence, then CompactLayer per copy).
//
// Per prompt (C = context tokens, Q = question, R = the real continuation, W = the largest
// observation window of the methods, S = fidelity steps):
//  1. Prefill C but its last W tokens (unobserved) and copy that cache for the aware and question
//     lanes; then C's last W tokens are observed once per distinct scoring (scores-only steps for
//     all but the last): the query-AGNOSTIC scores.
//  2. On the copies, C's last W tokens + Q (+ the template tail and the answer prefix: aware) are
//     prefilled, the last W observed: the query-AWARE scores (and the first answer token's
//     logits). So the window is always the last W tokens of what is compressed, the context's
//     tail included when the question is shorter (SnapKV's and kvpress's window), for W
//     recomputed tokens per lane. R[0, W) is prefilled on a copy of the whole context (the aware
//     scores of the fidelity lane).
//  3. Query-agnostic variants: a copy of the context cache, compacted, per method x budget; Q is
//     then prefilled on top (kvpress's protocol: the question comes after compression).
//     Query-aware variants: a copy of the context + question cache, compacted; the first answer
//     token comes from the full prefill (as in XKV's one_pass mode).
//  4. Fidelity lanes (when R has more than W tokens): the same for R: every cache, the full one
//     included, is teacher-forced with R up to W + S and its predictions of R[W, W + S) are
//     compared with the full cache's (agreement, KL) and with the truth (NLL).
//  5. Every cache's greedy answer, decoded as one batch.
// Positions are always the true ones (prompt length + tokens since), never the compacted cache
// length. Every sequence is released before Run returns.
//
// Budgets are fractions f of the full cache's KV bytes for the prompt being compressed (T tokens,
// L layers): every method keeps N = round(f*L*T) - L*w prefix tokens in total plus the w window
// tokens per layer, so all methods hold the same bytes (same KV heads in every layer). The
// reported bytes are the engine's (CacheLength x kv_bytes_per_token after compaction).
#ifndef XKV_BENCH_EVAL_RUNNER_H_
#define XKV_BENCH_EVAL_RUNNER_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "allocator/kv_policy.h"
#include "allocator/kv_spec.h"
#include "bench/eval_metrics.h"
#include "bench/eval_prompts.h"
#include "kernels/cpu/importance.h"
#include "model/importance_collector.h"
#include "model/kv_allocation.h"
#include "model/layer_calibration.h"
#include "model/reconstruct_scorer.h"
#include "model/stage_engine.h"
#include "model/tokenizer.h"

namespace xkv {

// kAware: context + question + template tail + answer prefix are compressed (XKV's one_pass
// serving; the window is the prompt's end). kQuestion: context + question are compressed, the
// template tail and the answer prefix come after (kvpress's compress_questions). kAgnostic: the
// context alone is compressed, everything after it comes after (kvpress's default).
enum class QueryMode { kAware, kQuestion, kAgnostic };
std::string_view QueryModeName(QueryMode mode);  // "aware" | "question" | "agnostic"

// One compressed method: a spec (its target is set per budget) and the scoring it ranks by.
// Methods with different scorings (window, reduction, pooling) share the prompt's prefill: each
// distinct scoring gets its own ImportanceCollector on the same forward pass.
struct EvalMethod {
  std::string name;  // "snapkv", "paper", "xkv", "xkv:floor=0.25:window=16", …
  KvSettings kv;
  ImportanceOptions scoring;
  bool value_norm = false;  // scores x ||v|| (WeightByValueNorm) before selection
  bool mix_window = false;  // reconstruct: max of the re-reading scores and the window's scores
  // calib=0|1: this method takes `xkv eval --calibration`'s layer weights (unset: every xkv method
  // with the global allocator does when the flag is given). ApplyLayerWeights sets them.
  std::optional<bool> calibration;
};

// Parses one method: full | streaming | snapkv | pyramidkv | adakv (snapkv with AdaKV's per-head
// split, floor 0.2) | paper (xkv, paper allocator) | xkv (the default global allocator), or
// snapkv|pyramidkv|adakv|streaming@kvpress (kvpress's settings: window 64, kernel 5),
// optionally followed by ":key=value" parameters: floor, cap, window (this method's observation
// window), sinks (xkv's sink tokens, [0, 64]), recent (xkv: share of the ranked budget kept as
// the most recent tokens, [0, 1]), pool (max|avg), kernel (pool kernel, odd in [1, 63]),
// reduce (max|sum), profile (reconstruct: KVzip scores from re-reading the prompt, see
// model/reconstruct_scorer.h; unpooled unless kernel is given; CPU and CUDA engines), mix (max:
// with reconstruct, the elementwise max of the unpooled re-reading scores and the method's window
// scores, pooled by its kernel), vnorm (1: scores x ||v||, 0), calib (0|1: with or without
// --calibration's layer weights). `base` gives the defaults (window,
// pool kernel). INVALID_ARGUMENT naming the value and the allowed range.
absl::StatusOr<EvalMethod> ParseEvalMethod(absl::string_view text, const ImportanceOptions& base);

// Gives a calibration's weights (model/layer_calibration.h; empty: no --calibration) to the
// methods that take them: the layer weights to xkv methods with the global allocator
// (EvalMethod::calibration), the head weights to those with allocator=heads. INVALID_ARGUMENT for
// calib=1 without layer weights or on a method other than xkv with the global allocator, and for
// allocator=heads without head weights.
absl::Status ApplyCalibration(const CalibrationWeights& weights, std::vector<EvalMethod>* methods);

struct EvalOptions {
  std::vector<EvalMethod> methods;  // compressed methods; full always runs as the reference
  std::vector<double> budgets;      // fractions of full KV bytes, each in (0, 1)
  std::vector<QueryMode> modes = {QueryMode::kAware, QueryMode::kAgnostic};
  int answer_tokens = 12;              // greedy answer length cap
  int fidelity_tokens = 32;            // teacher-forced continuation steps (S)
  std::vector<int32_t> stop_tokens;    // end of answer (e.g. <|im_end|>, <|endoftext|>)
  int64_t max_step_tokens = 2048;      // tokens per batched step (engine / memory bound)
  int max_step_sequences = 64;         // sequences per batched step
  int64_t max_step_logit_rows = 1024;  // logits rows per batched step (the CUDA engine: 256)
  int threads = 1;                     // host threads for the fidelity metrics
  RepeatPrompt repeat;                 // profile=reconstruct methods: the re-reading instruction
  ReconstructOptions reconstruct;
};

// Total kept prefix tokens for budget fraction f of a prompt of T tokens (clamped to [0, L*P]).
int64_t BudgetTokens(double fraction, int num_layers, int64_t prompt_len, int window);

// One row per prompt x query mode x method x budget (full: budget 1).
struct EvalRow {
  std::string prompt_id;
  std::string task;
  QueryMode mode = QueryMode::kAware;
  int64_t target_tokens = 0;
  int64_t prompt_tokens = 0;    // tokens compressed: context (agnostic) or context + question
  double depth = -1.0;          // depth of the asked needle in the document (-1: unknown)
  std::string method = "full";  // EvalMethod::name
  double budget = 1.0;          // requested fraction of full KV bytes
  int64_t kv_bytes_held = 0;    // after compaction
  int64_t kv_bytes_full = 0;
  std::optional<double> retention;     // average retention of the scores kept, when known
  std::vector<int64_t> layer_budgets;  // [L] kept prefix tokens b_l per layer (empty for full)
  std::vector<std::string> answers;    // the expected answers (any one is correct)
  std::string answer;                  // greedy answer text (after the prefix), end tokens dropped
  bool correct = false;
  std::optional<FidelityScore> fidelity;  // when the prompt has a continuation
};

struct PromptTiming {
  double prefill_s = 0.0;  // the shared full prefills (context, question, continuation start)
  double total_s = 0.0;
};

class EvalRunner {
 public:
  // The engine must hold every layer (embedding and head included); engine and tokenizer must
  // outlive the runner.
  EvalRunner(StageEngine* engine, const Tokenizer* tokenizer, EvalOptions options);

  // INVALID_ARGUMENT when the context is not longer than the largest window, the question is
  // empty, or the prompt plus its answer does not fit the model's context.
  absl::StatusOr<std::vector<EvalRow>> Run(const EvalPrompt& prompt, PromptTiming* timing);
  // The multi-question mode (bench/eval_multi_question.h): the prompts share one context (and
  // id). It is prefilled once and compressed once per method x budget without any question (the
  // agnostic scores), then every question + suffix is answered on its own copy of every cache.
  // Rows as Run's, mode agnostic: per question, full then each method x budget.
  // INVALID_ARGUMENT when the set is empty or the contexts differ.
  absl::StatusOr<std::vector<EvalRow>> RunMultiQuestion(absl::Span<const EvalPrompt> questions,
                                                        PromptTiming* timing);
  // Run's checks alone (a whole file is checked before the first prompt runs).
  absl::Status CheckPrompt(const EvalPrompt& prompt) const;

 private:
  struct Lane;
  struct Variant;
  uint64_t NewSequence() { return next_id_++; }
  // Prefills `tokens` on lane (its position onward), unobserved, in steps of max_step_tokens.
  absl::Status PrefillUnobserved(Lane& lane, absl::Span<const int32_t> tokens);
  // Prefills `tokens` on lane (its position onward); the last W tokens are observed with every
  // scoring (scores[i] for scorings_[i]). Returns the last token's logits.
  absl::StatusOr<std::vector<float>> Prefill(Lane& lane, absl::Span<const int32_t> tokens,
                                             std::vector<CollectedScores>* scores);
  // Runs every lane's pending tokens (batched), keeping its last logit_rows logits.
  absl::Status RunPending(std::vector<Lane*> lanes);
  // Greedy decoding of every lane (its first logits already in lane.logits) up to max_tokens or a
  // stop token, batched across lanes.
  absl::Status Decode(std::vector<Lane*> lanes);
  // A copy of `from` compacted for every method x budget (scores[scoring_of_[m]]).
  absl::StatusOr<std::vector<Variant>> CompressAll(const Lane& from,
                                                   absl::Span<const CollectedScores> scores,
                                                   bool with_fidelity);
  // The scores a method ranks by on `from`: its window scores (scoring_of_), or the context's
  // re-reading scores for profile=reconstruct (max-merged with the window's with mix=max), times
  // ||v|| with vnorm=1.
  absl::StatusOr<CollectedScores> MethodScores(const EvalMethod& method, const Lane& from,
                                               const CollectedScores& window) const;
  absl::StatusOr<Lane> CompactCopy(const Lane& from, const CollectedScores& scores,
                                   const KvSettings& spec, AllocationReport* report);
  void Release(Lane& lane);
  bool IsStop(int32_t token) const;
  std::string AnswerText(const std::vector<int32_t>& tokens) const;

  StageEngine* engine_;
  const Tokenizer* tokenizer_;
  EvalOptions options_;
  std::vector<ImportanceOptions> scorings_;  // the distinct scorings of the methods
  std::vector<int> scoring_of_;              // [method] index into scorings_
  int max_window_ = 0;
  uint64_t next_id_ = 1;
  bool reconstructs_ = false;                // some method has profile=reconstruct
  std::optional<ReconstructScores> reread_;  // the current prompt's re-reading scores
};

}  // namespace xkv

#endif  // XKV_BENCH_EVAL_RUNNER_H_
