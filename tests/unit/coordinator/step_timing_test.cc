#include "coordinator/step_timing.h"

#include <chrono>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace xkv {
namespace {

using ::testing::HasSubstr;
using Clock = StepTimingLog::Clock;

StepPhases Pass(double plan, double launch, double wait, double stage, double compute, double apply,
                int64_t sequences, int64_t rows) {
  StepPhases p;
  p.plan_ms = plan, p.launch_ms = launch, p.wait_ms = wait, p.stage_ms = stage;
  p.compute_ms = compute, p.apply_ms = apply, p.sequences = sequences, p.rows = rows;
  return p;
}

TEST(StepTimingLogTest, OneLineEveryNPassesWithTheMeans) {
  StepTimingLog log(2);
  const Clock::time_point t0{};
  // The first pass starts the wall clock only.
  EXPECT_FALSE(log.Add(Pass(9, 9, 9, 9, 9, 9, 9, 9), t0).has_value());
  StepPhases decode = Pass(0.1, 0.2, 2.0, 1.5, 1.2, 0.5, 8, 8);
  decode.decode_only = 1;
  decode.preempted = 2;
  decode.from_lookahead = 1;
  EXPECT_FALSE(log.Add(decode, t0 + std::chrono::milliseconds(3)).has_value());
  StepPhases mixed = Pass(0.3, 0.4, 4.0, 2.5, 2.2, 0.7, 8, 2056);
  mixed.prompt_tokens = 2048;
  mixed.compactions = 1;
  mixed.compact_ms = 0.25;
  mixed.lookahead_undone = 1;
  const std::optional<std::string> line = log.Add(mixed, t0 + std::chrono::milliseconds(10));
  ASSERT_TRUE(line.has_value());
  // Means of the two passes over 10 ms of loop time: 5 ms per step, 0.2 + 0.3 + 3 + 0.6 of it
  // in the phases, 0.9 ms elsewhere.
  EXPECT_THAT(*line, HasSubstr("2 steps, 8.0 sequences / 1032.0 rows each: one every 5.000 ms"));
  EXPECT_THAT(*line, HasSubstr("plan 0.200 + launch 0.300 + wait 3.000 (stages 2.000, compute "
                               "1.700) + apply 0.600 + other 0.900 ms"));
  // What the passes held: the first decoded only, the second carried 2048 prompt tokens.
  EXPECT_THAT(*line, HasSubstr("; 1 decode-only, 1 with 2048 prompt tokens, 1 compacted (0.250 ms "
                               "on the loop), 2 preempted; 1 from lookahead, 1 undone"));
  // A new sum starts from the last pass.
  EXPECT_FALSE(log.Add(Pass(1, 1, 1, 1, 1, 1, 1, 1), t0 + std::chrono::milliseconds(11)));
  EXPECT_THAT(*log.Add(Pass(1, 1, 1, 1, 1, 1, 1, 1), t0 + std::chrono::milliseconds(20)),
              HasSubstr("2 steps, 1.0 sequences / 1.0 rows each: one every 5.000 ms"));
}

TEST(StepTimingLogTest, OffPrintsNothing) {
  StepTimingLog log(0);
  EXPECT_FALSE(log.enabled());
  for (int i = 0; i < 5; ++i) EXPECT_FALSE(log.Add(StepPhases(), Clock::time_point{}).has_value());
}

}  // namespace
}  // namespace xkv
