#include "http/openai_request.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"
#include "http/openai_error.h"

namespace xkv {
namespace {

using Json = nlohmann::json;

absl::Status Invalid(absl::string_view param, absl::string_view message) {
  return FieldError(absl::StatusCode::kInvalidArgument, param, message);
}

absl::Status WrongType(absl::string_view field, absl::string_view expected) {
  return Invalid(field, absl::StrCat(field, " must be ", expected));
}

absl::Status Unsupported(absl::string_view field, absl::string_view what) {
  return Invalid(field, absl::StrCat(field, ": ", what, " is not supported by this server"));
}

// The value of an integer field within [lo, hi]; nullopt when null.
absl::StatusOr<std::optional<int64_t>> IntField(const Json& v, absl::string_view field, int64_t lo,
                                                int64_t hi) {
  if (v.is_null()) return std::nullopt;
  if (!v.is_number_integer()) return WrongType(field, "an integer");
  const bool too_big = v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(hi);
  const int64_t x = too_big ? hi : v.get<int64_t>();
  if (too_big || x < lo || x > hi) {
    return Invalid(field, absl::StrCat(field, " is ", v.dump(), "; it must be an integer in [", lo,
                                       ", ", hi, "]"));
  }
  return x;
}

absl::StatusOr<std::optional<double>> NumberField(const Json& v, absl::string_view field) {
  if (v.is_null()) return std::nullopt;
  if (!v.is_number()) return WrongType(field, "a number");
  return v.get<double>();
}

// A number the GenerateRequest carries as a 32-bit float: one beyond float's range is refused
// here (converting it would be undefined behaviour).
absl::StatusOr<std::optional<float>> FloatField(const Json& v, absl::string_view field) {
  ASSIGN_OR_RETURN(std::optional<double> x, NumberField(v, field));
  if (!x.has_value()) return std::nullopt;
  if (!(std::abs(*x) <= std::numeric_limits<float>::max())) {
    return Invalid(field, absl::StrCat(field, " is ", v.dump(), "; it must be within ",
                                       std::numeric_limits<float>::max(), " in magnitude"));
  }
  return static_cast<float>(*x);
}

absl::StatusOr<std::optional<bool>> BoolField(const Json& v, absl::string_view field) {
  if (v.is_null()) return std::nullopt;
  if (!v.is_boolean()) return WrongType(field, "true or false");
  return v.get<bool>();
}

absl::StatusOr<std::optional<std::string>> StringField(const Json& v, absl::string_view field) {
  if (v.is_null()) return std::nullopt;
  if (!v.is_string()) return WrongType(field, "a string");
  return v.get<std::string>();
}

constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();
constexpr int64_t kInt32Min = std::numeric_limits<int32_t>::min();
constexpr int64_t kInt64Max = std::numeric_limits<int64_t>::max();
constexpr int64_t kInt64Min = std::numeric_limits<int64_t>::min();

// A message's content: a string, or a list of {"type": "text", "text": ...} parts (joined by
// newlines); null is empty.
absl::StatusOr<std::string> MessageContent(const Json& v, const std::string& field) {
  if (v.is_null()) return std::string();
  if (v.is_string()) return v.get<std::string>();
  if (!v.is_array()) return WrongType(field, "a string or a list of text parts");
  std::vector<std::string> texts;
  for (size_t i = 0; i < v.size(); ++i) {
    const std::string part = absl::StrCat(field, "[", i, "]");
    const Json& p = v[i];
    if (!p.is_object()) return WrongType(part, "an object");
    ASSIGN_OR_RETURN(std::optional<std::string> type,
                     StringField(p.value("type", Json()), part + ".type"));
    if (type != "text") {
      return Unsupported(part + ".type",
                         absl::StrCat("content part type '", type.value_or(""), "' (only 'text')"));
    }
    ASSIGN_OR_RETURN(std::optional<std::string> text,
                     StringField(p.value("text", Json()), part + ".text"));
    if (!text.has_value()) return WrongType(part + ".text", "a string");
    texts.push_back(*std::move(text));
  }
  return absl::StrJoin(texts, "\n");
}

absl::Status ParseMessages(const Json& v, xkv::v1::GenerateRequest* out) {
  if (!v.is_array()) return WrongType("messages", "a list of messages");
  xkv::v1::ChatMessages* chat = out->mutable_chat();  // empty: the core names the error
  for (size_t i = 0; i < v.size(); ++i) {
    const std::string field = absl::StrCat("messages[", i, "]");
    const Json& m = v[i];
    if (!m.is_object()) return WrongType(field, "an object with role and content");
    xkv::v1::ChatMessage* msg = chat->add_messages();
    for (const auto& [key, value] : m.items()) {
      const std::string f = absl::StrCat(field, ".", key);
      if (key == "role") {
        ASSIGN_OR_RETURN(std::optional<std::string> role, StringField(value, f));
        if (!role.has_value()) return WrongType(f, "a string");
        msg->set_role(*role == "developer" ? "system" : *role);  // OpenAI's newer name
      } else if (key == "content") {
        ASSIGN_OR_RETURN(std::string content, MessageContent(value, f));
        msg->set_content(std::move(content));
      } else if (key == "name") {
        RETURN_IF_ERROR(StringField(value, f).status());  // informational, like OpenAI
      } else {
        return Unsupported(f, absl::StrCat("message field '", key, "'"));
      }
    }
    if (!m.contains("role")) return WrongType(field + ".role", "a string");
  }
  return absl::OkStatus();
}

absl::Status ParsePrompt(const Json& v, xkv::v1::GenerateRequest* out) {
  if (v.is_string()) {
    out->set_prompt(v.get<std::string>());
    return absl::OkStatus();
  }
  if (v.is_array() && v.size() == 1 && v[0].is_string()) {
    out->set_prompt(v[0].get<std::string>());
    return absl::OkStatus();
  }
  if (v.is_array() && !v.empty() && v[0].is_number()) {
    return Unsupported("prompt", "a prompt of token ids");
  }
  if (v.is_array() && v.size() > 1) return Unsupported("prompt", "more than one prompt");
  return WrongType("prompt", "a string");
}

absl::Status ParseStop(const Json& v, xkv::v1::SamplingOptions* s) {
  if (v.is_null()) return absl::OkStatus();
  if (v.is_string()) {
    s->add_stop(v.get<std::string>());
    return absl::OkStatus();
  }
  if (!v.is_array()) return WrongType("stop", "a string or a list of strings");
  for (size_t i = 0; i < v.size(); ++i) {
    if (!v[i].is_string()) return WrongType(absl::StrCat("stop[", i, "]"), "a string");
    s->add_stop(v[i].get<std::string>());
  }
  return absl::OkStatus();
}

// The `xkv` object: policy, one target (retention / budget_*), profile_mode, allocator, floor,
// layers (KvPolicySpec's fields, as gRPC).
absl::Status ParseXkv(const Json& v, OpenAiRequest* out) {
  if (v.is_null()) return absl::OkStatus();
  if (!v.is_object()) return WrongType("xkv", "an object");
  xkv::v1::KvPolicySpec* kv = out->generate.mutable_kv_policy();
  int targets = 0;
  for (const auto& [key, value] : v.items()) {
    const std::string f = "xkv." + key;
    if (key == "policy" || key == "profile_mode" || key == "allocator") {
      ASSIGN_OR_RETURN(std::optional<std::string> s, StringField(value, f));
      if (key == "policy") kv->set_policy(s.value_or(""));
      if (key == "profile_mode") kv->set_profile_mode(s.value_or(""));
      if (key == "allocator") kv->set_allocator(s.value_or(""));
    } else if (key == "floor" || key == "cap") {
      ASSIGN_OR_RETURN(std::optional<double> x, NumberField(value, f));
      if (x.has_value() && key == "floor") kv->set_floor(*x);
      if (x.has_value() && key == "cap") kv->set_cap(*x);
    } else if (key == "retention" || key == "budget_fraction") {
      ASSIGN_OR_RETURN(std::optional<double> x, NumberField(value, f));
      if (!x.has_value()) continue;
      ++targets;
      if (key == "retention") kv->set_retention(*x);
      if (key == "budget_fraction") kv->set_budget_fraction(*x);
    } else if (key == "budget_tokens" || key == "budget_bytes") {
      ASSIGN_OR_RETURN(std::optional<int64_t> x, IntField(value, f, kInt64Min, kInt64Max));
      if (!x.has_value()) continue;
      ++targets;
      if (key == "budget_tokens") kv->set_budget_tokens(*x);
      if (key == "budget_bytes") kv->set_budget_bytes(*x);
    } else if (key == "layers") {
      ASSIGN_OR_RETURN(std::optional<bool> b, BoolField(value, f));
      out->kv_layers = b.value_or(false);
    } else {
      return Invalid(
          f, absl::StrCat("unknown field '", f,
                          "'; expected policy, retention, budget_tokens, budget_bytes, "
                          "budget_fraction, profile_mode, allocator, floor, cap or layers"));
    }
  }
  if (targets > 1) {
    return Invalid("xkv",
                   "set at most one KV budget target (xkv.retention, xkv.budget_tokens, "
                   "xkv.budget_bytes, xkv.budget_fraction)");
  }
  return absl::OkStatus();
}

// Fields this server does not implement: accepted only at their no-op value.
bool IsNoOp(const std::string& key, const Json& v) {
  if (v.is_null()) return true;
  if (key == "echo" || key == "parallel_tool_calls") {
    return v.is_boolean() && !v.get<bool>();
  }
  if (key == "best_of") return v.is_number_integer() && v.get<int64_t>() == 1;
  if (key == "logit_bias") return v.is_object() && v.empty();
  if (key == "response_format") return v.is_object() && v.value("type", Json()) == "text";
  return false;
}

constexpr const char* kUnsupported[] = {"logit_bias",     "echo",          "suffix",
                                        "best_of",        "tools",         "tool_choice",
                                        "functions",      "function_call", "parallel_tool_calls",
                                        "response_format"};

}  // namespace

absl::StatusOr<OpenAiRequest> ParseOpenAiRequest(absl::string_view body, OpenAiEndpoint endpoint) {
  Json j;
  try {
    j = Json::parse(body.begin(), body.end());
  } catch (const Json::exception& e) {  // parse_error, and out_of_range for a number like 1e400
    return Invalid("", absl::StrCat("the request body is not valid JSON: ", e.what()));
  }
  if (!j.is_object()) return Invalid("", "the request body must be a JSON object");
  const bool chat = endpoint == OpenAiEndpoint::kChatCompletions;
  OpenAiRequest r;
  r.endpoint = endpoint;
  xkv::v1::GenerateRequest& g = r.generate;
  xkv::v1::SamplingOptions* s = g.mutable_sampling();
  bool has_input = false;
  std::optional<int64_t> max_tokens, max_completion_tokens, top_logprobs;
  bool chat_logprobs = false;
  for (const auto& [key, v] : j.items()) {
    if (key == "model") {
      ASSIGN_OR_RETURN(std::optional<std::string> m, StringField(v, key));
      r.model = m.value_or("");
    } else if (key == (chat ? "messages" : "prompt")) {
      RETURN_IF_ERROR(chat ? ParseMessages(v, &g) : ParsePrompt(v, &g));
      has_input = true;
    } else if (key == "max_tokens") {
      ASSIGN_OR_RETURN(max_tokens, IntField(v, key, kInt32Min, kInt32Max));
    } else if (key == "max_completion_tokens" && chat) {
      ASSIGN_OR_RETURN(max_completion_tokens, IntField(v, key, kInt32Min, kInt32Max));
    } else if (key == "temperature") {
      ASSIGN_OR_RETURN(std::optional<float> x, FloatField(v, key));
      if (x.has_value()) s->set_temperature(*x);
    } else if (key == "top_p") {
      ASSIGN_OR_RETURN(std::optional<float> x, FloatField(v, key));
      if (x.has_value()) s->set_top_p(*x);
    } else if (key == "min_p" || key == "presence_penalty" || key == "frequency_penalty") {
      ASSIGN_OR_RETURN(std::optional<float> x, FloatField(v, key));
      const float f = x.value_or(0.f);
      if (key == "min_p") s->set_min_p(f);
      if (key == "presence_penalty") s->set_presence_penalty(f);
      if (key == "frequency_penalty") s->set_frequency_penalty(f);
    } else if (key == "repetition_penalty") {  // vLLM's extra parameter; unset: 1 (off)
      ASSIGN_OR_RETURN(std::optional<float> x, FloatField(v, key));
      if (x.has_value()) s->set_repetition_penalty(*x);
    } else if (key == "top_k") {
      ASSIGN_OR_RETURN(std::optional<int64_t> x, IntField(v, key, kInt32Min, kInt32Max));
      s->set_top_k(static_cast<int32_t>(x.value_or(0)));
    } else if (key == "seed") {
      if (!v.is_null() && !v.is_number_integer()) return WrongType(key, "an integer");
      r.has_seed = !v.is_null();
      if (r.has_seed) {
        s->set_seed(v.is_number_unsigned() ? v.get<uint64_t>()
                                           : static_cast<uint64_t>(v.get<int64_t>()));
      }
    } else if (key == "stop") {
      RETURN_IF_ERROR(ParseStop(v, s));
    } else if (key == "n") {
      // 0 is "unset" on the gRPC wire; in JSON an explicit 0 is wrong. The upper bound is
      // ValidatePresence's.
      ASSIGN_OR_RETURN(std::optional<int64_t> x, IntField(v, key, 1, kInt32Max));
      s->set_n(static_cast<int32_t>(x.value_or(1)));
    } else if (key == "stream") {
      ASSIGN_OR_RETURN(std::optional<bool> b, BoolField(v, key));
      r.stream = b.value_or(false);
    } else if (key == "stream_options") {
      if (v.is_null()) continue;
      if (!v.is_object()) return WrongType(key, "an object");
      for (const auto& [k2, v2] : v.items()) {
        if (k2 != "include_usage") return Unsupported("stream_options." + k2, "this option");
        ASSIGN_OR_RETURN(std::optional<bool> b, BoolField(v2, "stream_options.include_usage"));
        r.include_usage = b.value_or(false);
      }
    } else if (key == "logprobs" && chat) {  // chat: a bool, with top_logprobs alternatives
      ASSIGN_OR_RETURN(std::optional<bool> b, BoolField(v, key));
      chat_logprobs = b.value_or(false);
    } else if (key == "top_logprobs" && chat) {
      ASSIGN_OR_RETURN(top_logprobs, IntField(v, key, kInt32Min, kInt32Max));
    } else if (key == "logprobs") {  // completions: the number of alternatives
      ASSIGN_OR_RETURN(std::optional<int64_t> x, IntField(v, key, kInt32Min, kInt32Max));
      if (x.has_value()) s->set_logprobs(static_cast<int32_t>(*x));
    } else if (key == "ignore_eos") {
      ASSIGN_OR_RETURN(std::optional<bool> b, BoolField(v, key));
      g.set_ignore_eos(b.value_or(false));
    } else if (key == "xkv") {
      RETURN_IF_ERROR(ParseXkv(v, &r));
    } else if (key == "user") {
      RETURN_IF_ERROR(StringField(v, key).status());  // an end-user id, informational
    } else if (std::find(std::begin(kUnsupported), std::end(kUnsupported), key) !=
               std::end(kUnsupported)) {
      if (!IsNoOp(key, v)) return Unsupported(key, absl::StrCat("'", key, "'"));
    } else {
      return Invalid(key, absl::StrCat("unknown field '", key, "'"));
    }
  }
  if (r.model.empty()) return Invalid("model", "model is required (see GET /v1/models)");
  if (!has_input) {
    return chat ? WrongType("messages", "a non-empty list of messages")
                : WrongType("prompt", "a string");
  }
  if (j.contains("stream_options") && !j["stream_options"].is_null() && !r.stream) {
    return Invalid("stream_options", "stream_options is only allowed with stream: true");
  }
  if (top_logprobs.has_value() && !chat_logprobs) {
    return Invalid("top_logprobs", "top_logprobs needs logprobs: true");
  }
  if (chat_logprobs) s->set_logprobs(static_cast<int32_t>(top_logprobs.value_or(0)));
  if (max_completion_tokens.has_value()) max_tokens = max_completion_tokens;
  if (max_tokens.has_value()) g.set_max_tokens(static_cast<int32_t>(*max_tokens));
  return r;
}

}  // namespace xkv
