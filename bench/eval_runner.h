// Runs one EvalPrompt (bench/eval_tasks.h) through every method × budget of `xkv eval`, sharing
// ONE full prefill of the prompt between all of them.
//
// Per prompt (C = context tokens, Qk = key question, Qs = fidelity question):
//  1. Full prefill of the context, observed by an ImportanceCollector (scores of the context's
//     last w tokens: the query-AGNOSTIC scores).
//     Methods with profile=reconstruct then score the context by re-reading it once
//     (ScoreByReconstruction, model/reconstruct_scorer.h), shared by all of them and both modes.
//  2. Query-agnostic caches: CompactCopy of that full context cache for every method × budget
//     (two copies each: one gets Qk, one gets Qs).
//  3. The full cache is duplicated; Qk is prefilled on one copy and Qs on the other, both observed
//     (the window is now the question's last w tokens: the query-AWARE scores). CompactCopy of
//     each for every method × budget. As in XKV's one_pass mode, the prompt's last logits come
//     from the full prefill, so a query-aware run's first answer token equals the full cache's.
//  4. Full cache (the reference; method "full"): greedy answer to Qk (<= answer_tokens), and the
//     greedy continuation of Qs (<= fidelity_tokens, stopping after an end token) with its logits.
//  5. One batched step for all compressed caches: query-agnostic ones prefill their question
//     (on top of the compacted cache, at the true positions C..C+|Q|-1); fidelity caches are also
//     teacher-forced with the full run's continuation (all rows' logits kept).
//  6. Batched greedy decoding of every compressed cache's answer to Qk.
// New tokens always take the true position (prompt length + tokens since), never the compacted
// cache length.
//
// Budgets are fractions f of the full cache's KV bytes for the prompt being compressed (T tokens,
// L layers): every method keeps N = round(f·L·T) − L·w prefix tokens in total plus the w window
// tokens per layer, so all methods hold the same bytes (fp32 cache, same KV heads in every layer).
// The reported bytes come from the AllocationReport of each CompactCopy.
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
#include "bench/eval_tasks.h"
#include "kernels/cpu/importance.h"
#include "model/importance_collector.h"
#include "model/llama_model.h"
#include "model/reconstruct_scorer.h"
#include "model/tokenizer.h"

namespace xkv {

enum class QueryMode { kAware, kAgnostic };
std::string_view QueryModeName(QueryMode mode);  // "aware" | "agnostic"

// One compressed method: a spec (its target is set per budget) and the scoring it ranks by.
// Methods with different scorings (window, reduction, pooling) share the prompt's prefill: each
// distinct scoring gets its own ImportanceCollector on the same forward pass.
struct EvalMethod {
  std::string name;  // "snapkv", "paper", "xkv", "xkv:floor=0.25:window=16", …
  KvSettings kv;
  ImportanceOptions scoring;
  bool value_norm = false;  // scores x ||v|| (WeightByValueNorm) before selection
  bool mix_window = false;  // reconstruct: max of the re-reading scores and the window's scores
};

// Parses one method: full | streaming | snapkv | pyramidkv | paper (xkv, paper allocator) | xkv
// (the default global allocator), optionally followed by ":key=value" parameters: floor, cap,
// window (this method's observation window), pool (max|avg), kernel (pool kernel, odd in
// [1, 31]), reduce (max|sum), profile (reconstruct: KVzip scores from re-reading the prompt, see
// model/reconstruct_scorer.h; unpooled unless kernel is given), mix (max: with reconstruct, the
// elementwise max of the unpooled re-reading scores and the method's window scores, pooled by its
// kernel), vnorm (1: scores x ||v||, 0).
// `base` gives the defaults
// (window, pool kernel). INVALID_ARGUMENT naming the value and the allowed range.
absl::StatusOr<EvalMethod> ParseEvalMethod(absl::string_view text, const ImportanceOptions& base);

struct EvalOptions {
  std::vector<EvalMethod> methods;   // compressed methods; full always runs as the reference
  std::vector<double> budgets;       // fractions of full KV bytes, each in (0, 1)
  int answer_tokens = 12;            // greedy answer length cap
  int fidelity_tokens = 32;          // teacher-forced continuation length
  std::vector<int32_t> stop_tokens;  // end of answer (e.g. <|im_end|>, <|endoftext|>)
  int64_t max_batch_tokens = 2048;   // tokens per batched forward step (memory bound)
  RepeatPrompt repeat;               // profile=reconstruct methods: the re-reading instruction
  ReconstructOptions reconstruct;
};

// Total kept prefix tokens for budget fraction f of a prompt of T tokens (clamped to [0, L·P]).
int64_t BudgetTokens(double fraction, int num_layers, int64_t prompt_len, int window);

// One row per prompt × query mode × method × budget (full: budget 1).
struct EvalRow {
  std::string prompt_id;
  TaskKind task = TaskKind::kPasskey;
  QueryMode mode = QueryMode::kAware;
  int64_t target_tokens = 0;
  int64_t prompt_tokens = 0;    // tokens compressed: context (agnostic) or context + question
  double depth = 0.0;           // actual depth of the asked needle in the document
  std::string method = "full";  // EvalMethod::name
  double budget = 1.0;          // requested fraction of full KV bytes
  int64_t kv_bytes_held = 0;    // after compaction (AllocationReport)
  int64_t kv_bytes_full = 0;
  std::optional<double> retention;     // average retention of the scores kept, when known
  std::vector<int64_t> layer_budgets;  // [L] kept prefix tokens b_l per layer (empty for full)
  std::string expected;
  std::string answer;  // greedy answer text (after the priming), end tokens dropped
  bool correct = false;
  double agreement = 1.0;  // eval_metrics.h
  double kl = 0.0;
  int fidelity_steps = 0;
};

struct PromptTiming {
  double prefill_s = 0.0;  // the shared full prefill (context + both questions)
  double total_s = 0.0;
};

class EvalRunner {
 public:
  // model must hold every layer plus embedding and lm_head; both must outlive the runner.
  EvalRunner(LlamaModel* model, const Tokenizer* tokenizer, EvalOptions options);

