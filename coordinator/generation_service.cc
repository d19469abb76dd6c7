#include "coordinator/generation_service.h"

#include <chrono>
#include <deque>
#include <memory>
#include <mutex>
#include <string>

#include "absl/strings/str_cat.h"
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
  return absl::OkStatus();
}

namespace {

class GenerateReactor final : public grpc::ServerWriteReactor<xkv::v1::GenerateResponse> {
 public:
  // The sink the coordinator calls; forwards to the reactor until the stream is finished.
  class Sink final : public GenerateSink {
   public:
    explicit Sink(GenerateReactor* r) : r_(r) {}
    void OnDelta(const std::string& text, absl::Span<const int32_t> ids) override {
      xkv::v1::GenerateResponse resp;
      resp.set_text(text);
      resp.mutable_token_ids()->Add(ids.begin(), ids.end());
      r_->Enqueue(std::move(resp), nullptr);
    }
    void OnDone(const xkv::v1::Usage& usage) override {
      xkv::v1::GenerateResponse resp;
      *resp.mutable_usage() = usage;
      grpc::Status ok = grpc::Status::OK;
      r_->Enqueue(std::move(resp), &ok);
    }
    void OnError(const absl::Status& status) override {
      grpc::Status s = ToGrpc(status);
      r_->Enqueue(std::nullopt, &s);
    }

   private:
    GenerateReactor* r_;
  };

  GenerateReactor(Coordinator* coordinator, grpc::CallbackServerContext* context,
                  const xkv::v1::GenerateRequest& request)
      : coordinator_(coordinator) {
    if (absl::Status s = ValidatePresence(request); !s.ok()) {
      Finish(ToGrpc(s));
      return;
    }
    GenerateParams params = ParamsFromProto(request);
    request_id_ = params.request_id;
    const auto deadline = context->deadline();
    if (deadline != std::chrono::system_clock::time_point::max()) {
      params.deadline = absl::FromChrono(deadline);
    }
    absl::StatusOr<uint64_t> id =
        coordinator_->Submit(std::move(params), std::make_shared<Sink>(this));
    if (!id.ok()) {
      Finish(ToGrpc(id.status()));
      return;
    }
    std::lock_guard<std::mutex> lock(mu_);
    id_ = *id;
    if (request_id_.empty()) request_id_ = absl::StrCat("req-", *id);
  }

  void OnWriteDone(bool ok) override {
    std::lock_guard<std::mutex> lock(mu_);
    writing_ = false;
    if (!ok) return;  // the client went away; OnCancel/OnDone follow
    WriteNextLocked();
  }

  void OnCancel() override {
    uint64_t id;
    {
      std::lock_guard<std::mutex> lock(mu_);
      id = id_;
    }
    if (id != 0) coordinator_->Cancel(id);
  }

  void OnDone() override { delete this; }

 private:
  void Enqueue(std::optional<xkv::v1::GenerateResponse> resp, const grpc::Status* final_status) {
    std::lock_guard<std::mutex> lock(mu_);
    if (resp.has_value()) {
      resp->set_request_id(request_id_);
      pending_.push_back(std::move(*resp));
    }
    if (final_status != nullptr) final_ = *final_status;
    WriteNextLocked();
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
  std::mutex mu_;
  uint64_t id_ = 0;
  std::string request_id_;
  std::deque<xkv::v1::GenerateResponse> pending_;
  xkv::v1::GenerateResponse current_;
  std::optional<grpc::Status> final_;
  bool writing_ = false;
  bool finished_ = false;
};

}  // namespace

grpc::ServerWriteReactor<xkv::v1::GenerateResponse>* GenerationService::Generate(
    grpc::CallbackServerContext* context, const xkv::v1::GenerateRequest* request) {
  return new GenerateReactor(coordinator_, context, *request);
}

}  // namespace xkv
