#include "model/stop_matcher.h"

#include "gtest/gtest.h"

namespace xkv {
namespace {

TEST(StopMatcherTest, HoldsBackPossibleStopPrefixes) {
  StopMatcher m({"END", "xy"});
  bool stopped = false;
  EXPECT_EQ(m.Push("abcE", &stopped), "abc");
  EXPECT_FALSE(stopped);
  EXPECT_EQ(m.Push("N", &stopped), "");
  EXPECT_EQ(m.Push("Dq", &stopped), "");
  EXPECT_TRUE(stopped);
  EXPECT_EQ(m.Flush(), "");
  StopMatcher n({"END"});
  EXPECT_EQ(n.Push("aEN", &stopped), "a");
  EXPECT_EQ(n.Push("x", &stopped), "ENx");
  EXPECT_EQ(n.Push("E", &stopped), "");
  EXPECT_EQ(n.Flush(), "E");
}

}  // namespace
}  // namespace xkv
