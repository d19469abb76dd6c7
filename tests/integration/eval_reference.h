// What the service's XKV runs are compared with in tests/integration/ and tests/gpu/: the `xkv
// eval` harness's steps on one engine (an observed prefill, the reconstruct profile's re-reading
// merged with the window's scores, greedy decoding with log-probabilities after a compaction; all
// of them: RunAsEval), the long
// needle prompt those tests share, and a sink that keeps a request's tokens, log-probabilities
// and usage with a bounded wait. Header-only; test code.
#ifndef XKV_TESTS_INTEGRATION_EVAL_REFERENCE_H_
#define XKV_TESTS_INTEGRATION_EVAL_REFERENCE_H_

#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "base/status_macros.h"
#include "coordinator/coordinator.h"
#include "model/chat_template.h"
#include "model/gguf.h"
#include "model/importance_collector.h"
#include "model/kv_allocation.h"
#include "model/reconstruct_scorer.h"
#include "model/sampler.h"
#include "model/stage_engine.h"
#include "model/tokenizer.h"

namespace xkv {
namespace testing_eval {

// Collects one request's stream (tokens, their log-probabilities, the usage); Wait is bounded.
class LogprobSink final : public GenerateSink {
 public:
  // Called (from the coordinator's loop) with the count of tokens streamed so far.
  std::function<void(size_t)> on_tokens;

  void OnDelta(const std::string&, absl::Span<const int32_t> ids,
               absl::Span<const SampledLogprobs> logprobs) override {
    size_t n = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      tokens_.insert(tokens_.end(), ids.begin(), ids.end());
      for (const SampledLogprobs& l : logprobs) logprobs_.push_back(l.token.logprob);
      n = tokens_.size();
    }
    if (on_tokens) on_tokens(n);
  }
  void OnDone(const xkv::v1::Usage& usage) override {
    std::lock_guard<std::mutex> lock(mu_);
    usage_ = usage;
    End(absl::OkStatus());
  }
  void OnError(const absl::Status& status) override {
    std::lock_guard<std::mutex> lock(mu_);
    End(status);
  }
  // A bounded wait: a hang fails the test.
  absl::Status Wait() {
    std::unique_lock<std::mutex> lock(mu_);
    if (!done_.wait_for(lock, std::chrono::minutes(2), [&] { return finished_; })) {
      return absl::DeadlineExceededError("the request did not finish in 2 minutes");
    }
    return status_;
  }
  std::vector<int32_t> tokens_;
  std::vector<float> logprobs_;
  xkv::v1::Usage usage_;

 private:
  void End(const absl::Status& s) {
    status_ = s;
    finished_ = true;
    done_.notify_all();
  }
  std::mutex mu_;
  std::condition_variable done_;
  absl::Status status_;
  bool finished_ = false;
};

// The service those tests start: policy xkv at retention 0.9 by default, prompts prefilled (and
// re-read) in steps of at most `step_tokens`, `kv_blocks` blocks per layer on each stage.
inline CoordinatorOptions ServiceOptions(const std::string& model_path, int64_t step_tokens,
                                         int64_t kv_blocks) {
  CoordinatorOptions o;
  o.model_path = model_path;
  o.kv.policy = PolicyKind::kXkv;
  o.kv.target = {KvTarget::Kind::kRetention, 0.9};
  o.scheduler.step_token_budget = step_tokens;
  o.scheduler.prefill_chunk = step_tokens;
  o.kv_capacity_blocks = kv_blocks;
  o.health_interval = absl::ZeroDuration();
  return o;
}

// A request's kv_policy: `policy` with `profile`, keeping `budget_tokens` prefix tokens in all.
inline KvPolicyOverride BudgetOverride(const std::string& policy, const std::string& profile,
                                       int64_t budget_tokens) {
  KvPolicyOverride k;
  k.policy = policy;
  k.profile_mode = profile;
  k.budget_tokens = budget_tokens;
  return k;
}

struct NeedlePrompt {
  std::vector<int32_t> ids;  // ~400 tokens: lockers and their keys, then the question
  RepeatPrompt repeat;       // the reconstruct profile's re-reading frame (SmolLM2's chat template)
};

// The needle prompt with the model's tokenizer.
inline absl::StatusOr<NeedlePrompt> LoadNeedlePrompt(const std::string& model_path) {
  ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> file, GgufFile::Open(model_path));
  ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tok, Tokenizer::FromGguf(*file));
  std::string text;
  for (int i = 0; text.size() < 900; ++i) {
    text += "Entry " + std::to_string(i) + ": locker " + std::to_string(300 + 11 * i) +
            " holds the key " + std::to_string(7919 * (i + 5) % 10007) + ". ";
  }
  text += "Which key does locker 333 hold?";
  NeedlePrompt out;
  ASSIGN_OR_RETURN(out.ids, tok->Encode(text, /*parse_special=*/false));
  ASSIGN_OR_RETURN(out.repeat, MakeRepeatPrompt(*tok, ChatTemplate::SmolLm2()));
  return out;
}

struct ObservedPrefill {
  CollectedScores scores;     // the observation window's
  std::vector<float> logits;  // of the prompt's last token
};

