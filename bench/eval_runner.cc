#include "bench/eval_runner.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "base/status_macros.h"
#include "bench/eval_metrics.h"
#include "model/importance_collector.h"
#include "model/kv_allocation.h"
#include "model/sampler.h"

namespace xkv {
namespace {

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

}  // namespace

// One sequence being run: its cache, the tokens to feed next, and what came back.
struct EvalRunner::Lane {
  std::unique_ptr<KvCache> cache;
  int64_t position = 0;          // logical position of pending[0] (never the cache length)
  std::vector<int32_t> pending;  // tokens to feed in the next step
  int64_t logit_rows = 1;        // logits wanted for the last rows of pending
  std::vector<float> logits;     // fp32 [logit_rows, vocab] of the last step
  int max_tokens = 0;            // Decode: cap on generated tokens
  bool record = false;           // Decode: keep the logits every token was chosen from
  bool done = false;
  std::vector<int32_t> generated;
  std::vector<float> recorded;  // fp32 [generated, vocab] when record
};

// One method × budget of one query mode: a key-question lane and a fidelity lane.
struct EvalRunner::Variant {
  std::string method = "full";
  double budget = 1.0;
  AllocationReport report;
  Lane key, fid;
  FidelityScore fidelity;
};

std::string_view QueryModeName(QueryMode mode) {
  return mode == QueryMode::kAware ? "aware" : "agnostic";
}

int64_t BudgetTokens(double fraction, int num_layers, int64_t prompt_len, int window) {
  const int64_t prefix = std::max<int64_t>(prompt_len - window, 0);
  const int64_t total = std::llround(fraction * num_layers * static_cast<double>(prompt_len)) -
                        int64_t{num_layers} * window;
  return std::clamp<int64_t>(total, 0, int64_t{num_layers} * prefix);
}

namespace {

bool SameScoring(const ImportanceOptions& a, const ImportanceOptions& b) {
  return a.window == b.window && a.pool_kernel == b.pool_kernel && a.granularity == b.granularity &&
         a.reduce == b.reduce && a.pool == b.pool;
}

absl::StatusOr<double> ParseNumber(absl::string_view key, absl::string_view value) {
  double x = 0;
  if (!absl::SimpleAtod(value, &x)) {
    return absl::InvalidArgumentError(
        absl::StrCat("method parameter ", key, "='", value, "' is not a number"));
  }
  return x;
}

}  // namespace

absl::StatusOr<EvalMethod> ParseEvalMethod(absl::string_view text, const ImportanceOptions& base) {
  std::vector<absl::string_view> parts = absl::StrSplit(text, ':');
  EvalMethod m;
  m.name = std::string(text);
  if (parts[0] == "paper") {
    m.kv.policy = PolicyKind::kXkv;
    m.kv.allocator.kind = AllocatorKind::kPaper;
  } else {
    ASSIGN_OR_RETURN(m.kv.policy, ParsePolicy(parts[0]));
  }
  m.scoring = ScoringFor(m.kv, base);
  bool kernel_set = false;
  for (size_t i = 1; i < parts.size(); ++i) {
    const std::pair<absl::string_view, absl::string_view> kv = absl::StrSplit(parts[i], '=');
    const auto [key, value] = kv;
    if (key == "floor") {
      ASSIGN_OR_RETURN(m.kv.allocator.floor, ParseNumber(key, value));
      RETURN_IF_ERROR(ValidateFloor(m.kv.allocator.floor, "method floor"));
    } else if (key == "cap") {
      ASSIGN_OR_RETURN(m.kv.allocator.cap, ParseNumber(key, value));
      RETURN_IF_ERROR(ValidateCap(m.kv.allocator.cap, "method cap"));
    } else if (key == "window") {
      ASSIGN_OR_RETURN(const double w, ParseNumber(key, value));
      RETURN_IF_ERROR(ValidateWindow(static_cast<int64_t>(w), "method window"));
      m.scoring.window = static_cast<int>(w);
    } else if (key == "pool" && (value == "max" || value == "avg")) {
      m.scoring.pool = value == "max" ? ScorePool::kMax : ScorePool::kAvg;
    } else if (key == "reduce" && (value == "max" || value == "sum")) {
      m.scoring.reduce = value == "max" ? ScoreReduce::kMax : ScoreReduce::kSum;
    } else if (key == "kernel") {
      ASSIGN_OR_RETURN(const double k, ParseNumber(key, value));
      if (!(k >= 1 && k <= 31 && k == std::floor(k) && static_cast<int>(k) % 2 == 1)) {
        return absl::InvalidArgumentError(absl::StrCat("method '", text, "': kernel=", value,
                                                       " must be an odd integer in [1, 31]"));
      }
      m.scoring.pool_kernel = static_cast<int>(k);
      kernel_set = true;
    } else if (key == "vnorm" && (value == "0" || value == "1")) {
      m.value_norm = value == "1";
    } else if (key == "mix" && value == "max") {
      m.mix_window = true;
    } else if (key == "profile") {
      ASSIGN_OR_RETURN(m.kv.profile, ParseProfileMode(value));
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("method '", text, "': unknown parameter '", parts[i],
                       "'; allowed: floor=[0,1], cap=[1,64], window=[", kMinWindow, ",", kMaxWindow,
                       "], pool=max|avg, kernel=1|3|...|31, reduce=max|sum, vnorm=0|1, ",
                       "profile=reconstruct, mix=max"));
    }
  }
  KvSettings check = m.kv;  // the method's own rules (its target is set per budget)
  check.target = KvTarget::Fraction(1.0);
  RETURN_IF_ERROR(ValidateSettings(check));
  RETURN_IF_ERROR(ValidateProfileFor(m.kv.profile, SpecEntry::kEval));
  const bool reconstruct = m.kv.profile.kind == ProfileModeKind::kReconstruct;
  if (m.mix_window && !reconstruct) {
    return absl::InvalidArgumentError(
        absl::StrCat("method '", text, "': mix=max needs profile=reconstruct"));
  }
  if (reconstruct && !m.mix_window && !kernel_set) m.scoring.pool_kernel = 1;
  return m;
}

