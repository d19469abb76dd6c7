#include "coordinator/generation_service.h"

#include <grpcpp/alarm.h>

#include <algorithm>
#include <chrono>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "coordinator/grpc_status_map.h"

namespace xkv {

GenerateParams ParamsFromProto(const xkv::v1::GenerateRequest& r) {
  GenerateParams p;
  p.request_id = r.request_id();
  if (r.has_chat()) {
    p.chat = true;
    for (const auto& m : r.chat().messages()) p.messages.push_back({m.role(), m.content()});
  } else {
    p.prompt = r.prompt();
  }
  p.max_tokens = r.has_max_tokens() ? r.max_tokens() : 0;  // 0: the service default (Submit)
  if (r.has_sampling()) {
    const auto& s = r.sampling();
    p.temperature = s.temperature();
    p.top_p = s.has_top_p() ? s.top_p() : 1.0;
    p.top_k = s.top_k();
    p.min_p = s.min_p();
    p.presence_penalty = s.presence_penalty();
    p.frequency_penalty = s.frequency_penalty();
    p.repetition_penalty = s.has_repetition_penalty() ? s.repetition_penalty() : 1.0;
    p.logprobs = s.has_logprobs() ? s.logprobs() : -1;
    p.seed = s.seed();
    p.stop.assign(s.stop().begin(), s.stop().end());
  }
  p.ignore_eos = r.ignore_eos();
  if (r.has_kv_policy()) {
    const auto& k = r.kv_policy();
    p.kv.policy = k.policy();
    p.kv.profile_mode = k.profile_mode();
    p.kv.allocator = k.allocator();
    if (k.has_floor()) p.kv.floor = k.floor();
    if (k.has_cap()) p.kv.cap = k.cap();
    if (k.has_per_head()) p.kv.per_head = k.per_head();
    switch (k.target_case()) {
      case xkv::v1::KvPolicySpec::kRetention:
        p.kv.retention = k.retention();
        break;
      case xkv::v1::KvPolicySpec::kBudgetTokens:
        p.kv.budget_tokens = k.budget_tokens();
        break;
      case xkv::v1::KvPolicySpec::kBudgetBytes:
        p.kv.budget_bytes = k.budget_bytes();
        break;
      case xkv::v1::KvPolicySpec::kBudgetFraction:
        p.kv.budget_fraction = k.budget_fraction();
        break;
      default:
        break;
    }
  }
  return p;
}

absl::Status ValidatePresence(const xkv::v1::GenerateRequest& r) {
  if (r.has_max_tokens() && r.max_tokens() == 0) {
    return absl::InvalidArgumentError(
        "max_tokens is 0; it must be >= 1 (leave it unset for the service default)");
  }
  if (r.sampling().n() < 0 || r.sampling().n() > kMaxChoices) {
    return absl::InvalidArgumentError(
        absl::StrCat("n is ", r.sampling().n(), "; it must be in [1, ", kMaxChoices, "]"));
  }
  return absl::OkStatus();
}

std::vector<GenerateParams> ChoicesFromProto(const xkv::v1::GenerateRequest& r) {
  const GenerateParams first = ParamsFromProto(r);
  std::vector<GenerateParams> out(std::max(1, r.sampling().n()), first);
  for (size_t i = 0; i < out.size(); ++i) out[i].seed = first.seed + i;
  return out;
}

namespace {

// The request from its wire bytes; INVALID_ARGUMENT when they are not a GenerateRequest.
absl::StatusOr<xkv::v1::GenerateRequest> ParseRequest(const grpc::ByteBuffer& bytes) {
  std::vector<grpc::Slice> slices;
  xkv::v1::GenerateRequest request;
  std::string wire;
  if (bytes.Dump(&slices).ok()) {
    for (const grpc::Slice& s : slices) {
      wire.append(reinterpret_cast<const char*>(s.begin()), s.size());
    }
    if (request.ParseFromString(wire)) return request;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "the request (", wire.size(),
      " bytes) is not a valid xkv.v1.GenerateRequest: malformed protobuf, or a string field "
      "(request_id, chat roles and contents, kv_policy names, stop strings) that is not UTF-8"));
}

grpc::ByteBuffer Serialize(const xkv::v1::GenerateResponse& response) {
  const std::string bytes = response.SerializeAsString();
  grpc::Slice slice(bytes);
  return grpc::ByteBuffer(&slice, 1);
}

class GenerateReactor final : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  // The sink of one choice the coordinator calls; forwards to the reactor, which finishes the
  // call once every choice's sink has ended (so no sink outlives it).
  class Sink final : public GenerateSink {
   public:
    Sink(GenerateReactor* r, int index) : r_(r), index_(index) {}
    void OnDelta(const std::string& text, absl::Span<const int32_t> ids,
                 absl::Span<const SampledLogprobs> logprobs) override {
      xkv::v1::GenerateResponse resp;
      resp.set_text(text);
      resp.mutable_token_ids()->Add(ids.begin(), ids.end());
      for (const SampledLogprobs& l : logprobs) {
        xkv::v1::TokenLogprobs* out = resp.add_logprobs();
        out->mutable_token()->set_token_id(l.token.id);
        out->mutable_token()->set_logprob(l.token.logprob);
        for (const TokenLogprob& t : l.top) {
          xkv::v1::TokenLogprob* top = out->add_top();
          top->set_token_id(t.id);
          top->set_logprob(t.logprob);
        }
      }
      resp.set_index(index_);
      r_->Enqueue(std::move(resp));
    }
    void OnDone(const xkv::v1::Usage& usage) override {
      xkv::v1::GenerateResponse resp;
      *resp.mutable_usage() = usage;
      resp.set_index(index_);
      r_->Enqueue(std::move(resp));
      r_->ChoiceEnded(absl::OkStatus(), 1);
    }
    void OnError(const absl::Status& status) override { r_->ChoiceEnded(status, 1); }

