#include "http/openai_request.h"

#include <nlohmann/json.hpp>
#include <string>

#include "gtest/gtest.h"
#include "http/openai_error.h"

namespace xkv {
namespace {

using Json = nlohmann::json;

absl::StatusOr<OpenAiRequest> Chat(const std::string& body) {
  return ParseOpenAiRequest(body, OpenAiEndpoint::kChatCompletions);
}

// The OpenAI error object of a failed parse.
Json ErrorOf(const absl::StatusOr<OpenAiRequest>& r) {
  EXPECT_FALSE(r.ok());
  const OpenAiErrorReply e = ToOpenAiError(r.status());
  EXPECT_EQ(e.http_status, 400) << e.body;
  return Json::parse(e.body)["error"];
}

TEST(OpenAiRequestTest, ChatFieldsMapOntoTheGenerateRequest) {
  absl::StatusOr<OpenAiRequest> r = Chat(R"({
    "model": "m", "messages": [
      {"role": "system", "content": "Be brief."},
      {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
      {"role": "assistant", "content": null}, {"role": "developer", "content": "d", "name": "x"}],
    "max_completion_tokens": 7, "max_tokens": 99, "temperature": 0.5, "top_p": 0.9, "top_k": 40,
    "seed": -1, "stop": ["\n\n", "END"], "n": 3, "stream": true,
    "stream_options": {"include_usage": true}, "ignore_eos": true, "user": "u",
    "presence_penalty": 0.5, "frequency_penalty": -1.0, "logprobs": false, "min_p": 0.05,
    "repetition_penalty": 1.3,
    "xkv": {"policy": "xkv", "retention": 0.5, "profile_mode": "one_pass", "layers": true,
            "allocator": "global", "floor": 0.25, "cap": 16}})");
  ASSERT_TRUE(r.ok()) << r.status();
  const xkv::v1::GenerateRequest& g = r->generate;
  EXPECT_EQ(r->model, "m");
  ASSERT_EQ(g.chat().messages_size(), 4);
  EXPECT_EQ(g.chat().messages(1).content(), "a\nb");
  EXPECT_EQ(g.chat().messages(2).content(), "");
  EXPECT_EQ(g.chat().messages(3).role(), "system");
  EXPECT_EQ(g.max_tokens(), 7);
  EXPECT_FLOAT_EQ(g.sampling().temperature(), 0.5f);
  EXPECT_FLOAT_EQ(g.sampling().top_p(), 0.9f);
  EXPECT_EQ(g.sampling().top_k(), 40);
  EXPECT_FLOAT_EQ(g.sampling().min_p(), 0.05f);
  EXPECT_FLOAT_EQ(g.sampling().presence_penalty(), 0.5f);
  EXPECT_FLOAT_EQ(g.sampling().frequency_penalty(), -1.0f);
  EXPECT_FLOAT_EQ(g.sampling().repetition_penalty(), 1.3f);
  EXPECT_TRUE(r->has_seed);
  EXPECT_EQ(g.sampling().seed(), ~uint64_t{0});
  ASSERT_EQ(g.sampling().stop_size(), 2);
  EXPECT_EQ(g.sampling().stop(1), "END");
  EXPECT_EQ(g.sampling().n(), 3);
  EXPECT_TRUE(r->stream);
  EXPECT_TRUE(r->include_usage);
  EXPECT_TRUE(g.ignore_eos());
  EXPECT_EQ(g.kv_policy().policy(), "xkv");
  EXPECT_DOUBLE_EQ(g.kv_policy().retention(), 0.5);
  EXPECT_EQ(g.kv_policy().profile_mode(), "one_pass");
  EXPECT_EQ(g.kv_policy().allocator(), "global");
  EXPECT_DOUBLE_EQ(g.kv_policy().floor(), 0.25);
  EXPECT_DOUBLE_EQ(g.kv_policy().cap(), 16);
  EXPECT_TRUE(r->kv_layers);
}

TEST(OpenAiRequestTest, Logprobs) {
  absl::StatusOr<OpenAiRequest> r =
      Chat(R"({"model":"m","messages":[],"logprobs":true,"top_logprobs":3})");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->generate.sampling().logprobs(), 3);
  r = Chat(R"({"model":"m","messages":[],"logprobs":true})");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->generate.sampling().logprobs(), 0);
  r = Chat(R"({"model":"m","messages":[],"logprobs":false})");
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(r->generate.sampling().has_logprobs());
  EXPECT_EQ(ErrorOf(Chat(R"({"model":"m","messages":[],"top_logprobs":2})"))["param"],
            "top_logprobs");
  r = ParseOpenAiRequest(R"({"model":"m","prompt":"x","logprobs":5})",
                         OpenAiEndpoint::kCompletions);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->generate.sampling().logprobs(), 5);
  EXPECT_EQ(ErrorOf(ParseOpenAiRequest(R"({"model":"m","prompt":"x","logprobs":true})",
                                       OpenAiEndpoint::kCompletions))["param"],
            "logprobs");
}

