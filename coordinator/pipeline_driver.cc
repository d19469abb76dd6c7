#include "coordinator/pipeline_driver.h"

#include <algorithm>
#include <chrono>
#include <functional>
#include <future>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace xkv {
namespace {

template <typename T>
absl::Status FirstError(const std::vector<absl::StatusOr<T>>& results) {
  for (size_t s = 0; s < results.size(); ++s) {
    if (!results[s].ok()) return results[s].status();
  }
  return absl::OkStatus();
}

void SortByLayer(std::vector<xkv::v1::LayerSize>& sizes) {
  const auto by_layer = [](const auto& a, const auto& b) { return a.layer() < b.layer(); };
  if (std::is_sorted(sizes.begin(), sizes.end(), by_layer)) return;  // one stage: in order
  std::sort(sizes.begin(), sizes.end(), by_layer);
}

}  // namespace

// One step on its way through the stages: each stage's thread stores its answer; Wait merges.
struct PipelineDriver::PendingStep {
  explicit PendingStep(xkv::v1::StepRequest r, size_t stages)
      : request(std::move(r)), answered(stages, false), remaining(stages) {
    answers.resize(stages, absl::UnknownError("no answer"));
  }
  // An earlier stage could not be reached for this step: it sent no rows (nor its failure), so
  // a later stage would only wait for them until its link timeout.
  bool UpstreamUnreachable(size_t stage) {
    std::lock_guard<std::mutex> lock(mu);
    for (size_t s = 0; s < stage; ++s) {
      if (answered[s] && answers[s].status().code() == absl::StatusCode::kUnavailable) return true;
    }
    return false;
  }
  const xkv::v1::StepRequest request;
  std::mutex mu;
  std::condition_variable done;
  std::vector<absl::StatusOr<xkv::v1::StepResponse>> answers;  // guarded by mu; [stage]
  std::vector<bool> answered;                                  // guarded by mu; [stage]
  size_t remaining;                                            // guarded by mu
};

PipelineDriver::PipelineDriver(std::vector<std::unique_ptr<StageClient>> stages)
    : stages_(std::move(stages)), queues_(stages_.size()) {
  for (size_t s = 0; s < stages_.size(); ++s) {
    stage_threads_.emplace_back([this, s] { RunStageQueue(s); });
  }
}

PipelineDriver::~PipelineDriver() {
  {
    std::lock_guard<std::mutex> lock(queue_mu_);
    closing_ = true;
  }
  queue_cv_.notify_all();
  for (std::thread& t : stage_threads_) t.join();
}

void PipelineDriver::RunStageQueue(size_t s) {
  while (true) {
    std::function<void()> call;
    {
      std::unique_lock<std::mutex> lock(queue_mu_);
      queue_cv_.wait(lock, [&] { return closing_ || !queues_[s].empty(); });
      if (queues_[s].empty()) return;  // closing, and every queued call ran
      call = std::move(queues_[s].front());
      queues_[s].pop_front();
    }
    call();
  }
}

template <typename T, typename F>
std::vector<std::future<absl::StatusOr<T>>> PipelineDriver::QueueInOrder(F call) {
  std::vector<std::future<absl::StatusOr<T>>> futures;
  {
    std::lock_guard<std::mutex> lock(queue_mu_);
    for (size_t s = 0; s < stages_.size(); ++s) {
      auto task = std::make_shared<std::packaged_task<absl::StatusOr<T>()>>(
          [this, call, s] { return call(s, *stages_[s]); });
      futures.push_back(task->get_future());
      queues_[s].push_back([task] { (*task)(); });
    }
  }
  queue_cv_.notify_all();
  return futures;
}

template <typename T, typename F>
std::vector<absl::StatusOr<T>> PipelineDriver::FanOutInOrder(F call) {
  std::vector<absl::StatusOr<T>> results;
  for (auto& f : QueueInOrder<T>(std::move(call))) results.push_back(f.get());
  return results;
}

template <typename T, typename F>
std::vector<absl::StatusOr<T>> PipelineDriver::FanOut(F call) {
  std::vector<std::future<absl::StatusOr<T>>> futures;
  for (size_t s = 0; s < stages_.size(); ++s) {
    futures.push_back(std::async(std::launch::async, [&, s] { return call(s, *stages_[s]); }));
  }
  std::vector<absl::StatusOr<T>> results;
  for (auto& f : futures) results.push_back(f.get());
  return results;
}

