#include "bench/layer_sensitivity.h"

#include <algorithm>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "allocator/kv_spec.h"
#include "base/status_macros.h"
#include "bench/eval_metrics.h"
#include "bench/eval_runner.h"
#include "model/kv_allocation.h"

namespace xkv {
namespace {

// Copies of one layer's cache held at once (each a whole prompt's KV): bounds the memory to this
// many prompts' caches while batching their continuation steps.
constexpr int kCopiesPerStep = 8;

struct Feed {
  uint64_t id = 0;
  int64_t position = 0;
};

class Sequences {
 public:
  explicit Sequences(StageEngine* engine) : engine_(engine) {}
  ~Sequences() {
    for (uint64_t id : live_) engine_->ReleaseSequence(id);
  }
  uint64_t New() {
    live_.push_back(next_++);
    return live_.back();
  }
  absl::StatusOr<uint64_t> Copy(uint64_t from) {
    const uint64_t id = New();
    RETURN_IF_ERROR(engine_->CopySequence(from, id));
    return id;
  }
  void Release(uint64_t id) {
    engine_->ReleaseSequence(id);
    std::erase(live_, id);
  }

 private:
  StageEngine* engine_;
  std::vector<uint64_t> live_;
  uint64_t next_ = 1;
};

// Feeds `tokens` to every sequence of `feeds` in one step; returns the logits of each feed's rows
// [first, first + count) (every row when count < 0), [feeds.size() * rows, vocab] (or none when
// !logits).
absl::StatusOr<std::vector<float>> Step(StageEngine* engine, absl::Span<const Feed> feeds,
                                        absl::Span<const int32_t> tokens,
                                        const ImportanceOptions& scoring, bool logits,
                                        int64_t first = 0, int64_t count = -1) {
  EngineStep step;
  std::vector<int32_t> all;
  for (const Feed& f : feeds) {
    step.sequences.push_back({f.id, static_cast<int64_t>(tokens.size()), f.position, false});
    all.insert(all.end(), tokens.begin(), tokens.end());
  }
  RETURN_IF_ERROR(engine->EmbedResident(all));
  RETURN_IF_ERROR(engine->RunLayersResident(step, scoring, nullptr));
  if (!logits) return std::vector<float>();
  const int64_t n = static_cast<int64_t>(tokens.size());
  if (count < 0) count = n - first;
  std::vector<int64_t> rows;
  for (size_t f = 0; f < feeds.size(); ++f) {
    for (int64_t r = first; r < first + count; ++r) rows.push_back(static_cast<int64_t>(f) * n + r);
  }
  return engine->LogitsResident(rows);
}

// One compressed copy of a prompt's cache: only `layer` is cut, each KV head to its `kept` slots.
struct Cut {
  int layer = 0;
  std::vector<std::vector<int32_t>> kept;
};

// The KL of every cut against the full cache: `forced` is teacher-forced on a copy of the prompt's
// cache `full` (C tokens) and on one copy per cut (kCopiesPerStep at a time), and KL(full || cut)
// of the rows [first, first + truth.size()) (which predict `truth`) is added to sum[u] for the
// cut of unit u in [0, units).
absl::Status AddCutKl(StageEngine* engine, Sequences& seqs, uint64_t full, int64_t C, int units,
                      const std::function<absl::StatusOr<Cut>(int)>& cut_of,
                      absl::Span<const int32_t> forced, int64_t first,
                      absl::Span<const int32_t> truth, std::vector<double>& sum) {
  const ImportanceOptions scoring;  // nothing is observed
  const int64_t count = static_cast<int64_t>(truth.size());
  const int64_t vocab = engine->config().vocab_size;
  // The full cache's predictions first (on a copy: the context cache is copied per cut).
  ASSIGN_OR_RETURN(const uint64_t reference, seqs.Copy(full));
  ASSIGN_OR_RETURN(const std::vector<float> full_logits,
                   Step(engine, {{reference, C}}, forced, scoring, true, first, count));
  seqs.Release(reference);
  for (int begin = 0; begin < units; begin += kCopiesPerStep) {
    const int end = std::min(units, begin + kCopiesPerStep);
    std::vector<Feed> feeds;
    for (int u = begin; u < end; ++u) {
      ASSIGN_OR_RETURN(const Cut cut, cut_of(u));
      ASSIGN_OR_RETURN(const uint64_t id, seqs.Copy(full));
      RETURN_IF_ERROR(engine->CompactLayer(id, cut.layer, C, cut.kept));
      feeds.push_back({id, C});
    }
    ASSIGN_OR_RETURN(const std::vector<float> logits,
                     Step(engine, feeds, forced, scoring, true, first, count));
    const size_t per = static_cast<size_t>(count * vocab);
    for (int u = begin; u < end; ++u) {
      const absl::Span<const float> mine(logits.data() + (u - begin) * per, per);
      ASSIGN_OR_RETURN(const FidelityScore f, ScoreFidelity(full_logits, mine, truth, vocab));
      sum[u] += f.mean_kl;
    }
    for (const Feed& f : feeds) seqs.Release(f.id);
  }
  return absl::OkStatus();
}

// Prefills context[0, end) into `id` in steps of at most `step_tokens`.
absl::Status Prefill(StageEngine* engine, uint64_t id, absl::Span<const int32_t> context,
                     int64_t end, int64_t step_tokens, const ImportanceOptions& scoring) {
  for (int64_t begin = 0; begin < end; begin += step_tokens) {
    const int64_t n = std::min(step_tokens, end - begin);
    RETURN_IF_ERROR(
        Step(engine, {{id, begin}}, context.subspan(begin, n), scoring, false).status());
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::vector<double>> MeasureLayerSensitivity(StageEngine* engine,
                                                            absl::Span<const EvalPrompt> prompts,
                                                            const SensitivityOptions& options) {
  const ModelConfig& config = engine->config();
  const int L = config.n_layers;
  if (!(options.fraction > 0.0 && options.fraction < 1.0) || options.fidelity_tokens < 1 ||
      options.max_step_tokens < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "layer sensitivity: fraction ", options.fraction, " must be in (0, 1), fidelity tokens ",
        options.fidelity_tokens, " >= 1 and step tokens ", options.max_step_tokens, " >= 1"));
  }
  if (engine->layer_begin() != 0 || engine->layer_end() != L) {
    return absl::InvalidArgumentError("layer sensitivity: the engine must hold every layer");
  }
  if (prompts.empty()) return absl::InvalidArgumentError("layer sensitivity: no prompts");
  const KvSettings spec;  // policy xkv's defaults: its scoring and selection
  ImportanceOptions base;
  base.window = static_cast<int>(kDefaultWindow);
  const ImportanceOptions scoring = ScoringFor(spec, base);
  const PolicyOptions policy = ToPolicyOptions(spec);
  const int64_t W = scoring.window;
  for (const EvalPrompt& p : prompts) {
    if (static_cast<int64_t>(p.context.size()) <= W || p.continuation.size() < 2) {
      return absl::InvalidArgumentError(absl::StrCat(
          "layer sensitivity: prompt ", p.id, " has ", p.context.size(), " context tokens and ",
          p.continuation.size(), " continuation tokens; it needs more than ", W,
          " (the window) and at least 2"));
    }
  }
  std::vector<double> sum(L, 0.0);
  for (size_t i = 0; i < prompts.size(); ++i) {
    const EvalPrompt& p = prompts[i];
    const int64_t C = p.context.size();
    const int64_t S = std::min<int64_t>(options.fidelity_tokens, p.continuation.size() - 1);
    const absl::Span<const int32_t> context(p.context), R(p.continuation);
    const absl::Span<const int32_t> forced = R.subspan(0, S), truth = R.subspan(1, S);
    Sequences seqs(engine);
    const uint64_t full = seqs.New();
    RETURN_IF_ERROR(Prefill(engine, full, context, C - W, options.max_step_tokens, scoring));
    RETURN_IF_ERROR(engine->EmbedResident(context.subspan(C - W)));
    EngineStep observe;
    observe.sequences.push_back({full, W, C - W, true});
    std::vector<EngineObservation> obs;
    RETURN_IF_ERROR(engine->RunLayersResident(observe, scoring, &obs));
    if (obs.empty() || !obs[0].scores.has_value()) {
      return absl::InternalError("layer sensitivity: the engine returned no scores");
    }
    const CollectedScores scores = std::move(*obs[0].scores);
    const int64_t budget = BudgetTokens(options.fraction, 1, C, static_cast<int>(W));
    RETURN_IF_ERROR(AddCutKl(
        engine, seqs, full, C, L,
        [&](int l) -> absl::StatusOr<Cut> {
          ASSIGN_OR_RETURN(std::vector<std::vector<int32_t>> kept,
                           KeptSlots(scores, l, budget, policy));
          return Cut{l, std::move(kept)};
        },
        forced, 0, truth, sum));
    if (options.progress) options.progress(static_cast<int>(i) + 1, prompts.size());
  }
  for (double& s : sum) s /= static_cast<double>(prompts.size());
  return sum;
}

absl::StatusOr<std::vector<double>> MeasureHeadSensitivity(
    StageEngine* engine, absl::Span<const EvalPrompt> prompts,
    absl::Span<const std::vector<int32_t>> answers, const HeadSensitivityOptions& options) {
  const ModelConfig& config = engine->config();
  const int L = config.n_layers, H = config.n_kv_heads;
  if (!(options.fraction > 0.0 && options.fraction < 1.0) || options.sinks < 0 ||
      options.max_step_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("head sensitivity: fraction ", options.fraction, " must be in (0, 1), sinks ",
                     options.sinks, " >= 0 and step tokens ", options.max_step_tokens, " >= 1"));
  }
  if (engine->layer_begin() != 0 || engine->layer_end() != L || !engine->supports_per_head_kv()) {
    return absl::InvalidArgumentError(
        "head sensitivity: the engine must hold every layer and keep per-head counts");
  }
  if (prompts.empty() || answers.size() != prompts.size()) {
    return absl::InvalidArgumentError(absl::StrCat("head sensitivity: ", prompts.size(),
                                                   " prompts and ", answers.size(), " answers"));
  }
  const ImportanceOptions scoring;  // nothing is observed
  std::vector<double> sum(static_cast<size_t>(L) * H, 0.0);
  for (size_t i = 0; i < prompts.size(); ++i) {
    const EvalPrompt& p = prompts[i];
    const int64_t C = p.context.size();
    const int64_t kept = std::max<int64_t>(
        options.sinks + 1, static_cast<int64_t>(std::llround(options.fraction * C)));
    if (C <= kept || answers[i].empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "head sensitivity: prompt ", p.id, " has ", C, " context tokens and ", answers[i].size(),
          " answer tokens; it needs more than ", kept, " and at least 1"));
    }
    std::vector<int32_t> forced = p.question;
    forced.insert(forced.end(), p.suffix.begin(), p.suffix.end());
    const int64_t first = static_cast<int64_t>(forced.size()) - 1;  // predicts answer[0]
    if (first < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("head sensitivity: prompt ", p.id, " has no question or answer prefix"));
    }
    forced.insert(forced.end(), answers[i].begin(), answers[i].end() - 1);
    Sequences seqs(engine);
    const uint64_t full = seqs.New();
    RETURN_IF_ERROR(Prefill(engine, full, p.context, C, options.max_step_tokens, scoring));
    std::vector<int32_t> all(C), streaming;
    for (int64_t t = 0; t < C; ++t) all[t] = static_cast<int32_t>(t);
    for (int64_t t = 0; t < options.sinks; ++t) streaming.push_back(static_cast<int32_t>(t));
    for (int64_t t = C - (kept - options.sinks); t < C; ++t) {
      streaming.push_back(static_cast<int32_t>(t));
    }
    RETURN_IF_ERROR(AddCutKl(
        engine, seqs, full, C, L * H,
        [&](int u) -> absl::StatusOr<Cut> {
          Cut cut{u / H, std::vector<std::vector<int32_t>>(H, all)};
          cut.kept[u % H] = streaming;
          return cut;
        },
        forced, first, answers[i], sum));
    if (options.progress) options.progress(static_cast<int>(i) + 1, prompts.size());
  }
  for (double& s : sum) s /= static_cast<double>(prompts.size());
  return sum;
}

}  // namespace xkv
