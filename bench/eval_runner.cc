#include "bench/eval_runner.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <thread>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "base/status_macros.h"
#include "bench/eval_runner_lanes.h"
#include "model/sampler.h"

namespace xkv {
namespace {

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

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

// A whole-number parameter; `range` names the allowed values in the error.
absl::StatusOr<int64_t> ParseWhole(absl::string_view key, absl::string_view value,
                                   absl::string_view range) {
  ASSIGN_OR_RETURN(const double x, ParseNumber(key, value));
  if (x != std::floor(x) || std::abs(x) > 1e9) {
    return absl::InvalidArgumentError(
        absl::StrCat("method ", key, " is ", value, "; it must be a whole number in ", range));
  }
  return static_cast<int64_t>(x);
}

// Runs fn(i) for i in [0, n) on up to `threads` threads; the first error wins.
absl::Status ParallelFor(int n, int threads, const std::function<absl::Status(int)>& fn) {
  std::atomic<int> next{0};
  std::vector<absl::Status> errors(std::max(threads, 1));
  auto work = [&](int t) {
    for (int i = next++; i < n; i = next++) {
      absl::Status s = fn(i);
      if (!s.ok() && errors[t].ok()) errors[t] = s;
    }
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < threads && t < n; ++t) pool.emplace_back(work, t);
  work(0);
  for (std::thread& th : pool) th.join();
  for (const absl::Status& s : errors) RETURN_IF_ERROR(s);
  return absl::OkStatus();
}

// Named baselines that are parameters of another method: AdaKV(SnapKV) (SnapKV's scores, each
// layer's budget split over its heads with floor alpha = 0.2), and every baseline with kvpress's
// settings (window 64, pooling kernel 5; kvpress's AdaKV wraps its SnapKV; streaming's 4 sinks are
// xkv's already).
constexpr std::pair<absl::string_view, absl::string_view> kMethodAliases[] = {
    {"adakv", "snapkv:per_head=1:floor=0.2"},
    {"snapkv@kvpress", "snapkv:window=64:kernel=5"},
    {"pyramidkv@kvpress", "pyramidkv:window=64:kernel=5"},
    {"adakv@kvpress", "snapkv:per_head=1:floor=0.2:window=64:kernel=5"},
    {"streaming@kvpress", "streaming"},
};

}  // namespace

std::string_view QueryModeName(QueryMode mode) {
  switch (mode) {
    case QueryMode::kAware:
      return "aware";
    case QueryMode::kQuestion:
      return "question";
    case QueryMode::kAgnostic:
      break;
  }
  return "agnostic";
}

int64_t BudgetTokens(double fraction, int num_layers, int64_t prompt_len, int window) {
  const int64_t prefix = std::max<int64_t>(prompt_len - window, 0);
  const int64_t total = std::llround(fraction * num_layers * static_cast<double>(prompt_len)) -
                        int64_t{num_layers} * window;
  return std::clamp<int64_t>(total, 0, int64_t{num_layers} * prefix);
}

absl::StatusOr<EvalMethod> ParseEvalMethod(absl::string_view text, const ImportanceOptions& base) {
  std::string expanded(text);
  for (const auto& [alias, params] : kMethodAliases) {
    if (text == alias || absl::StartsWith(text, absl::StrCat(alias, ":"))) {
      expanded = absl::StrCat(params, text.substr(alias.size()));
    }
  }
  std::vector<absl::string_view> parts = absl::StrSplit(expanded, ':');
  EvalMethod m;
  m.name = std::string(text);
  if (parts[0] == "paper") {
    m.kv.policy = PolicyKind::kXkv;
    m.kv.allocator.kind = AllocatorKind::kPaper;
  } else if (absl::StatusOr<PolicyKind> policy = ParsePolicy(parts[0]); policy.ok()) {
    m.kv.policy = *policy;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown method '", parts[0], "'; allowed: full, streaming, snapkv, pyramidkv, adakv, ",
        "paper, xkv, and snapkv@kvpress, pyramidkv@kvpress, adakv@kvpress, streaming@kvpress ",
        "(kvpress's settings)"));
  }
  // No allocator named: the default rule picks it once the calibration is known (ApplyCalibration;
  // global without head weights). Global and heads score alike (ScoringFor).
  m.kv.allocator.kind_by_default =
      m.kv.policy == PolicyKind::kXkv && m.kv.allocator.kind == AllocatorKind::kGlobal;
  m.kv.allocator.floor_by_default = m.kv.allocator.kind_by_default;
  // The allocator and the profile first: they decide the scoring (ScoringFor, the service's rule
  // too) that the other parameters adjust.
  for (size_t i = 1; i < parts.size(); ++i) {
    if (absl::StartsWith(parts[i], "allocator=") && m.kv.policy == PolicyKind::kXkv) {
      ASSIGN_OR_RETURN(m.kv.allocator.kind, ParseAllocator(parts[i].substr(10)));
      m.kv.allocator.kind_by_default = m.kv.allocator.floor_by_default = false;
      m.kv.allocator.floor = DefaultFloor(m.kv.allocator.kind);  // floor= below overrides it
    } else if (absl::StartsWith(parts[i], "profile=")) {
      ASSIGN_OR_RETURN(m.kv.profile, ParseProfileMode(parts[i].substr(8)));
    }
  }
  m.scoring = ScoringFor(m.kv, base);
  bool kernel_set = false;
  for (size_t i = 1; i < parts.size(); ++i) {
    const std::pair<absl::string_view, absl::string_view> kv = absl::StrSplit(parts[i], '=');
    const auto [key, value] = kv;
    if (key == "floor") {
      ASSIGN_OR_RETURN(m.kv.allocator.floor, ParseNumber(key, value));
      RETURN_IF_ERROR(ValidateFloor(m.kv.allocator.floor, "method floor"));
      m.kv.allocator.floor_by_default = false;
    } else if (key == "hpow") {
      ASSIGN_OR_RETURN(m.kv.allocator.head_power, ParseNumber(key, value));
    } else if (key == "cap") {
      ASSIGN_OR_RETURN(m.kv.allocator.cap, ParseNumber(key, value));
      RETURN_IF_ERROR(ValidateCap(m.kv.allocator.cap, "method cap"));
    } else if (key == "window") {
      ASSIGN_OR_RETURN(
          const int64_t w,
          ParseWhole(key, value, absl::StrCat("[", kMinWindow, ", ", kMaxWindow, "]")));
      RETURN_IF_ERROR(ValidateWindow(w, "method window"));
      m.scoring.window = static_cast<int>(w);
    } else if (key == "recent") {
      ASSIGN_OR_RETURN(m.kv.allocator.recent, ParseNumber(key, value));
      RETURN_IF_ERROR(ValidateRecent(m.kv.allocator.recent, "method recent"));
    } else if (key == "sinks") {
      ASSIGN_OR_RETURN(const int64_t n,
                       ParseWhole(key, value, absl::StrCat("[0, ", kMaxSinkTokens, "]")));
      RETURN_IF_ERROR(ValidateSinkTokens(n, "method sinks"));
      m.kv.sink_tokens = static_cast<int>(n);
    } else if ((key == "allocator" && m.kv.policy == PolicyKind::kXkv) || key == "profile") {
      continue;  // above
    } else if (key == "pool" && (value == "max" || value == "avg")) {
      m.scoring.pool = value == "max" ? ScorePool::kMax : ScorePool::kAvg;
    } else if (key == "reduce" && (value == "max" || value == "sum")) {
      m.scoring.reduce = value == "max" ? ScoreReduce::kMax : ScoreReduce::kSum;
    } else if (key == "kernel") {
      ASSIGN_OR_RETURN(const int64_t k,
                       ParseWhole(key, value, absl::StrCat("[1, ", kMaxPoolKernel, "]")));
      RETURN_IF_ERROR(ValidatePoolKernel(k, "method kernel"));
      m.scoring.pool_kernel = static_cast<int>(k);
      kernel_set = true;
    } else if (key == "vnorm" && (value == "0" || value == "1")) {
      m.value_norm = value == "1";
    } else if (key == "mix" && value == "max") {
      m.mix_window = true;
    } else if (key == "per_head") {
      ASSIGN_OR_RETURN(m.kv.allocator.per_head, ParsePerHead(value));
    } else if (key == "calib" && (value == "0" || value == "1")) {
      m.calibration = value == "1";
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "method '", text, "': unknown parameter '", parts[i],
          "'; allowed: floor=[0,1], cap=[1,64], window=[", kMinWindow, ",", kMaxWindow,
          "], sinks=[0,", kMaxSinkTokens,
          "], recent=[0,1] (xkv), pool=max|avg, kernel=1|3|...|63, reduce=max|sum, vnorm=0|1, ",
          "profile=reconstruct, mix=max, allocator=global|paper|heads, per_head=0|1, calib=0|1, "
          "hpow=[0.25,4] (allocator heads) (xkv)"));
    }
  }
  KvSettings check = m.kv;  // the method's own rules (its target is set per budget)
  check.target = KvTarget::Fraction(1.0);
  RETURN_IF_ERROR(ValidateSettings(check));
  const bool reconstruct = m.kv.profile.kind == ProfileModeKind::kReconstruct;
  if (m.mix_window && !reconstruct) {
    return absl::InvalidArgumentError(
        absl::StrCat("method '", text, "': mix=max needs profile=reconstruct"));
  }
  // Ranked by the re-reading scores alone (no window part, which the service always has): they
  // are not pooled unless kernel= says so.
  if (reconstruct && !m.mix_window && !kernel_set) m.scoring.pool_kernel = kRereadPoolKernel;
  return m;
}

