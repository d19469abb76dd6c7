#include "coordinator/request_validation.h"

#include <cmath>
#include <limits>
#include <string>

#include "gtest/gtest.h"

namespace xkv {
namespace {

GenerateParams Good() {
  GenerateParams p;
  p.prompt = "Hello";
  p.max_tokens = 16;
  return p;
}

void ExpectInvalid(const GenerateParams& p, const std::string& needle) {
  absl::Status s = ValidateGenerateParams(p);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(std::string(s.message()).find(needle), std::string::npos)
      << "message '" << s.message() << "' should mention '" << needle << "'";
}

TEST(RequestValidationTest, AcceptsGoodRequests) {
  EXPECT_TRUE(ValidateGenerateParams(Good()).ok());
  GenerateParams chat = Good();
  chat.chat = true;
  chat.messages = {{"system", "be brief"}, {"user", "héllo ✓"}};
  chat.temperature = 0.7;
  chat.top_p = 1.0;
  chat.stop = {"\n\n"};
  chat.kv.policy = "xkv";
  chat.kv.retention = 1.0;
  chat.kv.profile_mode = "sampled:0.25";
  EXPECT_TRUE(ValidateGenerateParams(chat).ok()) << ValidateGenerateParams(chat);
}

TEST(RequestValidationTest, EmptyPrompt) {
  GenerateParams p = Good();
  p.prompt = "";
  ExpectInvalid(p, "prompt is empty");
  p.chat = true;
  ExpectInvalid(p, "no messages");
  p.messages = {{"user", ""}};
  ExpectInvalid(p, "prompt is empty");
}

TEST(RequestValidationTest, InvalidUtf8) {
  GenerateParams p = Good();
  p.prompt = std::string("ab\xC3", 3);  // truncated 2-byte sequence
  ExpectInvalid(p, "offset 2");
  p.prompt = "\xC0\x80";  // overlong NUL
  ExpectInvalid(p, "UTF-8");
  p.prompt = "\xED\xA0\x80";  // surrogate
  ExpectInvalid(p, "UTF-8");
  p = Good();
  p.chat = true;
  p.messages = {{"user", "ok"}, {"user", "\xFF"}};
  ExpectInvalid(p, "chat message 1 content");
  p = Good();
  p.stop = {"\x80"};
  ExpectInvalid(p, "stop string 0");
  EXPECT_TRUE(IsValidUtf8("\xF0\x9F\x98\x80"));
  EXPECT_FALSE(IsValidUtf8("\xF4\x90\x80\x80"));  // > U+10FFFF
}

TEST(RequestValidationTest, BadRole) {
  GenerateParams p = Good();
  p.chat = true;
  p.messages = {{"robot", "hi"}};
  ExpectInvalid(p, "role 'robot'");
}

TEST(RequestValidationTest, MaxTokens) {
  GenerateParams p = Good();
  p.max_tokens = 0;
  ExpectInvalid(p, "max_tokens is 0");
  p.max_tokens = -3;
  ExpectInvalid(p, ">= 1");
  EXPECT_TRUE(ValidateTokenCounts(10, 90, 100).ok());
  absl::Status past = ValidateTokenCounts(10, 91, 100);
  EXPECT_EQ(past.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(past.message()).find("<= 90"), std::string::npos) << past;
  EXPECT_EQ(ValidateTokenCounts(100, 1, 100).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateTokenCounts(0, 1, 100).code(), absl::StatusCode::kInvalidArgument);
  // The largest max_tokens the wire carries: prompt + max_tokens would overflow int64.
  absl::Status huge = ValidateTokenCounts(10, std::numeric_limits<int64_t>::max(), 100);
  EXPECT_EQ(huge.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(huge.message()).find("<= 90"), std::string::npos) << huge;
}

TEST(RequestValidationTest, Temperature) {
  GenerateParams p = Good();
  p.temperature = -0.1;
  ExpectInvalid(p, "temperature is -0.1");
  p.temperature = std::nan("");
  ExpectInvalid(p, "temperature");
  p.temperature = std::numeric_limits<double>::infinity();
  ExpectInvalid(p, "temperature");
}

TEST(RequestValidationTest, TopP) {
  for (double bad : {0.0, -0.5, 1.01, std::nan("")}) {
    GenerateParams p = Good();
    p.top_p = bad;
    ExpectInvalid(p, "(0, 1]");
  }
}

TEST(RequestValidationTest, MinPAndPenalties) {
  GenerateParams p = Good();
  p.min_p = 1;
  p.presence_penalty = -2;
  p.frequency_penalty = 2;
  EXPECT_TRUE(ValidateGenerateParams(p).ok());
  for (double bad : {-0.01, 1.5, std::nan("")}) {
    p = Good();
    p.min_p = bad;
    ExpectInvalid(p, "min_p is");
  }
  for (double bad : {-2.5, 2.01, std::nan("")}) {
    p = Good();
    p.presence_penalty = bad;
    ExpectInvalid(p, "presence_penalty is");
    p = Good();
    p.frequency_penalty = bad;
    ExpectInvalid(p, "frequency_penalty is");
  }
  p = Good();
  p.repetition_penalty = 0.05;
  EXPECT_TRUE(ValidateGenerateParams(p).ok());
  p.repetition_penalty = 5;
  EXPECT_TRUE(ValidateGenerateParams(p).ok());
  for (double bad : {0.0, -1.0, std::nan(""), HUGE_VAL}) {
    p = Good();
    p.repetition_penalty = bad;
    ExpectInvalid(p, "repetition_penalty is");
  }
}

// The sampling values reach the stages as 32-bit floats: beyond float's range they would arrive as
// inf, below its smallest normal as 0.
TEST(RequestValidationTest, SamplingValuesFitA32BitFloat) {
  const auto with = [](double GenerateParams::*field, double v) {
    GenerateParams p = Good();
    p.*field = v;
    return p;
  };
  ExpectInvalid(with(&GenerateParams::temperature, 1e300),
                "temperature is 1e+300; it must be 0 or a 32-bit float");
  ExpectInvalid(with(&GenerateParams::repetition_penalty, 1e39), "repetition_penalty is 1e+39");
  ExpectInvalid(with(&GenerateParams::repetition_penalty, 1e-40), "32-bit float");
  ExpectInvalid(with(&GenerateParams::top_p, 1e-300), "top_p is 1e-300");
  ExpectInvalid(with(&GenerateParams::min_p, 1e-300), "min_p is 1e-300");
  EXPECT_TRUE(ValidateGenerateParams(with(&GenerateParams::temperature, 3e38)).ok());
  EXPECT_TRUE(ValidateGenerateParams(with(&GenerateParams::top_p, 1e-30)).ok());
}

TEST(RequestValidationTest, Policy) {
  GenerateParams p = Good();
  p.kv.policy = "h2o";
  ExpectInvalid(p, "unknown KV policy 'h2o'");
  p.kv.policy = "snapkv";
  p.kv.retention = 0.9;
  ExpectInvalid(p, "needs policy xkv");
  p = Good();
  p.kv.profile_mode = "sampled:2";
  ExpectInvalid(p, "profile mode");
  p = Good();
  p.kv.budget_tokens = -1;
  ExpectInvalid(p, "budget_tokens is -1");
  p = Good();
  p.kv.budget_fraction = 0;
  ExpectInvalid(p, "budget_fraction");
  p = Good();
  p.kv.budget_tokens = 5;
  p.kv.retention = 0.5;
  ExpectInvalid(p, "at most one");
}

TEST(RequestValidationTest, AllocatorAndFloor) {
  GenerateParams p = Good();
  p.kv.allocator = "greedy";
  ExpectInvalid(p, "unknown allocator 'greedy'; allowed: global, paper");
  p = Good();
  p.kv.floor = 1.5;
  ExpectInvalid(p, "floor is 1.5; it must be in [0, 1]");
  p = Good();
  p.kv.allocator = "paper";
  p.kv.floor = 0.25;
  EXPECT_TRUE(ValidateGenerateParams(p).ok());
  // Per-(layer, KV head) budgets: xkv with the global allocator only (the stages' capability is
  // the coordinator's check, Coordinator::CheckStagesHold).
  p = Good();
  p.kv.per_head = true;
  EXPECT_TRUE(ValidateGenerateParams(p).ok());
  p.kv.allocator = "paper";
  ExpectInvalid(p, "per_head budgets need policy xkv with allocator global");
  p.kv.allocator = "";
  p.kv.policy = "snapkv";
  p.kv.budget_fraction = 0.2;
  ExpectInvalid(p, "got policy 'snapkv'");
  p.kv.per_head = false;
  EXPECT_TRUE(ValidateGenerateParams(p).ok());
  // The largest int64 is a valid (clamped) target, not an overflow.
  p = Good();
  p.kv.policy = "snapkv";
  p.kv.budget_bytes = std::numeric_limits<int64_t>::max();
  EXPECT_TRUE(ValidateGenerateParams(p).ok());
}

TEST(RequestValidationTest, Retention) {
  for (double bad : {0.0, -1.0, 1.5, std::nan("")}) {
    GenerateParams p = Good();
    p.kv.retention = bad;
    ExpectInvalid(p, "retention");
    EXPECT_EQ(ValidateRetention(bad).code(), absl::StatusCode::kInvalidArgument);
  }
  EXPECT_TRUE(ValidateRetention(1.0).ok());
  EXPECT_TRUE(ValidateRetention(0.01).ok());
}

}  // namespace
}  // namespace xkv