   private:
    GenerateReactor* r_;
    const int index_;
  };

  GenerateReactor(Coordinator* coordinator, grpc::CallbackServerContext* context,
                  const grpc::ByteBuffer& bytes)
      : coordinator_(coordinator) {
    absl::StatusOr<xkv::v1::GenerateRequest> parsed = ParseRequest(bytes);
    if (!parsed.ok()) {
      Finish(ToGrpc(parsed.status()));
      return;
    }
    const xkv::v1::GenerateRequest& request = *parsed;
    if (absl::Status s = ValidatePresence(request); !s.ok()) {
      Finish(ToGrpc(s));
      return;
    }
    std::vector<GenerateParams> choices = ChoicesFromProto(request);
    const auto deadline = context->deadline();
    {
      std::lock_guard<std::mutex> lock(mu_);
      request_id_ = choices[0].request_id;
      open_ = static_cast<int>(choices.size());
      if (deadline != std::chrono::system_clock::time_point::max()) {
        deadline_ = absl::FromChrono(deadline);
      }
    }
    for (size_t i = 0; i < choices.size(); ++i) {
      choices[i].deadline = deadline_;
      absl::StatusOr<uint64_t> id = coordinator_->Submit(
          std::move(choices[i]), std::make_shared<Sink>(this, static_cast<int>(i)));
      if (!id.ok()) {
        // This error first (it wins); the choices already submitted end (cancelled) before the
        // call finishes.
        const std::vector<uint64_t> submitted = Ids();
        ChoiceEnded(id.status(), static_cast<int>(choices.size() - i));
        for (uint64_t done : submitted) coordinator_->Cancel(done);
        return;
      }
      std::lock_guard<std::mutex> lock(mu_);
      ids_.push_back(*id);
      if (request_id_.empty()) request_id_ = absl::StrCat("req-", *id);
    }
  }

  void OnWriteDone(bool ok) override {
    std::lock_guard<std::mutex> lock(mu_);
    writing_ = false;
    if (!ok) return;  // the client went away; OnCancel/OnDone follow
    WriteNextLocked();
  }

  void OnCancel() override {
    // gRPC cancels the call both when the client goes away and when its deadline passes: the
    // request ends (and is counted) with the status that matches.
    const absl::Status status = absl::Now() >= deadline_
                                    ? absl::DeadlineExceededError("the client's deadline passed")
                                    : absl::CancelledError("the client cancelled the request");
    for (uint64_t id : Ids()) coordinator_->Cancel(id, status);
  }

  void OnDone() override { delete this; }

 private:
  std::vector<uint64_t> Ids() {
    std::lock_guard<std::mutex> lock(mu_);
    return ids_;
  }

  void Enqueue(xkv::v1::GenerateResponse resp) {
    std::lock_guard<std::mutex> lock(mu_);
    resp.set_request_id(request_id_);
    pending_.push_back(Serialize(resp));
    KickLocked();
  }

  // `count` choices ended with `status`; the call finishes after the last (the first error wins).
  void ChoiceEnded(const absl::Status& status, int count) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!status.ok() && error_.ok()) error_ = status;
    open_ -= count;
    if (open_ == 0) final_ = ToGrpc(error_);
    KickLocked();
  }

  // Enqueue and ChoiceEnded run on the coordinator's loop thread: the write (a sendmsg per token,
  // tens of microseconds on loopback) starts on a gRPC executor thread instead, through an alarm
  // that is already due, so the loop goes on to the next step. While a kick is pending no write
  // is in flight and nothing else starts one, so the call cannot finish (nor this reactor be
  // deleted) before the kick ran.
  void KickLocked() {
    if (writing_ || finished_ || kick_pending_) return;
    kick_pending_ = true;
    kick_ = std::make_unique<grpc::Alarm>();
    kick_->Set(gpr_now(GPR_CLOCK_MONOTONIC), [this](bool) {
      std::lock_guard<std::mutex> lock(mu_);
      kick_pending_ = false;
      WriteNextLocked();
    });
  }

  void WriteNextLocked() {
    if (writing_ || finished_) return;
    if (!pending_.empty()) {
      current_ = std::move(pending_.front());
      pending_.pop_front();
      writing_ = true;
      StartWrite(&current_);
      return;
    }
    if (final_.has_value()) {
      finished_ = true;
      Finish(*final_);
    }
  }

  Coordinator* coordinator_;
  absl::Time deadline_ = absl::InfiniteFuture();  // the client's, set before any Submit
  std::mutex mu_;
  std::vector<uint64_t> ids_;
  std::string request_id_;
  int open_ = 0;        // choices not ended yet
  absl::Status error_;  // the first choice error
  std::deque<grpc::ByteBuffer> pending_;
  grpc::ByteBuffer current_;
  std::optional<grpc::Status> final_;
  bool writing_ = false;
  bool finished_ = false;
  bool kick_pending_ = false;
  std::unique_ptr<grpc::Alarm> kick_;  // the pending (or last) kick
};

}  // namespace

grpc::ServerWriteReactor<grpc::ByteBuffer>* GenerationService::Generate(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request) {
  return new GenerateReactor(coordinator_, context, *request);
}

}  // namespace xkv