EvalRunner::EvalRunner(LlamaModel* model, const Tokenizer* tokenizer, EvalOptions options)
    : model_(model), tokenizer_(tokenizer), options_(std::move(options)) {
  for (const EvalMethod& m : options_.methods) {
    const bool reconstruct = m.kv.profile.kind == ProfileModeKind::kReconstruct;
    size_t i = 0;
    while (i < scorings_.size() &&
           !(SameScoring(scorings_[i].options, m.scoring) &&
             scorings_[i].reconstruct == reconstruct && scorings_[i].mix == m.mix_window)) {
      ++i;
    }
    if (i == scorings_.size()) scorings_.push_back({m.scoring, reconstruct, m.mix_window});
    scoring_of_.push_back(static_cast<int>(i));
    max_window_ = std::max(max_window_, m.scoring.window);
  }
}

bool EvalRunner::IsStop(int32_t token) const {
  return std::find(options_.stop_tokens.begin(), options_.stop_tokens.end(), token) !=
         options_.stop_tokens.end();
}

std::string EvalRunner::AnswerText(const std::vector<int32_t>& tokens) const {
  std::string text;
  for (int32_t t : tokens) {
    if (IsStop(t) || tokenizer_->IsControl(t)) break;
    text += tokenizer_->TokenBytes(t);
  }
  return text;
}

absl::Status EvalRunner::CheckPrompt(const EvalPrompt& prompt) const {
  const int64_t w = max_window_;
  if (static_cast<int64_t>(prompt.key_question.size()) < w ||
      static_cast<int64_t>(prompt.fidelity_question.size()) < w || prompt.context.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("eval: prompt ", prompt.id, " has a question shorter than the window ", w));
  }
  const int64_t need =
      static_cast<int64_t>(prompt.context.size()) +
      std::max<int64_t>(prompt.key_question.size() + options_.answer_tokens,
                        prompt.fidelity_question.size() + options_.fidelity_tokens);
  const int64_t ctx = model_->config().context_length;
  if (ctx > 0 && need > ctx) {
    return absl::InvalidArgumentError(absl::StrCat("eval: prompt ", prompt.id, " needs ", need,
                                                   " positions; the model has ", ctx));
  }
  return absl::OkStatus();
}

