// StageExecutor's async decode (StageOptions::lookahead, `xkv serve --async-decode`): a stage that
// is both first and last queues the next decode step of a pure-decode batch on its engine before
// it answers the current one, so that on a GPU the device computes step t + 1 while the host
// applies step t's results and plans step t + 1. The coordinator is unchanged: it still plans
// every step from real results. When its next step is exactly the queued one (same sequences in
// the same order, each with the token the stage sampled and the next position, same sampling and
// flags) the stage answers it from the queued work, and queues the step after it before it waits:
// on a GPU that one's input tokens are read from the device's sample (EmbedResidentSampled), so
// the device runs decode steps back to back while the host does its per-step work. Any other
// call first undoes the queued step (the engine drops its token from each sequence, the block
// pool follows the caches), so the tokens are those of the option off, bit for bit: a step the
// stage adopts is the very step it would have run, on the same state.
#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "worker/stage_executor.h"
#include "worker/step_fields.h"

namespace xkv {
namespace {

using step_fields::PlainDecode;
using xkv::v1::StepRequest;
using xkv::v1::StepResponse;
using xkv::v1::StepSequence;

double MsSince(absl::Time t0) { return absl::ToDoubleMilliseconds(absl::Now() - t0); }

// The request without what differs between two equal steps (their ids, the link deadline) and
// without its tokens, which go to `tokens`.
std::string StepKey(StepRequest step, std::vector<int32_t>* tokens) {
  step.clear_step_id();
  step.clear_link_timeout_ms();
  for (StepSequence& s : *step.mutable_sequences()) {
    tokens->insert(tokens->end(), s.tokens().begin(), s.tokens().end());
    s.clear_tokens();
  }
  return step.SerializeAsString();
}

}  // namespace

void StageExecutor::CountDeviceDraw(Sequence& q, int32_t token) {
  ++q.draws;
  const SamplingParams& p = *q.device_params;
  if (p.presence_penalty != 0.f || p.frequency_penalty != 0.f) ++q.counts[token];
}

void StageExecutor::QueueAhead(const StepRequest& base, const std::vector<int32_t>* fed,
                               const Ahead* prev, const StepResponse& sizes) {
  if (!options_.lookahead || !is_first() || !is_last() || base.dry_run()) return;
  const absl::Time t0 = absl::Now();
  const bool device = engine_->device_resident() && options_.device_sampling;
  if (fed == nullptr && !device) return;
  const int pending_draws = prev != nullptr && prev->device ? 1 : 0;
  StepRequest next = base;
  auto ahead = std::make_unique<Ahead>();
  ahead->device = device;
  EngineStep batch;
  for (int i = 0; i < next.sequences_size(); ++i) {
    StepSequence& s = *next.mutable_sequences(i);
    auto it = sequences_.find(s.seq_id());
    // Only a plain decode of one token that sampled; the next one stays inside the context.
    if (!PlainDecode(s) || s.return_logits() || s.return_scores() ||
        (fed != nullptr && (*fed)[i] < 0) || s.position() + 2 > config().context_length ||
        it == sequences_.end()) {
      return;
    }
    const Sequence& q = it->second;
    // Every sequence on the path it sampled on: the device (its parameters known; penalties only
    // when its pending draw's token is counted already) or its Sampler.
    if (device ? q.sampler != nullptr || !q.device_params.has_value() ||
                     (pending_draws > 0 && (q.device_params->presence_penalty != 0.f ||
                                            q.device_params->frequency_penalty != 0.f))
               : q.sampler == nullptr) {
      return;
    }
    s.set_tokens(0, fed != nullptr ? (*fed)[i] : 0);  // 0: a stand-in for the checks
    s.set_position(s.position() + 1);
    s.set_new_sequence(false);
    ahead->ids.push_back(s.seq_id());
    batch.sequences.push_back({s.seq_id(), 1, s.position(), false});
  }
  if (ahead_skips_ > 0) {  // the last ones were undone
    --ahead_skips_;
    return;
  }
  // The stage's own checks and blocks, as for a step that arrives: a step that would not fit (or
  // not validate) is not queued, and nothing changed.
  if (!ValidateStep(next).ok()) return;
  absl::StatusOr<BlockPlan> plan = PlanBlocks(next);
  if (!plan.ok() || !pool_.Commit(*plan).ok()) return;
  absl::Status s = fed != nullptr ? engine_->EmbedResident(*fed) : engine_->EmbedResidentSampled();
  if (s.ok()) s = engine_->RunLayersResident(batch, options_.importance, nullptr);
  if (s.ok() && device) {
    std::vector<RowSampling> rows(batch.sequences.size());
    for (size_t i = 0; i < rows.size(); ++i) {
      rows[i].row = static_cast<int64_t>(i);
      FillDeviceDraw(sequences_.at(ahead->ids[i]), rows[i]);
      rows[i].draws += pending_draws;
    }
    s = engine_->StartSampleResident(rows);
  } else if (s.ok()) {
    std::vector<int64_t> rows(batch.sequences.size());
    for (size_t i = 0; i < rows.size(); ++i) rows[i] = static_cast<int64_t>(i);
    absl::StatusOr<std::vector<float>> logits = engine_->LogitsResident(rows);
    s = logits.status();
    const size_t V = config().vocab_size;
    for (size_t i = 0; s.ok() && i < rows.size(); ++i) {
      const Sampler& from =
          prev != nullptr ? *prev->samplers[i] : *sequences_.at(ahead->ids[i]).sampler;
      ahead->samplers.push_back(std::make_unique<Sampler>(from));
      ahead->tokens.push_back(
          ahead->samplers.back()->Sample(absl::Span<const float>(logits->data() + i * V, V)));
    }
  }
  if (!s.ok()) {  // the real step will run (and report) whatever failed here
    RestoreAfterAhead(sizes);
    return;
  }
  std::vector<int32_t> stand_in;
  ahead->key = StepKey(std::move(next), &stand_in);
  if (fed != nullptr) ahead->input = *fed;
  ahead->queue_ms = MsSince(t0);
  ahead_ = std::move(ahead);
  ++lookahead_counts_.queued;
}

bool StageExecutor::AheadMatches(const StepRequest& step) const {
  if (ahead_ == nullptr || step.dry_run()) return false;
  std::vector<int32_t> tokens;
  return StepKey(step, &tokens) == ahead_->key && tokens == ahead_->input;
}

absl::StatusOr<StepResponse> StageExecutor::AdoptAhead(const StepRequest& step) {
  const absl::Time t0 = absl::Now();
  std::unique_ptr<Ahead> cur = std::move(ahead_);
  ++lookahead_counts_.adopted;
  ahead_misses_ = 0;
  // The ledger work first, while the device still computes: the step's blocks and lengths were
  // committed when it was queued (SyncBlocks checks them), so its sizes are known already.
  StepResponse result;
  result.set_step_id(step.step_id());
  absl::Status s;
  for (uint64_t id : cur->ids) {
    if (s.ok()) s = SyncBlocks(id);
    xkv::v1::SequenceResult* r = result.add_sequences();
    r->set_seq_id(id);
    LayerSizes(id, r->mutable_layers());
  }
  *result.mutable_usage() = Usage();
  RefreshStatus();
  // The step after it, queued before waiting: on a GPU its input is this step's sample, read on
  // the device, so the device goes from one step to the next without waiting for the host.
  if (s.ok()) QueueAhead(step, cur->device ? nullptr : &cur->tokens, cur.get(), result);
  const absl::Time t1 = absl::Now();
  std::vector<int32_t> tokens = std::move(cur->tokens);
  if (cur->device) {  // waits for the device (the oldest sample outstanding is this step's)
    absl::StatusOr<SampledRows> got = engine_->FinishSampleResident();
    if (s.ok()) s = got.status();
    if (s.ok()) tokens = std::move(got->tokens);
  }
  if (!s.ok()) {  // as a step that failed during compute: its sequences leave the stage
    DiscardAhead();
    for (uint64_t id : cur->ids) Drop(id);
    RefreshStatus();
    return s;
  }
  for (size_t i = 0; i < cur->ids.size(); ++i) {
    xkv::v1::SequenceResult& r = *result.mutable_sequences(i);
    r.set_token(tokens[i]);
    auto it = sequences_.find(cur->ids[i]);
    if (it == sequences_.end()) continue;  // dropped by a failed queueing: its next step fails
    Sequence& q = it->second;
    if (cur->device) {
      CountDeviceDraw(q, tokens[i]);
    } else {
      q.sampler = std::move(cur->samplers[i]);
      SetLogprobs(q.sampler->last_logprobs(), r);
    }
  }
  if (ahead_ != nullptr && cur->device) ahead_->input = tokens;  // what it was fed on the device
  xkv::v1::StepTimings& timings = *result.mutable_timings();
  timings.set_compute_ms(cur->queue_ms + MsSince(t1));  // queueing it and waiting for it
  timings.set_total_ms(MsSince(t0));
  timings.set_from_lookahead(true);
  return result;
}

void StageExecutor::DiscardAhead(const StepRequest* replaced_by) {
  if (ahead_ == nullptr) return;
  std::unique_ptr<Ahead> ahead = std::move(ahead_);
  ++lookahead_counts_.discarded;
  // Back off only from batches taking turns (plain decodes of another set of sequences): an
  // admission, a finished sequence's release or a compaction undoes one queued step and the
  // decodes after it chain again (counting those made a burst of admissions switch async decode
  // off for up to 64 steps).
  bool plain = replaced_by != nullptr && !replaced_by->dry_run();
  for (int i = 0; plain && i < replaced_by->sequences_size(); ++i) {
    plain = PlainDecode(replaced_by->sequences(i));
  }
  if (plain && ++ahead_misses_ >= 2) {
    ahead_skips_ = int64_t{1} << std::min(ahead_misses_ - 1, 6);
  }
  if (ahead->device) engine_->FinishSampleResident().IgnoreError();  // the device is done with it
  std::vector<uint64_t> known;
  for (uint64_t id : ahead->ids) {
    if (engine_->HasSequence(id)) known.push_back(id);
  }
  const absl::Status undone = engine_->UndoDecode(known);
  for (uint64_t id : known) {
    if (!undone.ok() || !SyncBlocks(id).ok()) Drop(id);  // its next step fails: NOT_FOUND
  }
}

LookaheadCounts StageExecutor::lookahead_counts() const {
  absl::MutexLock lock(&mu_);
  return lookahead_counts_;
}

void StageExecutor::RestoreAfterAhead(const StepResponse& result) {
  for (const xkv::v1::SequenceResult& r : result.sequences()) {
    const uint64_t id = r.seq_id();
    bool same = true, one_more = true;
    for (const xkv::v1::LayerSize& l : r.layers()) {
      const int64_t now = engine_->CacheLength(id, l.layer());
      same = same && now == l.tokens();
      one_more = one_more && now == l.tokens() + 1;
    }
    const uint64_t ids[] = {id};
    if (!(same || (one_more && engine_->UndoDecode(ids).ok())) || !SyncBlocks(id).ok()) Drop(id);
  }
}

}  // namespace xkv