// The whole prompt prefilled as sequence `id` with its window observed.
inline absl::StatusOr<ObservedPrefill> Prefill(StageEngine& e, uint64_t id,
                                               const std::vector<int32_t>& prompt,
                                               const ImportanceOptions& scoring) {
  const int64_t T = static_cast<int64_t>(prompt.size());
  EngineStep step;
  step.sequences.push_back({id, T, 0, true});
  std::vector<EngineObservation> obs;
  RETURN_IF_ERROR(e.EmbedResident(prompt));
  RETURN_IF_ERROR(e.RunLayersResident(step, scoring, &obs));
  ObservedPrefill out;
  ASSIGN_OR_RETURN(out.logits, e.LogitsResident({T - 1}));
  out.scores = *std::move(obs[0].scores);
  return out;
}

// The reconstruct profile's scores of sequence `id` (its cache holds exactly `prompt`): the
// re-reading in chunks of at most `step_tokens`, unpooled (they replace the window's).
inline absl::StatusOr<CollectedScores> RereadScores(StageEngine& e, uint64_t id,
                                                    const std::vector<int32_t>& prompt,
                                                    const RepeatPrompt& repeat, int64_t step_tokens,
                                                    ImportanceOptions scoring) {
  ReconstructOptions ro;
  ro.chunk_tokens = RereadChunkTokens(repeat, ro, step_tokens);
  if (ro.chunk_tokens >= static_cast<int64_t>(prompt.size())) {
    return absl::FailedPreconditionError("the prompt should re-read in more than one step");
  }
  ASSIGN_OR_RETURN(ReconstructScores raw, ScoreByReconstruction(&e, id, prompt, repeat, ro));
  scoring.pool_kernel = kRereadPoolKernel;
  return ReconstructCollectedScores(raw, static_cast<int64_t>(prompt.size()), e.config(), scoring);
}

struct GreedyRun {
  std::vector<int32_t> tokens;
  std::vector<float> logprobs;
};

// Greedy decoding of sequence `id` (its T-token prompt already in the cache, `logits` those of the
// prompt's last token) for `max_tokens` tokens, as the service streams them.
inline absl::StatusOr<GreedyRun> DecodeGreedy(StageEngine& e, uint64_t id, int64_t T,
                                              std::vector<float> logits, int max_tokens) {
  GreedyRun run;
  for (int t = 0; t < max_tokens; ++t) {
    const int32_t token = Argmax(logits);
    run.tokens.push_back(token);
    run.logprobs.push_back(LogprobsOf(logits, token, 0).token.logprob);
    if (t + 1 == max_tokens) break;
    EngineStep step;
    step.sequences.push_back({id, 1, T + t, false});
    RETURN_IF_ERROR(e.EmbedResident({token}));
    RETURN_IF_ERROR(e.RunLayersResident(step, {}, nullptr));
    ASSIGN_OR_RETURN(logits, e.LogitsResident({0}));
  }
  return run;
}

struct EvalRun {
  std::vector<int32_t> tokens;
  std::vector<float> logprobs;
  std::vector<std::vector<std::vector<int32_t>>> kept;  // [layer][KV head] kept slots
};

// The eval harness's run of one request as sequence `id` of `e` (whose cache then holds the
// compacted prompt and the decoded tokens): the whole prompt prefilled, its window scored with
// `scoring` (ScoringFor of the spec: `xkv eval`'s method of that policy); for the reconstruct
// profile the re-reading in steps of at most `step_tokens` (with `repeat`), its scores replacing
// the window's; PlanAllocation; every layer compacted; `max_tokens` greedy tokens.
inline absl::StatusOr<EvalRun> RunAsEval(StageEngine& e, uint64_t id,
                                         const std::vector<int32_t>& prompt, const KvSettings& spec,
                                         const ImportanceOptions& scoring, int max_tokens,
                                         const RepeatPrompt* repeat = nullptr,
                                         int64_t step_tokens = 0) {
  const int64_t T = static_cast<int64_t>(prompt.size());
  ASSIGN_OR_RETURN(ObservedPrefill prefill, Prefill(e, id, prompt, scoring));
  CollectedScores scores = prefill.scores;
  if (spec.profile.kind == ProfileModeKind::kReconstruct) {
    if (repeat == nullptr) return absl::InvalidArgumentError("reconstruct needs a repeat prompt");
    ASSIGN_OR_RETURN(scores, RereadScores(e, id, prompt, *repeat, step_tokens, scoring));
  }
  ASSIGN_OR_RETURN(AllocationPlan plan, PlanAllocation(scores, e.config(), spec));
  for (int l = 0; l < e.config().n_layers; ++l) {
    RETURN_IF_ERROR(e.CompactLayer(id, l, T, plan.kept[l]));
  }
  ASSIGN_OR_RETURN(GreedyRun run, DecodeGreedy(e, id, T, prefill.logits, max_tokens));
  return EvalRun{run.tokens, run.logprobs, plan.kept};
}

}  // namespace testing_eval
}  // namespace xkv

#endif  // XKV_TESTS_INTEGRATION_EVAL_REFERENCE_H_
