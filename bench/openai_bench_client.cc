#include "bench/openai_bench_client.h"

#include <httplib.h>

#include <nlohmann/json.hpp>
#include <string>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace xkv {
namespace {

using Json = nlohmann::json;

class OpenAiBenchClient final : public ServeBenchClient {
 public:
  OpenAiBenchClient(const ServeBenchOptions& o, std::string base_url)
      : o_(o), client_(std::move(base_url)) {
    const time_t timeout = static_cast<time_t>(o.timeout_s);
    client_.set_read_timeout(timeout);
    client_.set_write_timeout(timeout);
    if (!o.api_key.empty()) client_.set_bearer_token_auth(o.api_key);
  }

  absl::Status ResolveModel() {
    model_ = o_.model_name;
    if (!model_.empty()) return absl::OkStatus();
    httplib::Result r = client_.Get("/v1/models");
    if (!r || r->status != 200) {
      return absl::UnavailableError(
          absl::StrCat("GET /v1/models failed: ", r ? absl::StrCat("HTTP ", r->status, " ", r->body)
                                                    : httplib::to_string(r.error())));
    }
    const Json j = Json::parse(r->body, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object() || !j.contains("data") || !j["data"].is_array() || j["data"].empty() ||
        !j["data"][0].contains("id") || !j["data"][0]["id"].is_string()) {
      return absl::UnavailableError("GET /v1/models listed no model; pass --model-name");
    }
    model_ = j["data"][0]["id"].get<std::string>();
    return absl::OkStatus();
  }

  ServeBenchRequest Run(const std::string& prompt, int64_t output_tokens) override {
    Json body = {
        {"model", model_},   {"prompt", prompt}, {"max_tokens", output_tokens},
        {"temperature", 0},  {"stream", true},   {"stream_options", {{"include_usage", true}}},
        {"ignore_eos", true}};
    if (!o_.policy.empty() || o_.retention > 0 || o_.budget_fraction > 0) {
      Json kv = Json::object();  // xkv's per-request KV override (other servers reject it)
      if (!o_.policy.empty()) kv["policy"] = o_.policy;
      if (o_.retention > 0) {
        kv["retention"] = o_.retention;
      } else if (o_.budget_fraction > 0) {
        kv["budget_fraction"] = o_.budget_fraction;
      }
      body["xkv"] = std::move(kv);
    }
    ServeBenchRequest out;
    StreamClock clock;
    int64_t streamed = 0;
    std::string pending, all;
    httplib::Request req;
    req.method = "POST";
    req.path = "/v1/completions";
    req.set_header("Content-Type", "application/json");
    req.set_header("Accept", "text/event-stream");
    req.body = body.dump();
    req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
      pending.append(data, n);
      if (all.size() < 4096) all.append(data, std::min<size_t>(n, 4096 - all.size()));
      for (size_t end; (end = pending.find("\n\n")) != std::string::npos;) {
        const std::string event = pending.substr(0, end);
        pending.erase(0, end + 2);
        OnEvent(event, clock, out, streamed);
      }
      return true;
    };
    httplib::Result r = client_.send(req);
    if (!r) {
      out.error = absl::StrCat("HTTP request failed: ", httplib::to_string(r.error()));
    } else if (r->status != 200) {
      out.error = absl::StrCat("HTTP ", r->status, ": ", all);
    }
    clock.Finish(out, streamed);
    return out;
  }

 private:
  // One server-sent event: `data: {chunk}` (text and, last, usage), `data: [DONE]`, or an error.
  static void OnEvent(const std::string& event, StreamClock& clock, ServeBenchRequest& out,
                      int64_t& streamed) {
    if (!absl::StartsWith(event, "data: ")) return;  // comments, other fields
    const std::string data = event.substr(6);
    if (data == "[DONE]") return;
    const Json j = Json::parse(data, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object()) return;
    if (j.contains("error")) {
      out.error = j["error"].dump();
      return;
    }
    if (j.contains("choices") && j["choices"].is_array()) {
      for (const Json& c : j["choices"]) {
        if (c.contains("text") && c["text"].is_string() && !c["text"].get<std::string>().empty()) {
          clock.Chunk(out, 1);  // one text chunk per token (OpenAI streams count none)
          ++streamed;
        }
      }
    }
    if (j.contains("usage") && j["usage"].is_object()) {
      const Json& u = j["usage"];
      out.prompt_tokens = u.value("prompt_tokens", int64_t{0});
      out.output_tokens = u.value("completion_tokens", int64_t{0});
      if (u.contains("xkv") && u["xkv"].is_object()) {
        out.kv_bytes_held = u["xkv"].value("kv_bytes_held", int64_t{0});
        out.kv_bytes_full = u["xkv"].value("kv_bytes_full", int64_t{0});
      }
    }
  }

  const ServeBenchOptions o_;
  httplib::Client client_;
  std::string model_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<ServeBenchClient>> MakeOpenAiBenchClient(
    const ServeBenchOptions& options) {
  std::string base = options.server;
  if (!absl::StartsWith(base, "http://") && !absl::StartsWith(base, "https://")) {
    base = "http://" + base;
  }
  auto client = std::make_unique<OpenAiBenchClient>(options, base);
  if (absl::Status s = client->ResolveModel(); !s.ok()) return s;
  return client;
}

}  // namespace xkv