absl::Status ApplyCalibration(const CalibrationWeights& weights, std::vector<EvalMethod>* methods) {
  for (EvalMethod& m : *methods) {
    const bool xkv = m.kv.policy == PolicyKind::kXkv;
    if (xkv && m.kv.allocator.kind_by_default) {
      // The default rule at a size target (every eval budget is one), as serve and generate
      // apply it; calib=1 asks for the layer weights, which the global allocator takes.
      KvSettings sized = m.kv;
      sized.target = KvTarget::Fraction(1.0);
      if (m.calibration != true) sized.allocator.head_weights = weights.heads;
      ResolveDefaultAllocator(sized);
      m.kv.allocator.kind = sized.allocator.kind;
      m.kv.allocator.floor = sized.allocator.floor;
    }
    if (xkv && m.kv.allocator.kind == AllocatorKind::kHeads) {
      if (weights.heads.empty()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "method '", m.name, "': allocator=heads needs --calibration FILE with head weights ",
            "(xkv calibrate --heads 1)"));
      }
      m.kv.allocator.head_weights = weights.heads;
    }
    const bool takes = xkv && m.kv.allocator.kind == AllocatorKind::kGlobal;
    if (m.calibration == true && (weights.layers.empty() || !takes)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "method '", m.name, "': calib=1 needs --calibration FILE and policy xkv with allocator ",
          "global (the paper and heads allocators and the baselines take no layer weights)"));
    }
    if (takes && m.calibration.value_or(true)) m.kv.allocator.layer_weights = weights.layers;
  }
  return absl::OkStatus();
}

