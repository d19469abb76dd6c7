// `xkv eval --calibration`: which methods take the layer weights (calib=0|1) and the head
// weights (allocator=heads): ApplyCalibration.
#include <vector>

#include "bench/eval_runner.h"
#include "gtest/gtest.h"

namespace xkv {
namespace {

std::vector<EvalMethod> Methods(std::initializer_list<const char*> names) {
  std::vector<EvalMethod> out;
  for (const char* n : names) {
    auto m = ParseEvalMethod(n, ImportanceOptions{});
    EXPECT_TRUE(m.ok()) << n << ": " << m.status();
    out.push_back(*m);
  }
  return out;
}

TEST(EvalCalibrationTest, XkvMethodsTakeTheWeightsUnlessCalibZero) {
  const std::vector<double> w = {0.5, 1.5};
  std::vector<EvalMethod> m =
      Methods({"xkv", "xkv:calib=0", "xkv:per_head=1:calib=1", "paper", "snapkv", "streaming"});
  ASSERT_TRUE(ApplyCalibration({w, {}}, &m).ok());
  EXPECT_EQ(m[0].kv.allocator.layer_weights, w);
  EXPECT_TRUE(m[1].kv.allocator.layer_weights.empty());
  EXPECT_EQ(m[2].kv.allocator.layer_weights, w);
  for (int i = 3; i < 6; ++i) EXPECT_TRUE(m[i].kv.allocator.layer_weights.empty()) << m[i].name;
  // Without --calibration nothing changes.
  std::vector<EvalMethod> plain = Methods({"xkv", "xkv:calib=0"});
  ASSERT_TRUE(ApplyCalibration({}, &plain).ok());
  EXPECT_TRUE(plain[0].kv.allocator.layer_weights.empty());
}

TEST(EvalCalibrationTest, CalibOneNeedsTheFileAndTheGlobalAllocator) {
  for (const char* name : {"xkv:calib=1", "paper:calib=1", "snapkv:calib=1"}) {
    std::vector<EvalMethod> m = Methods({name});
    const std::vector<double> w = name[0] == 'x' ? std::vector<double>{} : std::vector<double>{1.0};
    const absl::Status s = ApplyCalibration({w, {}}, &m);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << name;
    EXPECT_NE(s.message().find("calib=1 needs --calibration FILE"), std::string::npos) << s;
  }
  auto bad = ParseEvalMethod("xkv:calib=2", ImportanceOptions{});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("calib=0|1"), std::string::npos) << bad.status();
}

TEST(EvalCalibrationTest, AllocatorHeadsTakesTheHeadWeightsAndNeedsThem) {
  const CalibrationWeights w{{0.5, 1.5}, {0.2, 1.8, 1.0, 1.0}};
  std::vector<EvalMethod> m = Methods({"xkv:allocator=heads", "xkv:allocator=global"});
  ASSERT_TRUE(ApplyCalibration(w, &m).ok());
  EXPECT_EQ(m[0].kv.allocator.head_weights, w.heads);
  EXPECT_TRUE(m[0].kv.allocator.layer_weights.empty());  // heads takes no layer weights
  EXPECT_TRUE(m[1].kv.allocator.head_weights.empty());
  EXPECT_EQ(m[1].kv.allocator.layer_weights, w.layers);
  for (const CalibrationWeights& none : {CalibrationWeights{}, CalibrationWeights{{1.0}, {}}}) {
    std::vector<EvalMethod> heads = Methods({"xkv:allocator=heads"});
    const absl::Status s = ApplyCalibration(none, &heads);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(s.message().find("allocator=heads needs --calibration FILE with head weights"),
              std::string::npos)
        << s;
  }
  EXPECT_EQ(m[0].kv.allocator.floor, kHeadsFloor);  // its own default floor
  EXPECT_EQ(Methods({"xkv:allocator=heads:floor=0.5"})[0].kv.allocator.floor, 0.5);
  // A heads method with calib=1 is refused: it takes no layer weights.
  std::vector<EvalMethod> both = Methods({"xkv:allocator=heads:calib=1"});
  EXPECT_EQ(ApplyCalibration(w, &both).code(), absl::StatusCode::kInvalidArgument);
}

// An xkv method that names no allocator takes the service's default rule (DefaultAllocator):
// with head weights, heads at its own floor (every eval budget is a size target) — unless it asks
// for per-head scoring, a re-reading profile or the layer weights (calib=1), which take global;
// without head weights, global with the layer weights as before.
TEST(EvalCalibrationTest, AnUnnamedAllocatorFollowsTheDefaultRule) {
  const CalibrationWeights w{{0.5, 1.5}, {0.2, 1.8, 1.0, 1.0}};
  std::vector<EvalMethod> m =
      Methods({"xkv", "xkv:floor=0.5", "xkv:calib=1", "xkv:per_head=1", "xkv:profile=reconstruct"});
  ASSERT_TRUE(ApplyCalibration(w, &m).ok());
  EXPECT_EQ(m[0].kv.allocator.kind, AllocatorKind::kHeads);
  EXPECT_EQ(m[0].kv.allocator.floor, kHeadsFloor);
  EXPECT_EQ(m[0].kv.allocator.head_weights, w.heads);
  EXPECT_TRUE(m[0].kv.allocator.layer_weights.empty());
  EXPECT_EQ(m[1].kv.allocator.kind, AllocatorKind::kHeads);
  EXPECT_EQ(m[1].kv.allocator.floor, 0.5);
  for (int i = 2; i < 5; ++i) {
    EXPECT_EQ(m[i].kv.allocator.kind, AllocatorKind::kGlobal) << m[i].name;
    EXPECT_EQ(m[i].kv.allocator.floor, AllocatorParams{}.floor) << m[i].name;
    EXPECT_EQ(m[i].kv.allocator.layer_weights, w.layers) << m[i].name;
  }
  std::vector<EvalMethod> layers_only = Methods({"xkv"});
  ASSERT_TRUE(ApplyCalibration({w.layers, {}}, &layers_only).ok());
  EXPECT_EQ(layers_only[0].kv.allocator.kind, AllocatorKind::kGlobal);
  EXPECT_EQ(layers_only[0].kv.allocator.layer_weights, w.layers);
}

}  // namespace
}  // namespace xkv
