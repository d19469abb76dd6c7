#include "http/openai_response.h"

#include <algorithm>
#include <nlohmann/json.hpp>

namespace xkv {
namespace {

using Json = nlohmann::json;

bool IsChat(const ResponseMeta& m) { return m.endpoint == OpenAiEndpoint::kChatCompletions; }

std::string Dump(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace); }

// usage over every choice: the prompt once, completions summed; the KV figures of all choices
// together (each holds its own cache), retention averaged, layers summed per layer.
Json UsageJson(const ResponseMeta& meta, const std::vector<const xkv::v1::Usage*>& usages) {
  int64_t completion = 0, held = 0, full = 0;
  double retention_sum = 0;
  int retention_count = 0;
  bool reachable = true, profiled = false;
  std::vector<std::pair<int64_t, int64_t>> layers;  // kept tokens, bytes per layer
  for (const xkv::v1::Usage* u : usages) {
    completion += u->completion_tokens();
    held += u->kv_bytes_held();
    full += u->kv_bytes_full();
    if (u->has_retention()) retention_sum += u->retention(), ++retention_count;
    reachable = reachable && u->reachable();
    profiled = profiled || u->profiled();
    for (const xkv::v1::LayerCacheSize& l : u->layers()) {
      if (l.layer() < 0) continue;
      if (static_cast<size_t>(l.layer()) >= layers.size()) layers.resize(l.layer() + 1);
      layers[l.layer()].first += l.kept_tokens();
      layers[l.layer()].second += l.bytes();
    }
  }
  const int64_t prompt = usages.empty() ? 0 : usages[0]->prompt_tokens();
  Json kv = {{"kv_bytes_held", held},  {"kv_bytes_full", full}, {"retention", nullptr},
             {"reachable", reachable}, {"profiled", profiled},  {"policy", ""},
             {"profile_mode", ""}};
  if (retention_count > 0) kv["retention"] = retention_sum / retention_count;
  if (!usages.empty()) {
    kv["policy"] = usages[0]->policy();
    kv["profile_mode"] = usages[0]->profile_mode();
  }
  if (meta.kv_layers) {
    Json list = Json::array();
    for (size_t l = 0; l < layers.size(); ++l) {
      list.push_back({{"layer", l}, {"kept_tokens", layers[l].first}, {"bytes", layers[l].second}});
    }
    kv["layers"] = std::move(list);
  }
  return {{"prompt_tokens", prompt},
          {"completion_tokens", completion},
          {"total_tokens", prompt + completion},
          {"xkv", std::move(kv)}};
}

Json Envelope(const ResponseMeta& meta, bool chunk) {
  const char* object =
      IsChat(meta) ? (chunk ? "chat.completion.chunk" : "chat.completion") : "text_completion";
  Json j = {{"id", meta.id},
            {"object", object},
            {"created", meta.created},
            {"model", meta.model},
            {"system_fingerprint", nullptr},
            {"choices", Json::array()}};
  if (chunk && meta.include_usage) j["usage"] = nullptr;
  return j;
}

std::string Event(const Json& j) { return "data: " + Dump(j) + "\n\n"; }

// One streamed choice: chat {"delta": …}, completions {"text": …}.
std::string ChoiceChunk(const ResponseMeta& meta, int index, Json delta, const std::string& text,
                        const Json& finish_reason) {
  Json j = Envelope(meta, true);
  Json choice = {{"index", index}, {"logprobs", nullptr}, {"finish_reason", finish_reason}};
  if (IsChat(meta)) {
    choice["delta"] = std::move(delta);
  } else {
    choice["text"] = text;
  }
  j["choices"].push_back(std::move(choice));
  return Event(j);
}

}  // namespace

const char* FinishReasonName(xkv::v1::FinishReason reason) {
  switch (reason) {
    case xkv::v1::FINISH_REASON_LENGTH:
      return "length";
    default:
      return "stop";
  }
}

std::string CompletionBody(const ResponseMeta& meta, const std::vector<ChoiceResult>& choices) {
  Json j = Envelope(meta, false);
  std::vector<const xkv::v1::Usage*> usages;
  for (size_t i = 0; i < choices.size(); ++i) {
    const ChoiceResult& c = choices[i];
    Json choice = {{"index", i},
                   {"logprobs", nullptr},
                   {"finish_reason", FinishReasonName(c.usage.finish_reason())}};
    if (IsChat(meta)) {
      choice["message"] = {{"role", "assistant"}, {"content", c.text}, {"refusal", nullptr}};
    } else {
      choice["text"] = c.text;
    }
    j["choices"].push_back(std::move(choice));
    usages.push_back(&c.usage);
  }
  j["usage"] = UsageJson(meta, usages);
  return Dump(j);
}

std::string RoleChunkEvent(const ResponseMeta& meta, int index) {
  return ChoiceChunk(meta, index, {{"role", "assistant"}, {"content", ""}}, "", nullptr);
}

std::string TextChunkEvent(const ResponseMeta& meta, int index, const std::string& text) {
  return ChoiceChunk(meta, index, {{"content", text}}, text, nullptr);
}

std::string FinishChunkEvent(const ResponseMeta& meta, int index, xkv::v1::FinishReason reason) {
  return ChoiceChunk(meta, index, Json::object(), "", FinishReasonName(reason));
}

std::string UsageChunkEvent(const ResponseMeta& meta, const std::vector<xkv::v1::Usage>& usages) {
  Json j = Envelope(meta, true);
  std::vector<const xkv::v1::Usage*> ptrs;
  for (const xkv::v1::Usage& u : usages) ptrs.push_back(&u);
  j["usage"] = UsageJson(meta, ptrs);
  return Event(j);
}

std::string ErrorEvent(const std::string& error_body) { return "data: " + error_body + "\n\n"; }

}  // namespace xkv
