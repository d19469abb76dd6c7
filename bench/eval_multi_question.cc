#include "bench/eval_multi_question.h"

#include <algorithm>
#include <chrono>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "bench/eval_runner.h"
#include "bench/eval_runner_lanes.h"
#include "bench/eval_tasks.h"

namespace xkv {
namespace {

constexpr absl::string_view kNeedleStart = "One of the special magic numbers for ";
constexpr absl::string_view kNeedleMiddle = " is: ";

bool AllDigits(absl::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
  }
  return true;
}

}  // namespace

std::vector<std::pair<std::string, std::string>> NumberNeedles(absl::string_view context) {
  std::vector<std::pair<std::string, std::string>> out;
  for (size_t pos = context.find(kNeedleStart); pos != absl::string_view::npos;
       pos = context.find(kNeedleStart, pos + 1)) {
    const size_t key_begin = pos + kNeedleStart.size();
    const size_t middle = context.find(kNeedleMiddle, key_begin);
    if (middle == absl::string_view::npos) break;
    const size_t value_begin = middle + kNeedleMiddle.size();
    const size_t dot = context.find('.', value_begin);
    if (dot == absl::string_view::npos) break;
    const absl::string_view key = context.substr(key_begin, middle - key_begin);
    const absl::string_view value = context.substr(value_begin, dot - value_begin);
    if (!key.empty() && key.find('\n') == absl::string_view::npos && AllDigits(value)) {
      out.emplace_back(std::string(key), std::string(value));
    }
  }
  return out;
}

absl::StatusOr<std::vector<MultiQuestionSet>> MultiQuestionSets(
    absl::Span<const TaskRecord> records, int min_questions) {
  if (min_questions < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("multi-question: min_questions is ", min_questions, "; allowed: >= 2"));
  }
  std::vector<MultiQuestionSet> out;
  for (const TaskRecord& r : records) {
    if (!r.context_ids.empty() || !r.messages.empty()) continue;
    MultiQuestionSet set{r.id, {}};
    const std::vector<std::pair<std::string, std::string>> needles = NumberNeedles(r.context);
    for (const auto& [key, value] : needles) {
      // A key with several numbers (multivalue) has no single answer; a number must occur once.
      const auto same_key = [&key](const auto& n) { return n.first == key; };
      if (std::count_if(needles.begin(), needles.end(), same_key) != 1 ||
          CountOccurrences(r.context, value) != 1) {
        continue;
      }
      TaskRecord q;
      q.id = r.id;
      q.task = absl::StrCat("mq-", r.task);
      q.split = r.split;
      q.length = r.length;
      q.context = r.context;
      q.question = absl::StrCat("\n\nWhat is the special magic number for ", key,
                                " mentioned in the provided text?");
      q.answer_prefix =
          absl::StrCat("The special magic number for ", key, " mentioned in the provided text is");
      q.answers = {value};
      q.continuation = r.continuation;
      if (absl::StrContains(r.question, absl::StrCat(" ", key, " "))) q.depth = r.depth;
      set.questions.push_back(std::move(q));
    }
    if (static_cast<int>(set.questions.size()) >= min_questions) out.push_back(std::move(set));
  }
  if (out.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "multi-question: none of the ", records.size(), " prompts holds ", min_questions,
        " or more number needles with different keys (tasks multikey and multiquery do)"));
  }
  return out;
}

absl::StatusOr<std::vector<EvalRow>> EvalRunner::RunMultiQuestion(
    absl::Span<const EvalPrompt> questions, PromptTiming* timing) {
  if (questions.empty()) {
    return absl::InvalidArgumentError("eval: a multi-question set without questions");
  }
  const EvalPrompt& first = questions[0];
  for (const EvalPrompt& q : questions) {
    RETURN_IF_ERROR(CheckPrompt(q));
    if (q.context != first.context || q.id != first.id) {
      return absl::InvalidArgumentError(
          absl::StrCat("eval: multi-question set ", first.id, ": the questions' contexts differ"));
    }
  }
  const auto start = std::chrono::steady_clock::now();
  auto seconds = [&start] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  Lane base;
  std::vector<Variant> variants;
  std::vector<Lane> lanes;  // [question * (1 + variants) + j]: j = 0 the full cache
  auto run = [&]() -> absl::StatusOr<std::vector<EvalRow>> {
    std::vector<CollectedScores> scores;
    RETURN_IF_ERROR(Prefill(base, first.context, &scores).status());
    reread_.reset();
    if (reconstructs_) {
      ASSIGN_OR_RETURN(reread_, ScoreByReconstruction(engine_, base.id, first.context,
                                                      options_.repeat, options_.reconstruct));
    }
    if (timing != nullptr) timing->prefill_s = seconds();
    // Each method x budget compresses the context once, before any question is seen.
    ASSIGN_OR_RETURN(variants, CompressAll(base, scores, /*with_fidelity=*/false));
    const size_t per = 1 + variants.size();
    lanes.resize(questions.size() * per);
    std::vector<Lane*> all;
    for (size_t q = 0; q < questions.size(); ++q) {
      for (size_t j = 0; j < per; ++j) {
        const Lane& from = j == 0 ? base : variants[j - 1].key;
        Lane& lane = lanes[q * per + j];
        lane.id = NewSequence();
        lane.position = from.position;
        RETURN_IF_ERROR(engine_->CopySequence(from.id, lane.id));
        lane.pending = questions[q].question;
        lane.pending.insert(lane.pending.end(), questions[q].suffix.begin(),
                            questions[q].suffix.end());
        lane.max_tokens = options_.answer_tokens;
        all.push_back(&lane);
      }
    }
    RETURN_IF_ERROR(RunPending(all));
    RETURN_IF_ERROR(Decode(all));
    const int64_t C = first.context.size();
    const int64_t full_bytes = engine_->config().n_layers * C * engine_->kv_bytes_per_token();
    std::vector<EvalRow> rows;
    for (size_t q = 0; q < questions.size(); ++q) {
      for (size_t j = 0; j < per; ++j) {
        const Variant* v = j == 0 ? nullptr : &variants[j - 1];
        EvalRow r;
        r.prompt_id = first.id;
        r.task = questions[q].task;
        r.mode = QueryMode::kAgnostic;
        r.target_tokens = questions[q].target_tokens;
        r.prompt_tokens = C;
        r.depth = questions[q].depth;
        r.kv_bytes_full = full_bytes;
        r.kv_bytes_held = full_bytes;
        if (v != nullptr) {
          r.method = v->method;
          r.budget = v->budget;
          r.kv_bytes_held = v->report.kv_bytes_held;
          r.kv_bytes_full = v->report.kv_bytes_full;
          r.retention = v->report.average_retention;
          for (const LayerAllocation& a : v->report.layers) {
            r.layer_budgets.push_back(a.kept_prefix);
          }
        }
        r.answers = questions[q].answers;
        r.answer = AnswerText(lanes[q * per + j].generated);
        r.correct = ScoreAnswer(r.answer, r.answers);
        rows.push_back(std::move(r));
      }
    }
    return rows;
  };
  absl::StatusOr<std::vector<EvalRow>> rows = run();
  Release(base);
  for (Variant& v : variants) Release(v.key);
  for (Lane& lane : lanes) Release(lane);
  if (timing != nullptr) timing->total_s = seconds();
  return rows;
}

}  // namespace xkv