TEST(OpenAiRequestTest, CompletionPromptForms) {
  for (const char* body : {R"({"model":"m","prompt":"hi"})", R"({"model":"m","prompt":["hi"]})"}) {
    absl::StatusOr<OpenAiRequest> r = ParseOpenAiRequest(body, OpenAiEndpoint::kCompletions);
    ASSERT_TRUE(r.ok()) << body << ": " << r.status();
    EXPECT_EQ(r->generate.prompt(), "hi");
    EXPECT_FALSE(r->generate.has_max_tokens());
    EXPECT_FALSE(r->has_seed);
    EXPECT_FALSE(r->stream);
  }
  Json e =
      ErrorOf(ParseOpenAiRequest(R"({"model":"m","prompt":[1,2]})", OpenAiEndpoint::kCompletions));
  EXPECT_EQ(e["param"], "prompt");
  e = ErrorOf(
      ParseOpenAiRequest(R"({"model":"m","prompt":{"a":1}})", OpenAiEndpoint::kCompletions));
  EXPECT_EQ(e["param"], "prompt");
  // `messages` belongs to chat only.
  e = ErrorOf(ParseOpenAiRequest(R"({"model":"m","prompt":"x","messages":[]})",
                                 OpenAiEndpoint::kCompletions));
  EXPECT_EQ(e["param"], "messages");
}