absl::Status EvalRunner::RunPending(std::vector<Lane*> lanes) {
  std::erase_if(lanes, [](const Lane* l) { return l->pending.empty(); });
  const int64_t vocab = model_->config().vocab_size;
  size_t i = 0;
  while (i < lanes.size()) {
    BatchStep step;
    std::vector<int32_t> tokens;
    std::vector<int64_t> rows;
    size_t j = i;
    for (; j < lanes.size(); ++j) {
      Lane* l = lanes[j];
      const int64_t n = static_cast<int64_t>(l->pending.size());
      if (j > i && static_cast<int64_t>(tokens.size()) + n > options_.max_batch_tokens) break;
      const int64_t base = static_cast<int64_t>(tokens.size());
      step.sequences.push_back({l->cache.get(), n, l->position, false});
      tokens.insert(tokens.end(), l->pending.begin(), l->pending.end());
      for (int64_t r = n - l->logit_rows; r < n; ++r) rows.push_back(base + r);
    }
    ASSIGN_OR_RETURN(std::vector<float> hidden, model_->Embed(tokens));
    RETURN_IF_ERROR(model_->RunLayers(model_->layer_begin(), model_->layer_end(), step,
                                      absl::MakeSpan(hidden)));
    ASSIGN_OR_RETURN(std::vector<float> logits, model_->Logits(hidden, rows));
    int64_t row = 0;
    for (size_t k = i; k < j; ++k) {
      Lane* l = lanes[k];
      l->logits.assign(logits.begin() + row * vocab,
                       logits.begin() + (row + l->logit_rows) * vocab);
      row += l->logit_rows;
      l->position += static_cast<int64_t>(l->pending.size());
      l->pending.clear();
    }
    i = j;
  }
  return absl::OkStatus();
}

absl::Status EvalRunner::Decode(std::vector<Lane*> lanes) {
  const int64_t vocab = model_->config().vocab_size;
  for (Lane* l : lanes) l->done = l->max_tokens <= 0;
  while (true) {
    std::vector<Lane*> active;
    for (Lane* l : lanes) {
      if (l->done) continue;
      const absl::Span<const float> row(l->logits.data() + l->logits.size() - vocab, vocab);
      const int32_t token = Argmax(row);
      if (l->record) l->recorded.insert(l->recorded.end(), row.begin(), row.end());
      l->generated.push_back(token);
      if (IsStop(token) || static_cast<int>(l->generated.size()) >= l->max_tokens) {
        l->done = true;
        continue;
      }
      l->pending = {token};
      l->logit_rows = 1;
      active.push_back(l);
    }
    if (active.empty()) return absl::OkStatus();
    RETURN_IF_ERROR(RunPending(std::move(active)));
  }
}

absl::StatusOr<std::vector<EvalRunner::Variant>> EvalRunner::CompressAll(
    const KvCache& full, absl::Span<const CollectedScores> all_scores, int copies) {
  const ModelConfig& config = model_->config();
  std::vector<Variant> out;
  for (size_t m = 0; m < options_.methods.size(); ++m) {
    const EvalMethod& method = options_.methods[m];
    CollectedScores weighted;
    if (method.value_norm) {
      weighted = all_scores[scoring_of_[m]];
      RETURN_IF_ERROR(WeightByValueNorm(full, &weighted));
    }
    const CollectedScores& scores = method.value_norm ? weighted : all_scores[scoring_of_[m]];
    for (double budget : options_.budgets) {
      KvSettings spec = method.kv;
      spec.target =
          KvTarget::Tokens(BudgetTokens(budget, config.n_layers, scores.prompt_len, scores.window));
      Variant v;
      v.method = method.name;
      v.budget = budget;
      ASSIGN_OR_RETURN(v.key.cache, CompactCopy(full, scores, config, spec, &v.report));
      if (copies > 1) v.fid.cache = std::make_unique<KvCache>(*v.key.cache);
      v.key.position = v.fid.position = scores.prompt_len;
      out.push_back(std::move(v));
    }
  }
  return out;
}

absl::Status EvalRunner::ScoreVariants(std::vector<Variant>& variants, QueryMode mode,
                                       const std::vector<int32_t>& reference,
                                       const std::vector<float>& full_logits) {
  const int64_t vocab = model_->config().vocab_size;
  for (Variant& v : variants) {
    std::vector<float> compressed;
    if (mode == QueryMode::kAware) {  // step 0 came from the full prefill: identical
      compressed.assign(full_logits.begin(), full_logits.begin() + vocab);
    }
    compressed.insert(compressed.end(), v.fid.logits.begin(), v.fid.logits.end());
    ASSIGN_OR_RETURN(v.fidelity, ScoreFidelity(full_logits, compressed, reference, vocab));
    v.fid = Lane();  // release the cache
  }
  return absl::OkStatus();
}

void EvalRunner::AppendRows(const EvalPrompt& prompt, QueryMode mode,
                            std::vector<Variant>& variants, std::vector<EvalRow>& rows) const {
  for (Variant& v : variants) {
    EvalRow r;
    r.prompt_id = prompt.id;
    r.task = prompt.kind;
    r.mode = mode;
    r.target_tokens = prompt.target_tokens;
    r.prompt_tokens = v.report.prompt_len;
    r.depth = prompt.needles[prompt.asked].depth;
    r.method = v.method;
    r.budget = v.budget;
    r.kv_bytes_held = v.report.kv_bytes_held;
    r.kv_bytes_full = v.report.kv_bytes_full;
    r.retention = v.report.average_retention;
    for (const LayerAllocation& a : v.report.layers) r.layer_budgets.push_back(a.kept_prefix);
    r.expected = prompt.expected;
    r.answer = AnswerText(v.key.generated);
    r.correct = ScoreAnswer(r.answer, r.expected);
    r.agreement = v.fidelity.agreement;
    r.kl = v.fidelity.mean_kl;
    r.fidelity_steps = v.fidelity.steps;
    rows.push_back(std::move(r));
  }
}