absl::Status PipelineDriver::LoadStages(const StagePlan& plan, const StageLoadSettings& settings) {
  const int S = num_stages();
  if (static_cast<int>(plan.stages.size()) != S) {
    return absl::InvalidArgumentError(
        absl::StrCat("the plan has ", plan.stages.size(), " stages, there are ", S, " workers"));
  }
  auto results = FanOut<xkv::v1::LoadStageResponse>([&](size_t s, StageClient& client) {
    xkv::v1::LoadStageRequest r;
    r.set_model_path(settings.model_path);
    r.set_layer_begin(plan.stages[s].layer_begin);
    r.set_layer_end(plan.stages[s].layer_end);
    r.set_is_first(s == 0);
    r.set_is_last(static_cast<int>(s) == S - 1);
    r.set_kv_capacity_blocks(settings.kv_capacity_blocks);
    r.set_block_tokens(settings.block_tokens);
    if (static_cast<int>(s) + 1 < S) r.set_next_stage(stages_[s + 1]->address());
    r.set_link_kind(client.link_kind());
    r.set_stage_index(static_cast<int>(s));
    r.set_num_stages(S);
    if (!settings.nccl_unique_id.empty()) {
      r.set_link_kind(xkv::v1::LINK_KIND_NCCL);
      r.set_nccl_unique_id(settings.nccl_unique_id);
      r.set_nccl_rank(static_cast<int>(s));
      r.set_nccl_world_size(S);
    }
    r.mutable_importance()->set_window(settings.window);
    r.mutable_importance()->set_pool_kernel(settings.pool_kernel);
    r.mutable_importance()->set_granularity(settings.query_head_scores
                                                ? xkv::v1::SCORE_GRANULARITY_QUERY_HEAD
                                                : xkv::v1::SCORE_GRANULARITY_KV_HEAD);
    r.set_link_timeout_ms(settings.link_timeout_ms);
    r.set_per_head_tables(true);  // where the engine can: per-(layer, KV head) budgets (§5)
    return client.LoadStage(r);
  });
  for (size_t s = 0; s < results.size(); ++s) {
    if (!results[s].ok()) {
      return absl::Status(results[s].status().code(),
                          absl::StrCat("loading stage ", s, " (", stages_[s]->address(),
                                       "): ", results[s].status().message()));
    }
  }
  std::vector<StageState> states;
  for (size_t s = 0; s < results.size(); ++s) {
    StageState st;
    st.address = stages_[s]->address();
    st.layer_begin = plan.stages[s].layer_begin;
    st.layer_end = plan.stages[s].layer_end;
    st.weight_bytes = results[s]->weight_bytes();
    st.capacity_blocks = results[s]->stage_capacity_blocks();
    if (st.capacity_blocks == 0) {  // a worker from before the shared pool: the sum of its layers
      for (int64_t c : results[s]->layer_capacity_blocks()) st.capacity_blocks += c;
    }
    st.block_bytes = results[s]->block_bytes();
    const int tables = results[s]->head_tables(), heads = results[s]->model().n_kv_heads();
    if (tables > 1 && tables != heads) {
      return absl::InternalError(absl::StrCat("stage ", s, " (", st.address, ") answers ", tables,
                                              " block tables per layer; want 1 or its ", heads,
                                              " KV heads"));
    }
    st.head_tables = std::max(tables, 1);
    states.push_back(std::move(st));
  }
  std::lock_guard<std::mutex> lock(mu_);
  states_ = std::move(states);
  return absl::OkStatus();
}

std::vector<StageState> PipelineDriver::stage_states() const {
  std::lock_guard<std::mutex> lock(mu_);
  return states_;
}

std::vector<KvStage> PipelineDriver::KvStages() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<KvStage> out;
  for (const StageState& s : states_)
    out.push_back({s.layer_begin, s.layer_end, s.capacity_blocks, s.head_tables});
  return out;
}

PipelineDriver::StepHandle PipelineDriver::StartStep(xkv::v1::StepRequest request) {
  auto step = std::make_shared<PendingStep>(std::move(request), stages_.size());
  {
    std::lock_guard<std::mutex> lock(queue_mu_);
    for (size_t s = 0; s < stages_.size(); ++s) {
      queues_[s].push_back([this, step, s] {
        absl::StatusOr<xkv::v1::StepResponse> answer =
            step->UpstreamUnreachable(s)
                ? absl::UnavailableError("not sent: an earlier stage was unreachable for this step")
                : stages_[s]->Step(step->request);
        std::lock_guard<std::mutex> lock(step->mu);
        step->answers[s] = std::move(answer);
        step->answered[s] = true;
        if (--step->remaining == 0) step->done.notify_all();
      });
    }
  }
  queue_cv_.notify_all();
  return step;
}

absl::StatusOr<StepOutcome> PipelineDriver::Step(const xkv::v1::StepRequest& request) {
  return Wait(StartStep(request));
}

