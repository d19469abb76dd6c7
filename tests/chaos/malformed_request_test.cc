// Malformed requests at the public port (issue 18, part 5): bytes that are not a GenerateRequest
// (garbage, truncation, impossible lengths and varints, a string field that is not UTF-8) answer
// INVALID_ARGUMENT with a message, never UNIMPLEMENTED or a crash; the service then still answers
// a normal request and reports SERVING.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <string>
#include <vector>

#include "tests/e2e/e2e_harness.h"
#include "tests/e2e/e2e_prompts.h"

namespace xkv::e2e {
namespace {

struct Malformed {
  const char* what;
  std::string bytes;
};

std::vector<Malformed> MalformedRequests() {
  using std::string_literals::operator""s;
  return {
      {"garbage", "\xff\xff\xff\xff"s},
      {"field number 0", "\x00\x01"s},
      {"truncated prompt (length 16, 3 bytes)",
       "\x0a\x10"
       "abc"s},
      {"length past 4 GiB", "\x0a\xff\xff\xff\xff\x0f"s},
      {"varint of 11 bytes", "\x18\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"s},
      {"unterminated group", "\x0b"s},
      {"request_id not UTF-8", "\x0a\x02hi\x3a\x02\xc3\x28"s},
      {"kv_policy.policy not UTF-8", "\x0a\x02hi\x32\x04\x0a\x02\xff\xfe"s},
      {"kv_policy.profile_mode not UTF-8", "\x0a\x02hi\x32\x04\x32\x02\xc0\x80"s},
      {"chat role not UTF-8", "\x12\x06\x0a\x04\x0a\x02\xed\xa0"s},
  };
}

TEST(MalformedRequests, AnswerInvalidArgumentAndHurtNothing) {
  if (std::string why = MissingPrerequisite(); !why.empty()) GTEST_SKIP() << why;
  absl::StatusOr<std::unique_ptr<Cluster>> cluster =
      Cluster::Start({.workers = 1, .embedded = true});
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  Cluster& c = **cluster;
  const std::vector<Malformed> cases = MalformedRequests();
  for (const Malformed& m : cases) {
    SCOPED_TRACE(m.what);
    grpc::Status s = RawCall(c.address(), "/xkv.v1.Generation/Generate", m.bytes);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
    EXPECT_THAT(s.error_message(), testing::HasSubstr("not a valid xkv.v1.GenerateRequest"));
  }
  // A prompt (bytes on the wire) that is not UTF-8 reaches validation, which names the field.
  xkv::v1::GenerateRequest bad_prompt = GreedyRequest("caf\xc3", 4);
  StreamResult r = Generate(c.generation(), bad_prompt, absl::Seconds(30));
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << r.status.error_message();
  std::fprintf(stderr, "malformed: %zu wire-level cases + 1 invalid-UTF-8 prompt\n", cases.size());

  EXPECT_EQ(HealthStatus(c.address()), 1);
  StreamResult ok = Generate(c.generation(), GreedyRequest(kShortPrompt, 4));
  EXPECT_TRUE(ok.status.ok()) << ok.status.error_message() << c.Logs();
  EXPECT_EQ(ok.token_ids.size(), 4u);
}

}  // namespace
}  // namespace xkv::e2e
