// A sequence's output and its end (architecture.md §2 step 6): each sampled token is accepted
// (stop rules, detokenized bytes streamed to the sink in whole UTF-8 characters), and a finished,
// failed or cancelled sequence is released on every stage and reported with its usage.
#include <algorithm>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "coordinator/coordinator.h"
#include "coordinator/coordinator_sequence.h"
#include "coordinator/request_validation.h"

namespace xkv {
namespace {

double Ms(absl::Duration d) { return absl::ToDoubleMilliseconds(d); }

// Length of the longest prefix of `s` that does not end inside a UTF-8 character.
size_t CompleteUtf8Prefix(const std::string& s) {
  const size_t n = s.size();
  for (size_t back = 1; back <= 3 && back <= n; ++back) {
    const unsigned char c = s[n - back];
    if ((c & 0xC0) == 0x80) continue;  // continuation byte: keep looking for the lead
    const size_t len = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : 4;
    return len > back ? n - back : n;
  }
  return n;
}

// Replaces every byte that is not part of valid UTF-8 with U+FFFD (proto strings must be UTF-8).
std::string Sanitize(const std::string& s) {
  if (IsValidUtf8(s)) return s;
  std::string out;
  for (size_t i = 0; i < s.size();) {
    size_t len = 1;
    const unsigned char c = s[i];
    if (c >= 0x80) len = (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : 4;
    if (i + len <= s.size() && IsValidUtf8(std::string_view(s).substr(i, len))) {
      out.append(s, i, len);
      i += len;
    } else {
      out += "\xEF\xBF\xBD";
      ++i;
    }
  }
  return out;
}

}  // namespace

void Coordinator::AcceptToken(Sequence& seq, int32_t token,
                              const std::optional<SampledLogprobs>& logprobs) {
  const absl::Time now = clock_->Now();
  seq.output_ids.push_back(token);  // recomputed after a preemption
  if (seq.generated++ == 0) {
    seq.first_token = now;
  } else {
    seq.itl_seconds.push_back(absl::ToDoubleSeconds(now - seq.last_token_time));
  }
  seq.last_token_time = now;
  seq.last_token = token;
  const bool eos = std::find(eos_tokens_.begin(), eos_tokens_.end(), token) != eos_tokens_.end();
  if (eos && !seq.params.ignore_eos) {
    --seq.generated;  // EOS is not part of the completion (nor its gap)
    if (seq.generated > 0) seq.itl_seconds.pop_back();
    Emit(seq, seq.stop->Flush(), {});
    FinishSequence(seq.id, absl::OkStatus(), xkv::v1::FINISH_REASON_EOS);
    return;
  }
  bool stopped = false;
  std::string bytes = seq.stop->Push(tokenizer_->TokenBytes(token), &stopped);
  std::vector<SampledLogprobs> token_logprobs;
  if (logprobs.has_value()) token_logprobs.push_back(*logprobs);
  Emit(seq, std::move(bytes), {token}, std::move(token_logprobs));
  if (stopped) {
    FinishSequence(seq.id, absl::OkStatus(), xkv::v1::FINISH_REASON_STOP_STRING);
  } else if (seq.generated >= seq.params.max_tokens) {
    Emit(seq, seq.stop->Flush(), {});
    FinishSequence(seq.id, absl::OkStatus(), xkv::v1::FINISH_REASON_LENGTH);
  }
}

void Coordinator::Emit(Sequence& seq, std::string bytes, std::vector<int32_t> ids,
                       std::vector<SampledLogprobs> logprobs) {
  seq.utf8_pending += bytes;
  const size_t cut = CompleteUtf8Prefix(seq.utf8_pending);
  std::string text = Sanitize(seq.utf8_pending.substr(0, cut));
  seq.utf8_pending.erase(0, cut);
  if (!text.empty() || !ids.empty()) seq.sink->OnDelta(text, ids, logprobs);
}

void Coordinator::FinishSequence(uint64_t id, const absl::Status& status, int finish_reason) {
  std::unique_ptr<Sequence> seq;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = sequences_.find(id);
    if (it == sequences_.end()) return;
    seq = std::move(it->second);
    sequences_.erase(it);
  }
  scheduler_->Finish(id);
  if (seq->started) ReleaseOnStages(id);
  ReportDone(*seq, status);
  if (status.ok()) {
    if (!seq->utf8_pending.empty()) seq->sink->OnDelta(Sanitize(seq->utf8_pending), {}, {});
    seq->sink->OnDone(MakeUsage(*seq, finish_reason));
  } else {
    seq->sink->OnError(status);
  }
  drained_.notify_all();
}

void Coordinator::ReleaseOnStages(uint64_t id) {
  const uint64_t ids[] = {id};
  if (defer_release_ || !driver_->Release(ids).ok()) {
    unreleased_.push_back(id);  // freed once every stage answers (Loop)
  }
}

void Coordinator::ReportDone(const Sequence& seq, const absl::Status& status) const {
  if (!options_.on_request_done) return;
  const absl::Time now = clock_->Now();
  RequestRecord r;
  r.code = status.code();
  // Only admitted prompts count as processed prompt tokens (not those dropped from the queue).
  r.prompt_tokens = seq.admitted_set ? static_cast<int64_t>(seq.prompt.size()) : 0;
  r.completion_tokens = seq.generated;
  r.e2e_seconds = absl::ToDoubleSeconds(now - seq.submitted);
  if (seq.generated > 0) r.ttft_seconds = absl::ToDoubleSeconds(seq.first_token - seq.submitted);
  if (seq.generated > 1) {
    r.tpot_seconds = absl::ToDoubleSeconds(now - seq.first_token) / (seq.generated - 1);
  }
  r.itl_seconds = seq.itl_seconds;
  r.profile_seconds = seq.profile_ms / 1e3;
  r.solve_seconds = seq.solve_ms / 1e3;
  if (seq.admitted_set) r.queue_seconds = absl::ToDoubleSeconds(seq.admitted - seq.submitted);
  options_.on_request_done(r);
}

xkv::v1::Usage Coordinator::MakeUsage(const Sequence& seq, int finish_reason) const {
  xkv::v1::Usage u;
  const int64_t T = static_cast<int64_t>(seq.prompt.size());
  u.set_prompt_tokens(static_cast<int32_t>(T));
  u.set_completion_tokens(static_cast<int32_t>(seq.generated));
  int64_t held = 0;
  for (const xkv::v1::LayerSize& l : seq.layers) {
    xkv::v1::LayerCacheSize* c = u.add_layers();
    c->set_layer(l.layer());
    c->set_kept_tokens(l.tokens());
    c->set_bytes(l.bytes());
    held += l.bytes();
  }
  u.set_kv_bytes_held(held);
  const int64_t bs = options_.block_tokens;
  const int64_t block_bytes = bytes_per_token_ * bs;
  u.set_kv_bytes_full(config_.n_layers * ((T + seq.generated + bs - 1) / bs) * block_bytes);
  if (!seq.compress) {
    u.set_retention(1.0);
  } else if (seq.retention.has_value()) {
    u.set_retention(*seq.retention);
  }
  u.set_reachable(seq.reachable);
  u.set_policy(std::string(PolicyName(seq.kv.policy)));
  u.set_profile_mode(ProfileModeName(seq.kv.profile));
  u.set_profiled(seq.profiled);
  u.set_finish_reason(static_cast<xkv::v1::FinishReason>(finish_reason));
  xkv::v1::Timings* t = u.mutable_timings();
  const absl::Time now = clock_->Now();
  const absl::Time admitted = seq.admitted_set ? seq.admitted : seq.submitted;
  t->set_queue_ms(Ms(admitted - seq.submitted));
  t->set_profile_ms(seq.profile_ms);
  t->set_solve_ms(seq.solve_ms);
  if (seq.generated > 0) {
    // From admission to the first token, less the mini-prefill (reported as profile_ms).
    t->set_prefill_ms(std::max(0.0, Ms(seq.first_token - admitted) - seq.profile_ms));
    t->set_decode_ms(Ms(now - seq.first_token));
    t->set_ttft_ms(Ms(seq.first_token - seq.submitted));
  }
  return u;
}

}  // namespace xkv