  // INVALID_ARGUMENT when a question is shorter than the window or the prompt plus answers does
  // not fit the model's context.
  absl::StatusOr<std::vector<EvalRow>> Run(const EvalPrompt& prompt, PromptTiming* timing);

 private:
  struct Lane;
  struct Variant;
  absl::Status CheckPrompt(const EvalPrompt& prompt) const;
  absl::Status RunPending(std::vector<Lane*> lanes);
  // Greedy decoding of every lane (its first logits already in lane.logits) up to its
  // max_tokens or a stop token, batched across lanes.
  absl::Status Decode(std::vector<Lane*> lanes);
  // CompactCopy of `full` for every method × budget, each with the scores of its scoring
  // (scores[scoring_of_[m]]); `copies` == 2 also fills the fidelity lane.
  absl::StatusOr<std::vector<Variant>> CompressAll(const KvCache& full,
                                                   absl::Span<const CollectedScores> scores,
                                                   int copies);
  absl::Status ScoreVariants(std::vector<Variant>& variants, QueryMode mode,
                             const std::vector<int32_t>& reference,
                             const std::vector<float>& full_logits);
  // Lanes of the batched step after the reference run: agnostic questions, teacher forcing.
  std::vector<Lane*> QueueSecondPass(const EvalPrompt& prompt, const std::vector<int32_t>& ref,
                                     const std::vector<float>& key_logits,
                                     std::vector<Variant>& aware, std::vector<Variant>& agnostic);
  Variant FullVariant(int64_t prompt_len, const std::vector<int32_t>& answer,
                      int fidelity_steps) const;
  void AppendRows(const EvalPrompt& prompt, QueryMode mode, std::vector<Variant>& variants,
                  std::vector<EvalRow>& rows) const;
  bool IsStop(int32_t token) const;
  std::string AnswerText(const std::vector<int32_t>& tokens) const;

  LlamaModel* model_;
  const Tokenizer* tokenizer_;
  EvalOptions options_;
  struct Scoring {
    ImportanceOptions options;
    bool reconstruct = false;  // scores from re-reading the context (shared by all such scorings)
    bool mix = false;          // reconstruct: max with the window scores of `options`
  };
  std::vector<Scoring> scorings_;  // the distinct scorings of the methods
  std::vector<int> scoring_of_;    // [method] index into scorings_
  int max_window_ = 0;
};

}  // namespace xkv

#endif  // XKV_BENCH_EVAL_RUNNER_H_
