#include "http/openai_routes.h"

#include <httplib.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "base/same_secret.h"
#include "base/status_macros.h"
#include "coordinator/generation_service.h"
#include "http/choice_collector.h"
#include "http/client_connection.h"
#include "http/openai_error.h"
#include "http/openai_request.h"
#include "http/openai_response.h"

namespace xkv {
namespace {

using Json = nlohmann::json;

constexpr char kJson[] = "application/json";
// How often a non-streamed request looks whether its client is still connected (at least; also at
// every token).
constexpr absl::Duration kClientCheckInterval = absl::Milliseconds(200);

void ReplyError(httplib::Response& res, const absl::Status& status) {
  const OpenAiErrorReply e = ToOpenAiError(status);
  res.status = e.http_status;
  res.set_content(e.body, kJson);
}

// The status an HTTP error of the server itself (no route, body too large, bad request) means.
absl::Status StatusOfHttpError(const httplib::Request& req, int http_status) {
  switch (http_status) {
    case 404:
      return absl::NotFoundError(absl::StrCat("no route for ", req.method, " ", req.path));
    case 413:
      return FieldError(
          absl::StatusCode::kOutOfRange, "",
          "the request body is larger than the server's limit (--http-max-body-bytes)",
          "request_too_large");
    case 400:
      return absl::InvalidArgumentError("malformed HTTP request");
    default:
      return absl::InternalError(absl::StrCat("HTTP status ", http_status));
  }
}

class Routes : public std::enable_shared_from_this<Routes> {
 public:
  Routes(Coordinator* coordinator, OpenAiRoutesOptions options)
      : coordinator_(coordinator),
        options_(std::move(options)),
        created_(absl::ToUnixSeconds(absl::Now())),
        rng_(std::random_device{}()) {}

  void Mount(httplib::Server& server);

 private:
  // A generation slot, released when the last copy of the pointer goes; null when all are taken.
  std::shared_ptr<void> AcquireSlot();
  uint64_t Random();
  absl::Status Authorize(const httplib::Request& req) const;
  absl::Status CheckModel(const std::string& model) const;
  std::string ModelsBody(const std::string* only) const;
  void Generate(OpenAiEndpoint endpoint, const httplib::Request& req, httplib::Response& res);
  struct Submitted {
    std::shared_ptr<ChoiceCollector> collector;
    std::vector<uint64_t> ids;  // one per choice
  };
  // Submits the n choices; on failure cancels the ones already submitted.
  absl::StatusOr<Submitted> SubmitChoices(const OpenAiRequest& request);
  // Waits for every choice, then writes the one response; a client that goes away meanwhile has
  // its requests cancelled (nothing is written).
  void Respond(const httplib::Request& req, const ResponseMeta& meta, const Submitted& submitted,
               httplib::Response& res);
  void Stream(const ResponseMeta& meta, std::shared_ptr<ChoiceCollector> collector,
              std::vector<uint64_t> ids, std::shared_ptr<void> slot, httplib::Response& res);