EvalRunner::EvalRunner(StageEngine* engine, const Tokenizer* tokenizer, EvalOptions options)
    : engine_(engine), tokenizer_(tokenizer), options_(std::move(options)) {
  for (const EvalMethod& m : options_.methods) {
    size_t i = 0;
    while (i < scorings_.size() && !SameScoring(scorings_[i], m.scoring)) ++i;
    if (i == scorings_.size()) scorings_.push_back(m.scoring);
    scoring_of_.push_back(static_cast<int>(i));
    max_window_ = std::max(max_window_, m.scoring.window);
    reconstructs_ = reconstructs_ || m.kv.profile.kind == ProfileModeKind::kReconstruct;
  }
  if (scorings_.empty()) scorings_.push_back(ImportanceOptions{});  // full only: never observed
  max_window_ = std::max(max_window_, 1);
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
  if (prompt.question.empty() || static_cast<int64_t>(prompt.context.size()) <= w) {
    return absl::InvalidArgumentError(
        absl::StrCat("eval: prompt ", prompt.id, " has ", prompt.context.size(),
                     " context tokens and ", prompt.question.size(),
                     " question tokens; it needs more context tokens than the observation window ",
                     w, " and a question"));
  }
  const int64_t need =
      static_cast<int64_t>(prompt.context.size()) +
      std::max<int64_t>(
          prompt.question.size() + prompt.suffix.size() + options_.answer_tokens,
          std::min<int64_t>(prompt.continuation.size(), w + options_.fidelity_tokens));
  const int64_t ctx = engine_->config().context_length;
  if (ctx > 0 && need > ctx) {
    return absl::InvalidArgumentError(absl::StrCat("eval: prompt ", prompt.id, " needs ", need,
                                                   " positions; the model has ", ctx));
  }
  return absl::OkStatus();
}