std::vector<EvalRunner::Lane*> EvalRunner::QueueSecondPass(const EvalPrompt& p,
                                                           const std::vector<int32_t>& ref,
                                                           const std::vector<float>& key_logits,
                                                           std::vector<Variant>& aware,
                                                           std::vector<Variant>& agnostic) {
  std::vector<Lane*> lanes;
  const std::vector<int32_t> forced(ref.begin(), ref.end() - 1);
  for (Variant& v : aware) {  // question already in the cache; first answer logits from the full
    v.key.logits = key_logits;
    v.fid.pending = forced;
    v.fid.logit_rows = static_cast<int64_t>(forced.size());
    lanes.push_back(&v.fid);
  }
  for (Variant& v : agnostic) {  // the question goes on top of the compacted context
    v.key.pending = p.key_question;
    v.fid.pending = p.fidelity_question;
    v.fid.pending.insert(v.fid.pending.end(), forced.begin(), forced.end());
    v.fid.logit_rows = static_cast<int64_t>(ref.size());
    lanes.push_back(&v.key);
    lanes.push_back(&v.fid);
  }
  return lanes;
}

EvalRunner::Variant EvalRunner::FullVariant(int64_t prompt_len, const std::vector<int32_t>& answer,
                                            int fidelity_steps) const {
  const ModelConfig& config = model_->config();
  Variant f;
  f.key.generated = answer;
  f.report.prompt_len = prompt_len;
  f.report.kv_bytes_full = f.report.kv_bytes_held =
      int64_t{config.n_layers} * prompt_len * config.KvBytesPerTokenPerLayer(4);
  f.fidelity = {1.0, 0.0, fidelity_steps};
  return f;
}

