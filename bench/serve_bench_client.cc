#include "bench/serve_bench_client.h"

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "bench/openai_bench_client.h"
#include "xkv/v1/generation.grpc.pb.h"

namespace xkv {
namespace {

double MsBetween(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

class GrpcBenchClient final : public ServeBenchClient {
 public:
  explicit GrpcBenchClient(const ServeBenchOptions& o)
      : o_(o),
        stub_(xkv::v1::Generation::NewStub(
            grpc::CreateChannel(o.server, grpc::InsecureChannelCredentials()))) {}

  ServeBenchRequest Run(const std::string& prompt, int64_t output_tokens) override {
    ServeBenchRequest out;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::milliseconds(static_cast<int64_t>(o_.timeout_s * 1000)));
    StreamClock clock;
    auto reader = stub_->Generate(&ctx, MakeRequest(prompt, output_tokens));
    xkv::v1::GenerateResponse resp;
    int64_t streamed = 0;
    while (reader->Read(&resp)) {
      if (resp.token_ids_size() > 0) {
        clock.Chunk(out, resp.token_ids_size());
        streamed += resp.token_ids_size();
      }
      if (resp.has_usage()) {
        out.prompt_tokens = resp.usage().prompt_tokens();
        out.output_tokens = resp.usage().completion_tokens();
        out.kv_bytes_held = resp.usage().kv_bytes_held();
        out.kv_bytes_full = resp.usage().kv_bytes_full();
      }
    }
    grpc::Status s = reader->Finish();
    if (!s.ok()) out.error = absl::StrCat("code ", s.error_code(), ": ", s.error_message());
    clock.Finish(out, streamed);
    return out;
  }

 private:
  xkv::v1::GenerateRequest MakeRequest(const std::string& prompt, int64_t output_tokens) const {
    xkv::v1::GenerateRequest r;
    r.set_prompt(prompt);
    r.set_max_tokens(static_cast<int32_t>(output_tokens));
    r.set_ignore_eos(true);
    r.mutable_sampling()->set_temperature(0);
    if (!o_.policy.empty()) r.mutable_kv_policy()->set_policy(o_.policy);
    if (o_.retention > 0) {
      r.mutable_kv_policy()->set_retention(o_.retention);
    } else if (o_.budget_fraction > 0) {
      r.mutable_kv_policy()->set_budget_fraction(o_.budget_fraction);
    }
    return r;
  }

  const ServeBenchOptions o_;
  std::unique_ptr<xkv::v1::Generation::Stub> stub_;
};

}  // namespace

void StreamClock::Chunk(ServeBenchRequest& out, int64_t tokens) {
  const std::chrono::steady_clock::time_point now = std::chrono::steady_clock::now();
  out.chunks.push_back({MsBetween(start_, now), tokens});
  if (first_) {
    out.ttft_ms = MsBetween(start_, now);
    first_ = false;
  } else {
    out.itl_ms.push_back(MsBetween(last_, now));
  }
  last_ = now;
}

void StreamClock::Finish(ServeBenchRequest& out, int64_t streamed) {
  out.e2e_ms = MsBetween(start_, std::chrono::steady_clock::now());
  if (!out.error.empty()) return;
  if (out.output_tokens == 0) out.output_tokens = streamed;
  if (out.output_tokens > 1) out.tpot_ms = (out.e2e_ms - out.ttft_ms) / (out.output_tokens - 1);
  out.ok = true;
}

absl::StatusOr<std::unique_ptr<ServeBenchClient>> MakeServeBenchClient(
    const ServeBenchOptions& options) {
  if (options.endpoint == "grpc") return std::make_unique<GrpcBenchClient>(options);
  if (options.endpoint == "openai") return MakeOpenAiBenchClient(options);
  return absl::InvalidArgumentError(
      absl::StrCat("unknown endpoint '", options.endpoint, "'; expected grpc or openai"));
}

}  // namespace xkv