void EvalRunner::Release(Lane& lane) {
  if (lane.id != 0) engine_->ReleaseSequence(lane.id);
  lane.id = 0;
}

absl::Status EvalRunner::PrefillUnobserved(Lane& lane, absl::Span<const int32_t> tokens) {
  const int64_t n = tokens.size();
  if (lane.id == 0) lane.id = NewSequence();
  for (int64_t begin = 0; begin < n;) {
    const int64_t len = std::min(options_.max_step_tokens, n - begin);
    lane.pending.assign(tokens.begin() + begin, tokens.begin() + begin + len);
    lane.logit_rows = 0;
    RETURN_IF_ERROR(RunPending({&lane}));
    begin += len;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<float>> EvalRunner::Prefill(Lane& lane, absl::Span<const int32_t> tokens,
                                                       std::vector<CollectedScores>* scores) {
  const int64_t n = tokens.size(), w = std::min<int64_t>(max_window_, n);
  const int64_t vocab = engine_->config().vocab_size;
  RETURN_IF_ERROR(PrefillUnobserved(lane, tokens.subspan(0, n - w)));
  const absl::Span<const int32_t> window = tokens.subspan(n - w);
  scores->clear();
  for (size_t s = 0; s < scorings_.size(); ++s) {
    const bool last = s + 1 == scorings_.size();
    RETURN_IF_ERROR(engine_->EmbedResident(window));
    EngineStep step;
    step.scores_only = !last;
    step.sequences.push_back({lane.id, w, lane.position, true});
    std::vector<EngineObservation> obs;
    RETURN_IF_ERROR(engine_->RunLayersResident(step, scorings_[s], &obs));
    if (!obs[0].scores.has_value()) {
      return absl::InternalError("eval: the engine returned no scores for an observed step");
    }
    scores->push_back(std::move(*obs[0].scores));
  }
  lane.position += w;
  const int64_t last_row = w - 1;
  ASSIGN_OR_RETURN(std::vector<float> logits, engine_->LogitsResident({&last_row, 1}));
  if (static_cast<int64_t>(logits.size()) != vocab) {
    return absl::InternalError("eval: the engine returned a logits row of the wrong size");
  }
  return logits;
}

absl::Status EvalRunner::RunPending(std::vector<Lane*> lanes) {
  std::erase_if(lanes, [](const Lane* l) { return l->pending.empty(); });
  const int64_t vocab = engine_->config().vocab_size;
  size_t i = 0;
  while (i < lanes.size()) {
    EngineStep step;
    std::vector<int32_t> tokens;
    std::vector<int64_t> rows;
    size_t j = i;
    for (; j < lanes.size(); ++j) {
      Lane* l = lanes[j];
      const int64_t n = static_cast<int64_t>(l->pending.size());
      if (j > i &&
          (static_cast<int64_t>(tokens.size()) + n > options_.max_step_tokens ||
           static_cast<int>(j - i) >= options_.max_step_sequences ||
           static_cast<int64_t>(rows.size()) + l->logit_rows > options_.max_step_logit_rows)) {
        break;
      }
      if (l->id == 0) l->id = NewSequence();
      const int64_t base = static_cast<int64_t>(tokens.size());
      step.sequences.push_back({l->id, n, l->position, false});
      tokens.insert(tokens.end(), l->pending.begin(), l->pending.end());
      for (int64_t r = n - l->logit_rows; r < n; ++r) rows.push_back(base + r);
    }
    RETURN_IF_ERROR(engine_->EmbedResident(tokens));
    RETURN_IF_ERROR(engine_->RunLayersResident(step, scorings_[0], nullptr));
    std::vector<float> logits;
    if (!rows.empty()) {
      ASSIGN_OR_RETURN(logits, engine_->LogitsResident(rows));
    }
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
  const int64_t vocab = engine_->config().vocab_size;
  for (Lane* l : lanes) l->done = l->max_tokens <= 0;
  while (true) {
    std::vector<Lane*> active;
    for (Lane* l : lanes) {
      if (l->done) continue;
      const absl::Span<const float> row(l->logits.data() + l->logits.size() - vocab, vocab);
      const int32_t token = Argmax(row);
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

absl::StatusOr<EvalRunner::Lane> EvalRunner::CompactCopy(const Lane& from,
                                                         const CollectedScores& scores,
                                                         const KvSettings& spec,
                                                         AllocationReport* report) {
  Lane copy;
  copy.id = NewSequence();
  copy.position = from.position;
  RETURN_IF_ERROR(engine_->CopySequence(from.id, copy.id));
  absl::StatusOr<AllocationPlan> plan = PlanAllocation(scores, engine_->config(), spec);
  absl::Status st = plan.status();
  for (int l = engine_->layer_begin(); st.ok() && plan->compress && l < engine_->layer_end(); ++l) {
    st = engine_->CompactLayer(copy.id, l, scores.prompt_len, plan->kept[l - plan->layer_begin]);
  }
  if (!st.ok()) {
    Release(copy);
    return st;
  }
  const int64_t per_token = engine_->kv_bytes_per_token();
  *report = MakeReport(
      *plan,
      [&](int l) {
        const int64_t tokens = engine_->CacheLength(copy.id, l);
        if (!plan->compress) return std::pair<int64_t, int64_t>(tokens, tokens * per_token);
        // Right after compaction each KV head holds exactly its kept rows (per-head budgets:
        // different counts), each costing per_token / n_kv_heads.
        int64_t rows = 0;
        for (const auto& head : plan->kept[l - plan->layer_begin]) rows += head.size();
        return std::pair<int64_t, int64_t>(tokens,
                                           rows * (per_token / engine_->config().n_kv_heads));
      },
      per_token);
  return copy;
}

absl::StatusOr<CollectedScores> EvalRunner::MethodScores(const EvalMethod& method, const Lane& from,
                                                         const CollectedScores& window) const {
  CollectedScores scores = window;
  if (method.kv.profile.kind == ProfileModeKind::kReconstruct) {
    if (!reread_.has_value()) return absl::InternalError("eval: no re-reading scores");
    ImportanceOptions unpooled = method.scoring;
    if (method.mix_window) unpooled.pool_kernel = kRereadPoolKernel;
    ASSIGN_OR_RETURN(scores, ReconstructCollectedScores(*reread_, window.prompt_len,
                                                        engine_->config(), unpooled));
    if (method.mix_window) RETURN_IF_ERROR(MaxMergeScores(window, &scores));
  }
  if (method.value_norm) {
    std::unique_ptr<KvCache> cache = engine_->CacheCopy(from.id);
    if (cache == nullptr) return absl::InternalError("eval: no cache to weigh by ||v||");
    RETURN_IF_ERROR(WeightByValueNorm(*cache, &scores));
  }
  return scores;
}

absl::StatusOr<std::vector<EvalRunner::Variant>> EvalRunner::CompressAll(
    const Lane& from, absl::Span<const CollectedScores> all_scores, bool with_fidelity) {
  const ModelConfig& config = engine_->config();
  std::vector<Variant> out;
  for (size_t m = 0; m < options_.methods.size(); ++m) {
    const EvalMethod& method = options_.methods[m];
    ASSIGN_OR_RETURN(const CollectedScores scores,
                     MethodScores(method, from, all_scores[scoring_of_[m]]));
    for (double budget : options_.budgets) {
      KvSettings spec = method.kv;
      spec.target =
          KvTarget::Tokens(BudgetTokens(budget, config.n_layers, scores.prompt_len, scores.window));
      Variant& v = out.emplace_back();
      v.method = method.name;
      v.budget = budget;
      absl::StatusOr<Lane> key = CompactCopy(from, scores, spec, &v.report);
      absl::Status st = key.status();
      if (st.ok()) v.key = *std::move(key);
      if (st.ok() && with_fidelity) {
        v.fid.position = v.key.position;
        const uint64_t id = NewSequence();
        st = engine_->CopySequence(v.key.id, id);
        if (st.ok()) v.fid.id = id;
      }
      if (!st.ok()) {  // the caller never sees these sequences: release them here
        for (Variant& done : out) {
          Release(done.key);
          Release(done.fid);
        }
        return st;
      }
    }
  }
  return out;
}

absl::StatusOr<std::vector<EvalRow>> EvalRunner::Run(const EvalPrompt& p, PromptTiming* timing) {
  RETURN_IF_ERROR(CheckPrompt(p));
  const auto start = std::chrono::steady_clock::now();
  const int64_t vocab = engine_->config().vocab_size;
  const int64_t C = p.context.size(), Q = p.question.size(), W = max_window_;
  const int64_t S =
      std::min<int64_t>(options_.fidelity_tokens, static_cast<int64_t>(p.continuation.size()) - W);
  const bool fidelity = S >= 1;
  const absl::Span<const int32_t> R(p.continuation);
  auto wants = [this](QueryMode m) {
    return std::count(options_.modes.begin(), options_.modes.end(), m) > 0;
  };
  const bool want_aware = wants(QueryMode::kAware), want_question = wants(QueryMode::kQuestion),
             want_agnostic = wants(QueryMode::kAgnostic);
  std::vector<int32_t> prompt_tail = p.question;  // everything after the context
  prompt_tail.insert(prompt_tail.end(), p.suffix.begin(), p.suffix.end());
  Lane base, key, question, fid;
  // Per mode: the question lanes of every method x budget. fid_aware: the fidelity lanes
  // compressed after context + R[0, W), shared by the aware and question modes.
  std::vector<Variant> aware, in_question, agnostic, fid_aware;
  std::vector<std::vector<Variant>*> all = {&aware, &in_question, &agnostic, &fid_aware};
  auto release_all = [&] {
    for (Lane* l : {&base, &key, &question, &fid}) Release(*l);
    for (std::vector<Variant>* vs : all) {
      for (Variant& v : *vs) {
        Release(v.key);
        Release(v.fid);
      }
    }
  };
  auto run = [&]() -> absl::StatusOr<std::vector<EvalRow>> {
    // 1-2: the shared prefills, observed. `base` first holds the context but its last W tokens;
    // every lane that is compressed (re-)runs them, so its observation window is the last W tokens
    // of what it compresses (SnapKV's and kvpress's window), the context's tail included when the
    // question (or the prompt's tail) is shorter than W.
    std::vector<CollectedScores> agn_scores, key_scores, q_scores, fid_scores;
    const absl::Span<const int32_t> context(p.context), context_tail = context.subspan(C - W);
    RETURN_IF_ERROR(PrefillUnobserved(base, context.subspan(0, C - W)));
    auto copy_of = [&](const Lane& from, Lane& lane) {
      lane.id = NewSequence();
      lane.position = from.position;
      return engine_->CopySequence(from.id, lane.id);
    };
    auto after_context = [&](absl::Span<const int32_t> tail) {  // context_tail + tail
      std::vector<int32_t> t(context_tail.begin(), context_tail.end());
      t.insert(t.end(), tail.begin(), tail.end());
      return t;
    };
    RETURN_IF_ERROR(copy_of(base, key));
    if (want_question) RETURN_IF_ERROR(copy_of(base, question));
    RETURN_IF_ERROR(Prefill(base, context_tail, &agn_scores).status());
    reread_.reset();
    if (reconstructs_) {  // one re-reading of the context, shared by every such method and mode
      ASSIGN_OR_RETURN(reread_, ScoreByReconstruction(engine_, base.id, p.context, options_.repeat,
                                                      options_.reconstruct));
    }
    ASSIGN_OR_RETURN(std::vector<float> key_logits,
                     Prefill(key, after_context(prompt_tail), &key_scores));
    std::vector<float> q_logits;
    if (want_question) {
      ASSIGN_OR_RETURN(q_logits, Prefill(question, after_context(p.question), &q_scores));
    }
    std::vector<float> full_fid;  // the full cache's S predictions of R[W, W + S)
    if (fidelity) {
      RETURN_IF_ERROR(copy_of(base, fid));
      ASSIGN_OR_RETURN(full_fid, Prefill(fid, R.subspan(0, W), &fid_scores));
    }
    if (timing != nullptr) timing->prefill_s = Seconds(start);
    // 3-4: the compressed variants.
    if (want_agnostic) {
      ASSIGN_OR_RETURN(agnostic, CompressAll(base, agn_scores, fidelity));
    }
    Release(base);
    if (want_aware) {
      ASSIGN_OR_RETURN(aware, CompressAll(key, key_scores, false));
    }
    if (want_question) {
      ASSIGN_OR_RETURN(in_question, CompressAll(question, q_scores, false));
      Release(question);
    }
    if (fidelity && (want_aware || want_question)) {
      ASSIGN_OR_RETURN(fid_aware, CompressAll(fid, fid_scores, false));
    }
    std::vector<Lane*> lanes;
    const std::vector<int32_t> forced_tail(R.begin() + W,
                                           R.begin() + W + std::max<int64_t>(S - 1, 0));
    if (fidelity) {
      fid.pending = forced_tail;
      fid.logit_rows = S - 1;
      lanes.push_back(&fid);
    }
    for (Variant& v : aware) v.key.logits = key_logits;  // the full prefill's: same prompt
    for (Variant& v : in_question) {  // the template tail and answer prefix come after
      if (p.suffix.empty()) {
        v.key.logits = q_logits;
      } else {
        v.key.pending = p.suffix;
        lanes.push_back(&v.key);
      }
    }
    for (Variant& v : fid_aware) {  // these lanes live in .key
      v.key.pending = forced_tail;
      v.key.logit_rows = S - 1;
      lanes.push_back(&v.key);
    }
    for (Variant& v : agnostic) {
      v.key.pending = prompt_tail;
      lanes.push_back(&v.key);
      if (!fidelity) continue;
      v.fid.pending.assign(R.begin(), R.begin() + W + S - 1);
      v.fid.logit_rows = S;
      lanes.push_back(&v.fid);
    }
    RETURN_IF_ERROR(RunPending(lanes));
    if (fidelity) {
      full_fid.insert(full_fid.end(), fid.logits.begin(), fid.logits.end());
      const absl::Span<const int32_t> truth = R.subspan(W, S);
      std::vector<std::pair<Variant*, Lane*>> scored;  // whose fidelity, from which lane
      for (Variant& v : fid_aware) scored.push_back({&v, &v.key});
      for (Variant& v : agnostic) scored.push_back({&v, &v.fid});
      RETURN_IF_ERROR(ParallelFor(
          static_cast<int>(scored.size()), options_.threads, [&](int i) -> absl::Status {
            auto [v, lane] = scored[i];
            std::vector<float> comp;
            if (lane->logit_rows == S - 1) {  // compressed after R[0, W): step 0 is the full's
              comp.assign(full_fid.begin(), full_fid.begin() + vocab);
            }
            comp.insert(comp.end(), lane->logits.begin(), lane->logits.end());
            ASSIGN_OR_RETURN(v->fidelity, ScoreFidelity(full_fid, comp, truth, vocab));
            lane->logits.clear();
            return absl::OkStatus();
          }));
      for (auto [v, lane] : scored) Release(*lane);  // the engine is not thread-safe
      Release(fid);
      for (std::vector<Variant>* vs : {&aware, &in_question}) {
        for (size_t i = 0; i < vs->size(); ++i) (*vs)[i].fidelity = fid_aware[i].fidelity;
      }
    }
    // 5: every cache's answer.
    key.logits = std::move(key_logits);
    lanes = {&key};
    for (std::vector<Variant>* vs : {&aware, &in_question, &agnostic}) {
      for (Variant& v : *vs) lanes.push_back(&v.key);
    }
    for (Lane* l : lanes) l->max_tokens = options_.answer_tokens;
    RETURN_IF_ERROR(Decode(lanes));
    // Rows: the full reference first (once per mode), then every method x budget.
    std::optional<FidelityScore> full_score;
    if (fidelity) {
      ASSIGN_OR_RETURN(full_score, ScoreFidelity(full_fid, full_fid, R.subspan(W, S), vocab));
    }
    const int64_t per_token = engine_->kv_bytes_per_token();
    const int L = engine_->config().n_layers;
    std::vector<EvalRow> rows;
    for (QueryMode mode : options_.modes) {
      std::vector<const Variant*> vs;
      Variant full;
      full.key.generated = key.generated;
      full.report.prompt_len = mode == QueryMode::kAware      ? C + Q + p.suffix.size()
                               : mode == QueryMode::kQuestion ? C + Q
                                                              : C;
      full.report.kv_bytes_full = full.report.kv_bytes_held =
          L * full.report.prompt_len * per_token;
      full.fidelity = full_score;
      vs.push_back(&full);
      const std::vector<Variant>& mine = mode == QueryMode::kAware      ? aware
                                         : mode == QueryMode::kQuestion ? in_question
                                                                        : agnostic;
      for (const Variant& v : mine) vs.push_back(&v);
      for (const Variant* v : vs) {
        EvalRow r;
        r.prompt_id = p.id;
        r.task = p.task;
        r.mode = mode;
        r.target_tokens = p.target_tokens;
        r.prompt_tokens = v->report.prompt_len;
        r.depth = p.depth;
        r.method = v->method;
        r.budget = v->budget;
        r.kv_bytes_held = v->report.kv_bytes_held;
        r.kv_bytes_full = v->report.kv_bytes_full;
        r.retention = v->report.average_retention;
        for (const LayerAllocation& a : v->report.layers) r.layer_budgets.push_back(a.kept_prefix);
        r.answers = p.answers;
        r.answer = AnswerText(v->key.generated);
        r.correct = ScoreAnswer(r.answer, r.answers);
        r.fidelity = v->fidelity;
        rows.push_back(std::move(r));
      }
    }
    return rows;
  };
  absl::StatusOr<std::vector<EvalRow>> rows = run();
  release_all();
  if (timing != nullptr) timing->total_s = Seconds(start);
  return rows;
}

}  // namespace xkv