TEST(OpenAiRequestTest, BadBodiesNameTheField) {
  struct Case {
    const char* body;
    const char* param;
    const char* says;
  };
  const Case cases[] = {
      {"{", "", "not valid JSON"},
      {"[1]", "", "JSON object"},
      {"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"\xff\"}]}", "",
       "not valid JSON"},
      {R"({"model":"m","messages":[{"role":"user","content":"x"}],"temperature":1e400})", "",
       "not valid JSON"},  // beyond double's range: the library's out_of_range, not a 500
      {R"({"model":"m","messages":[{"role":"user","content":"x"}],"temperature":1e300})",
       "temperature", "must be within"},  // beyond float's range: the proto's field is a float
      {R"({"messages":[{"role":"user","content":"x"}]})", "model", "model is required"},
      {R"({"model":"m"})", "messages", "messages must be"},
      {R"({"model":"m","messages":"hi"})", "messages", "a list of messages"},
      {R"({"model":"m","messages":[3]})", "messages[0]", "an object"},
      {R"({"model":"m","messages":[{"content":"x"}]})", "messages[0].role", "a string"},
      {R"({"model":"m","messages":[{"role":1,"content":"x"}]})", "messages[0].role", "a string"},
      {R"({"model":"m","messages":[{"role":"user","content":5}]})", "messages[0].content",
       "text parts"},
      {R"({"model":"m","messages":[{"role":"user","content":[{"type":"image_url"}]}]})",
       "messages[0].content[0].type", "not supported"},
      {R"({"model":"m","messages":[{"role":"tool","content":"x","tool_call_id":"1"}]})",
       "messages[0].tool_call_id", "not supported"},
      {R"({"model":"m","messages":[],"temperature":"hot"})", "temperature", "a number"},
      {R"({"model":"m","messages":[],"max_tokens":1.5})", "max_tokens", "an integer"},
      {R"({"model":"m","messages":[],"max_tokens":99999999999})", "max_tokens", "[-2147483648"},
      {R"({"model":"m","messages":[],"n":0})", "n", "[1, 2147483647]"},
      {R"({"model":"m","messages":[],"seed":"1"})", "seed", "an integer"},
      {R"({"model":"m","messages":[],"stop":[1]})", "stop[0]", "a string"},
      {R"({"model":"m","messages":[],"stream":"yes"})", "stream", "true or false"},
      {R"({"model":"m","messages":[],"stream_options":{"include_usage":true}})", "stream_options",
       "only allowed with stream"},
      {R"({"model":"m","messages":[],"presence_penalty":"high"})", "presence_penalty", "a number"},
      {R"({"model":"m","messages":[],"repetition_penalty":"x"})", "repetition_penalty", "a number"},
      {R"({"model":"m","messages":[],"tools":[]})", "tools", "not supported"},
      {R"({"model":"m","messages":[],"temprature":1})", "temprature", "unknown field"},
      {R"({"model":"m","messages":[],"xkv":{"retention":0.5,"budget_tokens":3}})", "xkv",
       "at most one"},
      {R"({"model":"m","messages":[],"xkv":{"budget":3}})", "xkv.budget", "unknown field"},
      {R"({"model":"m","messages":[],"xkv":{"layers":1}})", "xkv.layers", "true or false"},
  };
  for (const Case& c : cases) {
    const Json e = ErrorOf(Chat(c.body));
    EXPECT_EQ(e["type"], "invalid_request_error") << c.body;
    if (*c.param == '\0') {
      EXPECT_TRUE(e["param"].is_null()) << c.body << " " << e;
    } else {
      EXPECT_EQ(e["param"], c.param) << c.body << " " << e;
    }
    EXPECT_NE(e["message"].get<std::string>().find(c.says), std::string::npos)
        << c.body << " " << e;
  }
}

TEST(OpenAiErrorTest, StatusCodesAndCoreMessagesMapToOpenAiErrors) {
  struct Case {
    absl::Status status;
    int http;
    const char* type;
    Json param;
  };
  const Case cases[] = {
      {absl::InvalidArgumentError("top_p is 2; it must be in (0, 1]"), 400, "invalid_request_error",
       "top_p"},
      {absl::InvalidArgumentError("chat message 0 has role 'tool'"), 400, "invalid_request_error",
       "messages"},
      {absl::InvalidArgumentError("n is 17; it must be in [1, 16]"), 400, "invalid_request_error",
       "n"},
      {absl::InvalidArgumentError("something else"), 400, "invalid_request_error", nullptr},
      {FieldError(absl::StatusCode::kNotFound, "model", "no such model", "model_not_found"), 404,
       "invalid_request_error", "model"},
      {absl::UnauthenticatedError("bad key"), 401, "authentication_error", nullptr},
      {absl::ResourceExhaustedError("queue full"), 429, "rate_limit_error", nullptr},
      {absl::UnavailableError("worker down"), 503, "service_unavailable", nullptr},
      {absl::InternalError("bug"), 500, "server_error", nullptr},
  };
  for (const Case& c : cases) {
    const OpenAiErrorReply e = ToOpenAiError(c.status);
    EXPECT_EQ(e.http_status, c.http) << c.status;
    const Json j = Json::parse(e.body)["error"];
    EXPECT_EQ(j["message"], std::string(c.status.message()));
    EXPECT_EQ(j["type"], c.type);
    EXPECT_EQ(j["param"], c.param) << c.status;
    EXPECT_TRUE(j.contains("code"));
  }
  EXPECT_EQ(Json::parse(ToOpenAiError(FieldError(absl::StatusCode::kNotFound, "model", "x",
                                                 "model_not_found"))
                            .body)["error"]["code"],
            "model_not_found");
}

}  // namespace
}  // namespace xkv
