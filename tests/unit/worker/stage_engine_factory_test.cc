// Device strings of a stage, and loading a stage on a device this machine may not have: a clear
// error, never a crash (CI has no GPU; CUDA builds reach the device check, CPU-only builds say
// they need CUDA).
#include "worker/stage_engine_factory.h"

#include "gtest/gtest.h"

namespace xkv {
namespace {

TEST(ParseStageDeviceTest, AcceptsCpuAndCuda) {
  EXPECT_EQ(*ParseStageDevice(""), -1);
  EXPECT_EQ(*ParseStageDevice("cpu"), -1);
  EXPECT_EQ(*ParseStageDevice("cuda"), 0);
  EXPECT_EQ(*ParseStageDevice("cuda:0"), 0);
  EXPECT_EQ(*ParseStageDevice("cuda:7"), 7);
}

TEST(ParseStageDeviceTest, RejectsEverythingElse) {
  for (const char* bad : {"gpu", "cuda:", "cuda:-1", "cuda:x", "CPU", "cuda:1:2", "tpu:0"}) {
    absl::StatusOr<int> d = ParseStageDevice(bad);
    EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

TEST(LoadStageEngineTest, BadDeviceIsAnErrorBeforeTouchingTheModel) {
  StageOptions o;
  o.model_path = "/nonexistent/model.gguf";
  o.device = "gpu:0";
  EXPECT_EQ(LoadStageEngine(o).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(LoadStageEngineTest, CudaDeviceWithoutUsableGpuOrFileIsAClearError) {
  StageOptions o;
  o.model_path = "/nonexistent/model.gguf";
  o.device = "cuda:0";
  absl::StatusOr<std::unique_ptr<StageEngine>> e = LoadStageEngine(o);
  ASSERT_FALSE(e.ok());
  EXPECT_FALSE(e.status().message().empty());
}

}  // namespace
}  // namespace xkv
