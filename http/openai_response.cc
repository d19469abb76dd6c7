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

// OpenAI's logprobs object for `logprobs` (tokens from meta.token_bytes). Chat: {"content":
// [{token, logprob, bytes, top_logprobs}], "refusal"}; completions: {tokens, token_logprobs,
// top_logprobs: [{token: logprob}], text_offset}, offsets from *text_offset on (advanced).
Json LogprobsJson(const ResponseMeta& meta, absl::Span<const SampledLogprobs> logprobs,
                  int64_t* text_offset) {
  if (!meta.logprobs) return nullptr;
  const auto token = [&](int32_t id) { return meta.token_bytes ? meta.token_bytes(id) : ""; };
  const auto bytes = [](const std::string& s) {
    Json b = Json::array();
    for (unsigned char c : s) b.push_back(c);
    return b;
  };
  if (IsChat(meta)) {
    Json content = Json::array();
    for (const SampledLogprobs& l : logprobs) {
      const std::string t = token(l.token.id);
      Json top = Json::array();
      for (const TokenLogprob& alt : l.top) {
        const std::string a = token(alt.id);
        top.push_back({{"token", a}, {"logprob", alt.logprob}, {"bytes", bytes(a)}});
      }
      content.push_back(
          {{"token", t}, {"logprob", l.token.logprob}, {"bytes", bytes(t)}, {"top_logprobs", top}});
    }
    return {{"content", std::move(content)}, {"refusal", nullptr}};
  }
  Json tokens = Json::array(), token_logprobs = Json::array(), top = Json::array(),
       offsets = Json::array();
  for (const SampledLogprobs& l : logprobs) {
    const std::string t = token(l.token.id);
    tokens.push_back(t);
    token_logprobs.push_back(l.token.logprob);
    Json alts = Json::object();
    for (const TokenLogprob& alt : l.top) alts[token(alt.id)] = alt.logprob;
    top.push_back(std::move(alts));
    offsets.push_back(*text_offset);
    *text_offset += static_cast<int64_t>(t.size());
  }
  return {{"tokens", std::move(tokens)},
          {"token_logprobs", std::move(token_logprobs)},
          {"top_logprobs", std::move(top)},
          {"text_offset", std::move(offsets)}};
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
                        const Json& finish_reason, Json logprobs = nullptr) {
  Json j = Envelope(meta, true);
  Json choice = {
      {"index", index}, {"logprobs", std::move(logprobs)}, {"finish_reason", finish_reason}};
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
    int64_t offset = 0;
    Json choice = {{"index", i},
                   {"logprobs", LogprobsJson(meta, c.logprobs, &offset)},
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

std::string TextChunkEvent(const ResponseMeta& meta, int index, const std::string& text,
                           absl::Span<const SampledLogprobs> logprobs, int64_t* text_offset) {
  return ChoiceChunk(meta, index, {{"content", text}}, text, nullptr,
                     LogprobsJson(meta, logprobs, text_offset));
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