absl::StatusOr<std::vector<EvalRow>> EvalRunner::Run(const EvalPrompt& p, PromptTiming* timing) {
  RETURN_IF_ERROR(CheckPrompt(p));
  const auto start = std::chrono::steady_clock::now();
  const ModelConfig& config = model_->config();
  const int64_t vocab = config.vocab_size;
  const int64_t C = p.context.size(), Qk = p.key_question.size(), Qs = p.fidelity_question.size();
  // One collector per distinct window scoring, all observing the same forward passes; the
  // reconstruct scorings share one re-reading of the context (after step 1).
  std::vector<std::unique_ptr<ImportanceCollector>> collectors;
  for (const Scoring& scoring : scorings_) {
    const bool window = !scoring.reconstruct || scoring.mix;
    collectors.push_back(
        window ? std::make_unique<ImportanceCollector>(config, model_->layer_begin(),
                                                       model_->layer_end(), scoring.options)
               : nullptr);
    if (!window) continue;
    RETURN_IF_ERROR(collectors.back()->Expect(0, C));
    RETURN_IF_ERROR(collectors.back()->Expect(1, C + Qk));
    RETURN_IF_ERROR(collectors.back()->Expect(2, C + Qs));
  }
  auto observe = [&collectors](const std::vector<int>& keys) -> LayerObserver {
    std::vector<LayerObserver> all;
    for (auto& c : collectors) {
      if (c != nullptr) all.push_back(c->ObserverFor(keys));
    }
    return [all = std::move(all)](const LayerObservation& obs) -> absl::Status {
      for (const LayerObserver& o : all) RETURN_IF_ERROR(o(obs));
      return absl::OkStatus();
    };
  };
  ReconstructScores reread;
  auto take = [&](int key, int64_t prompt_len) -> absl::StatusOr<std::vector<CollectedScores>> {
    std::vector<CollectedScores> out;
    for (size_t i = 0; i < scorings_.size(); ++i) {
      const Scoring& scoring = scorings_[i];
      if (!scoring.reconstruct) {
        out.push_back(collectors[i]->Take(key));
        continue;
      }
      ImportanceOptions unpooled = scoring.options;
      if (scoring.mix) unpooled.pool_kernel = 1;
      ASSIGN_OR_RETURN(CollectedScores s,
                       ReconstructCollectedScores(reread, prompt_len, config, unpooled));
      if (scoring.mix) RETURN_IF_ERROR(MaxMergeScores(collectors[i]->Take(key), &s));
      out.push_back(std::move(s));
    }
    return out;
  };
  // 1-2: the context, observed; query-agnostic copies.
  Variant full;
  full.key.cache = model_->NewCache();
  BatchStep step;
  step.sequences.push_back({full.key.cache.get(), C, 0, true});
  step.observer = observe({0});
  RETURN_IF_ERROR(model_->Forward(p.context, step).status());
  if (std::any_of(scorings_.begin(), scorings_.end(),
                  [](const Scoring& s) { return s.reconstruct; })) {
    ASSIGN_OR_RETURN(reread, ScoreByReconstruction(model_, full.key.cache.get(), p.context,
                                                   options_.repeat, options_.reconstruct));
  }
  ASSIGN_OR_RETURN(std::vector<CollectedScores> agnostic_scores, take(0, C));
  ASSIGN_OR_RETURN(std::vector<Variant> agnostic,
                   CompressAll(*full.key.cache, agnostic_scores, /*copies=*/2));
  // 3: both questions on copies of the full cache, observed; query-aware copies.
  full.fid.cache = std::make_unique<KvCache>(*full.key.cache);
  step.sequences = {{full.key.cache.get(), Qk, C, true}, {full.fid.cache.get(), Qs, C, true}};
  step.observer = observe({1, 2});
  std::vector<int32_t> tokens = p.key_question;
  tokens.insert(tokens.end(), p.fidelity_question.begin(), p.fidelity_question.end());
  ASSIGN_OR_RETURN(std::vector<float> last, model_->Forward(tokens, step));
  if (timing != nullptr) timing->prefill_s = Seconds(start);
  ASSIGN_OR_RETURN(std::vector<CollectedScores> key_scores, take(1, C + Qk));
  ASSIGN_OR_RETURN(std::vector<Variant> aware,
                   CompressAll(*full.key.cache, key_scores, /*copies=*/1));
  ASSIGN_OR_RETURN(std::vector<CollectedScores> fid_scores, take(2, C + Qs));
  ASSIGN_OR_RETURN(std::vector<Variant> aware_fid,
                   CompressAll(*full.fid.cache, fid_scores, /*copies=*/1));
  for (size_t i = 0; i < aware.size(); ++i) aware[i].fid = std::move(aware_fid[i].key);
  // 4: the full cache's answer and reference continuation.
  const std::vector<float> key_logits(last.begin(), last.begin() + vocab);
  full.key.logits = key_logits;
  full.key.position = C + Qk;
  full.key.max_tokens = options_.answer_tokens;
  full.fid.logits.assign(last.begin() + vocab, last.end());
  full.fid.position = C + Qs;
  full.fid.max_tokens = options_.fidelity_tokens;
  full.fid.record = true;
  RETURN_IF_ERROR(Decode({&full.key, &full.fid}));
  const std::vector<int32_t> ref = full.fid.generated;
  const std::vector<float> ref_logits = std::move(full.fid.recorded);
  full.key.cache.reset();
  full.fid = Lane();
  // 5: agnostic questions and teacher forcing, one batched pass.
  std::vector<Lane*> lanes = QueueSecondPass(p, ref, key_logits, aware, agnostic);
  RETURN_IF_ERROR(RunPending(lanes));
  RETURN_IF_ERROR(ScoreVariants(aware, QueryMode::kAware, ref, ref_logits));
  RETURN_IF_ERROR(ScoreVariants(agnostic, QueryMode::kAgnostic, ref, ref_logits));
  // 6: every compressed cache's answer.
  lanes.clear();
  for (std::vector<Variant>* vs : {&aware, &agnostic}) {
    for (Variant& v : *vs) {
      v.key.max_tokens = options_.answer_tokens;
      lanes.push_back(&v.key);
    }
  }
  RETURN_IF_ERROR(Decode(lanes));
  // Rows: the full reference first (once per mode), then every method × budget.
  std::vector<EvalRow> rows;
  for (QueryMode mode : {QueryMode::kAware, QueryMode::kAgnostic}) {
    std::vector<Variant> reference(1);
    reference[0] = FullVariant(mode == QueryMode::kAware ? C + Qk : C, full.key.generated,
                               static_cast<int>(ref.size()));
    AppendRows(p, mode, reference, rows);
    AppendRows(p, mode, mode == QueryMode::kAware ? aware : agnostic, rows);
  }
  if (timing != nullptr) timing->total_s = Seconds(start);
  return rows;
}

}  // namespace xkv