absl::StatusOr<StepOutcome> PipelineDriver::Wait(const StepHandle& step) {
  std::vector<absl::StatusOr<xkv::v1::StepResponse>> results;
  {
    std::unique_lock<std::mutex> lock(step->mu);
    step->done.wait(lock, [&] { return step->remaining == 0; });
    results = std::move(step->answers);
  }
  const xkv::v1::StepRequest& request = step->request;
  RETURN_IF_ERROR(FirstError(results));
  StepOutcome out;
  const int n = request.sequences_size();
  out.sequences.resize(n);
  for (size_t s = 0; s < results.size(); ++s) {
    xkv::v1::StepResponse& r = *results[s];
    out.max_stage_ms = std::max(out.max_stage_ms, r.timings().total_ms());
    out.max_compute_ms = std::max(out.max_compute_ms, r.timings().compute_ms());
    out.from_lookahead = out.from_lookahead || r.timings().from_lookahead();
    out.lookahead_undone = out.lookahead_undone || r.timings().lookahead_undone();
    if (r.sequences_size() != n) {
      return absl::InternalError(
          absl::StrCat("stage ", s, " answered ", r.sequences_size(), " sequences of ", n));
    }
    for (int i = 0; i < n; ++i) {
      xkv::v1::SequenceResult& q = *r.mutable_sequences(i);
      SequenceStepResult& m = out.sequences[i];
      m.seq_id = request.sequences(i).seq_id();
      if (s + 1 == results.size()) {
        m.token = q.token();
        if (q.has_logprob()) {
          SampledLogprobs& l = m.logprobs.emplace();
          l.token = {q.token(), q.logprob()};
          for (int k = 0; k < q.top_ids_size() && k < q.top_logprobs_size(); ++k) {
            l.top.push_back({q.top_ids(k), q.top_logprobs(k)});
          }
        }
      }
      m.layers.reserve(m.layers.size() + q.layers_size());
      for (xkv::v1::LayerSize& size : *q.mutable_layers()) m.layers.push_back(std::move(size));
      if (q.has_observed()) {
        if (!m.gains.has_value()) m.gains.emplace();
        for (const auto& g : q.observed().layers()) m.gains->push_back(g);
        m.prompt_len = q.observed().prompt_len();
        m.prefix_len = q.observed().prefix_len();
        m.window = q.observed().window();
        m.profile_ms = std::max(m.profile_ms, q.observed().profile_ms());
      }
    }
  }
  for (SequenceStepResult& m : out.sequences) {
    SortByLayer(m.layers);
    if (m.gains.has_value()) {
      std::sort(m.gains->begin(), m.gains->end(),
                [](const auto& a, const auto& b) { return a.layer() < b.layer(); });
    }
  }
  return out;
}

struct PipelineDriver::PendingCompact {
  std::vector<std::future<absl::StatusOr<xkv::v1::CompactResponse>>> answers;  // [stage]
};

absl::StatusOr<std::vector<xkv::v1::LayerSize>> PipelineDriver::Compact(
    uint64_t seq_id, const xkv::v1::CompactSpec& spec) {
  return WaitCompact(StartCompact(seq_id, spec));
}

PipelineDriver::CompactHandle PipelineDriver::StartCompact(uint64_t seq_id,
                                                           const xkv::v1::CompactSpec& spec) {
  auto compact = std::make_shared<PendingCompact>();
  xkv::v1::CompactRequest r;
  r.set_seq_id(seq_id);
  *r.mutable_compact() = spec;
  compact->answers = QueueInOrder<xkv::v1::CompactResponse>(
      [r = std::move(r)](size_t, StageClient& client) { return client.Compact(r); });
  return compact;
}

bool PipelineDriver::CompactDone(const CompactHandle& compact) {
  return std::all_of(compact->answers.begin(), compact->answers.end(), [](const auto& f) {
    return f.wait_for(std::chrono::seconds(0)) == std::future_status::ready;
  });
}

absl::StatusOr<std::vector<xkv::v1::LayerSize>> PipelineDriver::WaitCompact(
    const CompactHandle& compact) {
  std::vector<absl::StatusOr<xkv::v1::CompactResponse>> results;
  for (auto& f : compact->answers) results.push_back(f.get());
  compact->answers.clear();
  RETURN_IF_ERROR(FirstError(results));
  std::vector<xkv::v1::LayerSize> sizes;
  for (const auto& r : results) {
    for (const auto& l : r->layers()) sizes.push_back(l);
  }
  SortByLayer(sizes);
  return sizes;
}

absl::Status PipelineDriver::Release(absl::Span<const uint64_t> seq_ids) {
  if (seq_ids.empty()) return absl::OkStatus();
  auto results = FanOutInOrder<xkv::v1::ReleaseResponse>([&](size_t, StageClient& client) {
    xkv::v1::ReleaseRequest r;
    for (uint64_t id : seq_ids) r.add_seq_ids(id);
    return client.Release(r);
  });
  return FirstError(results);
}

std::vector<absl::StatusOr<xkv::v1::StatusResponse>> PipelineDriver::Status() {
  return FanOut<xkv::v1::StatusResponse>(
      [](size_t, StageClient& client) { return client.Status(); });
}

}  // namespace xkv