  Coordinator* const coordinator_;
  const OpenAiRoutesOptions options_;
  const int64_t created_;
  std::atomic<int> in_flight_{0};
  std::mutex rng_mu_;
  std::mt19937_64 rng_;  // guarded by rng_mu_
};

std::shared_ptr<void> Routes::AcquireSlot() {
  if (in_flight_.fetch_add(1) >= options_.max_concurrent) {
    in_flight_.fetch_sub(1);
    return nullptr;
  }
  struct Slot {
    std::shared_ptr<Routes> routes;
    ~Slot() {
      if (routes != nullptr) routes->in_flight_.fetch_sub(1);
    }
  };
  auto slot = std::make_shared<Slot>();
  slot->routes = shared_from_this();
  return slot;
}

uint64_t Routes::Random() {
  std::lock_guard<std::mutex> lock(rng_mu_);
  return rng_();
}

absl::Status Routes::Authorize(const httplib::Request& req) const {
  if (options_.api_key.empty()) return absl::OkStatus();
  const std::string header = req.get_header_value("Authorization");
  constexpr absl::string_view kBearer = "Bearer ";
  if (absl::StartsWith(header, kBearer) &&
      SameSecret(absl::string_view(header).substr(kBearer.size()), options_.api_key)) {
    return absl::OkStatus();
  }
  return FieldError(
      absl::StatusCode::kUnauthenticated, "",
      header.empty() ? "missing API key: send Authorization: Bearer <key>" : "incorrect API key",
      "invalid_api_key");
}

absl::Status Routes::CheckModel(const std::string& model) const {
  if (model == options_.model_name) return absl::OkStatus();
  return FieldError(absl::StatusCode::kNotFound, "model",
                    absl::StrCat("the model '", model, "' does not exist; this server serves '",
                                 options_.model_name, "'"),
                    "model_not_found");
}

std::string Routes::ModelsBody(const std::string* only) const {
  const Json model = {{"id", options_.model_name},
                      {"object", "model"},
                      {"created", created_},
                      {"owned_by", "xkv"},
                      {"max_model_len", coordinator_->config().context_length}};
  if (only != nullptr) return model.dump();
  return Json{{"object", "list"}, {"data", Json::array({model})}}.dump();
}

absl::StatusOr<Routes::Submitted> Routes::SubmitChoices(const OpenAiRequest& request) {
  RETURN_IF_ERROR(ValidatePresence(request.generate));
  xkv::v1::GenerateRequest g = request.generate;
  if (!request.has_seed) g.mutable_sampling()->set_seed(Random());
  std::vector<GenerateParams> choices = ChoicesFromProto(g);
  Submitted out{ChoiceCollector::Create(static_cast<int>(choices.size())), {}};
  for (size_t i = 0; i < choices.size(); ++i) {
    absl::StatusOr<uint64_t> id =
        coordinator_->Submit(std::move(choices[i]), out.collector->SinkFor(static_cast<int>(i)));
    if (!id.ok()) {
      for (uint64_t done : out.ids) coordinator_->Cancel(done);
      return id.status();
    }
    out.ids.push_back(*id);
  }
  return out;
}

void Routes::Generate(OpenAiEndpoint endpoint, const httplib::Request& req,
                      httplib::Response& res) {
  absl::StatusOr<OpenAiRequest> request = ParseOpenAiRequest(req.body, endpoint);
  if (!request.ok()) return ReplyError(res, request.status());
  if (absl::Status s = CheckModel(request->model); !s.ok()) return ReplyError(res, s);
  std::shared_ptr<void> slot = AcquireSlot();
  if (slot == nullptr) {
    return ReplyError(
        res, absl::ResourceExhaustedError(absl::StrCat("too many requests in flight (limit ",
                                                       options_.max_concurrent, "); retry later")));
  }
  const bool chat = endpoint == OpenAiEndpoint::kChatCompletions;
  ResponseMeta meta;
  meta.endpoint = endpoint;
  meta.id = absl::StrCat(chat ? "chatcmpl-" : "cmpl-", absl::Hex(Random(), absl::kZeroPad16));
  meta.created = absl::ToUnixSeconds(absl::Now());
  meta.model = options_.model_name;
  meta.include_usage = request->include_usage;
  meta.kv_layers = request->kv_layers;
  meta.logprobs = request->generate.sampling().has_logprobs();
  meta.token_bytes = [this](int32_t id) { return coordinator_->tokenizer().TokenBytes(id); };
  absl::StatusOr<Submitted> submitted = SubmitChoices(*request);
  if (!submitted.ok()) return ReplyError(res, submitted.status());
  if (request->stream) {
    Stream(meta, std::move(submitted->collector), std::move(submitted->ids), std::move(slot), res);
  } else {
    Respond(req, meta, *submitted, res);
  }
}

void Routes::Respond(const httplib::Request& req, const ResponseMeta& meta,
                     const Submitted& submitted, httplib::Response& res) {
  const ClientConnection client(req.local_port, req.remote_addr, req.remote_port);
  std::vector<ChoiceResult> results(submitted.ids.size());
  absl::Status error;
  std::vector<ChoiceEvent> events;
  for (bool more = true; more;) {
    more = submitted.collector->Next(&events, kClientCheckInterval);
    if (more && client.Gone()) {
      for (uint64_t id : submitted.ids) coordinator_->Cancel(id);
      return;
    }
    for (ChoiceEvent& e : events) {
      if (e.kind == ChoiceEvent::Kind::kText) {
        results[e.index].text += e.text;
        for (SampledLogprobs& l : e.logprobs) results[e.index].logprobs.push_back(std::move(l));
      }
      if (e.kind == ChoiceEvent::Kind::kDone) results[e.index].usage = std::move(e.usage);
      if (e.kind == ChoiceEvent::Kind::kError && error.ok()) error = e.error;
    }
    events.clear();
  }
  if (!error.ok()) return ReplyError(res, error);
  res.set_content(CompletionBody(meta, results), kJson);
}

void Routes::Stream(const ResponseMeta& meta, std::shared_ptr<ChoiceCollector> collector,
                    std::vector<uint64_t> ids, std::shared_ptr<void> slot, httplib::Response& res) {
  struct State {
    ResponseMeta meta;
    std::shared_ptr<ChoiceCollector> collector;
    std::vector<uint64_t> ids;
    std::shared_ptr<void> slot;
    std::vector<xkv::v1::Usage> usages;
    std::vector<int64_t> text_offsets;  // per choice: completion bytes streamed with logprobs
    bool started = false;
    bool finished = false;
  };
  auto st = std::make_shared<State>();
  st->meta = meta;
  st->collector = std::move(collector);
  st->usages.resize(ids.size());
  st->text_offsets.resize(ids.size());
  st->ids = std::move(ids);
  st->slot = std::move(slot);
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      "text/event-stream",
      [st](size_t, httplib::DataSink& sink) {
        std::string out;
        if (!st->started && st->meta.endpoint == OpenAiEndpoint::kChatCompletions) {
          for (size_t i = 0; i < st->ids.size(); ++i) {
            out += RoleChunkEvent(st->meta, static_cast<int>(i));
          }
        }
        st->started = true;
        std::vector<ChoiceEvent> events;
        const bool more = st->collector->Next(&events, absl::Milliseconds(500));
        for (const ChoiceEvent& e : events) {
          if (e.kind == ChoiceEvent::Kind::kText) {
            out +=
                TextChunkEvent(st->meta, e.index, e.text, e.logprobs, &st->text_offsets[e.index]);
          } else if (e.kind == ChoiceEvent::Kind::kDone) {
            out += FinishChunkEvent(st->meta, e.index, e.usage.finish_reason());
            st->usages[e.index] = e.usage;
          } else {
            out += ErrorEvent(ToOpenAiError(e.error).body);
          }
        }
        if (!more) {
          if (st->meta.include_usage) out += UsageChunkEvent(st->meta, st->usages);
          out += kSseDone;
        }
        if (!out.empty() && !sink.write(out.data(), out.size())) return false;  // client gone
        if (!more) {
          st->finished = true;
          sink.done();
        }
        return true;
      },
      [st, coordinator = coordinator_](bool) {
        if (st->finished) return;
        for (uint64_t id : st->ids) coordinator->Cancel(id);  // the client went away
      });
}

void Routes::Mount(httplib::Server& server) {
  std::shared_ptr<Routes> self = shared_from_this();
  server.set_pre_routing_handler([self](const httplib::Request& req, httplib::Response& res) {
    if (!absl::StartsWith(req.path, "/v1/")) return httplib::Server::HandlerResponse::Unhandled;
    absl::Status s = self->Authorize(req);
    if (s.ok()) return httplib::Server::HandlerResponse::Unhandled;
    ReplyError(res, s);
    res.set_header("WWW-Authenticate", "Bearer");
    res.set_header("Connection", "close");  // the body was not read
    return httplib::Server::HandlerResponse::Handled;
  });
  server.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;  // a route's own error
    const int status = res.status;
    ReplyError(res, StatusOfHttpError(req, status));
    res.status = status;
  });
  server.set_exception_handler(
      [](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
        std::string what = "unknown exception";
        try {
          std::rethrow_exception(ep);
        } catch (const std::exception& e) {
          what = e.what();
        } catch (...) {
        }
        ReplyError(res, absl::InternalError(what));
      });
  server.Get("/v1/models", [self](const httplib::Request&, httplib::Response& res) {
    res.set_content(self->ModelsBody(nullptr), kJson);
  });
  server.Get("/v1/models/(.+)", [self](const httplib::Request& req, httplib::Response& res) {
    const std::string id = req.matches[1];
    if (absl::Status s = self->CheckModel(id); !s.ok()) return ReplyError(res, s);
    res.set_content(self->ModelsBody(&id), kJson);
  });
  server.Post("/v1/chat/completions", [self](const httplib::Request& req, httplib::Response& res) {
    self->Generate(OpenAiEndpoint::kChatCompletions, req, res);
  });
  server.Post("/v1/completions", [self](const httplib::Request& req, httplib::Response& res) {
    self->Generate(OpenAiEndpoint::kCompletions, req, res);
  });
}

}  // namespace

void MountOpenAiRoutes(httplib::Server& server, Coordinator* coordinator,
                       const OpenAiRoutesOptions& options) {
  std::make_shared<Routes>(coordinator, options)->Mount(server);
}

}  // namespace xkv
