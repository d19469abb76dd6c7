// LoadStage's model_path is confined to the worker's --model-dir: no file outside it is opened,
// and the answer never says whether such a file exists or quotes its contents.
#include "worker/model_path.h"

#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace xkv {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;

class ModelPathTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = ::testing::TempDir() + "/xkv_model_path." + std::to_string(getpid());
    dir_ = root_ + "/models";
    mkdir(root_.c_str(), 0755);
    mkdir(dir_.c_str(), 0755);
    Write(dir_ + "/m.gguf", std::string("GGUF") + std::string(12, '\0'));
    Write(dir_ + "/notes.txt", "root:x:0:0");
    Write(root_ + "/outside.gguf", "GGUF");
    symlink((root_ + "/outside.gguf").c_str(), (dir_ + "/escape.gguf").c_str());
  }
  static void Write(const std::string& path, const std::string& text) {
    std::ofstream(path) << text;
  }
  std::string root_, dir_;
};

TEST_F(ModelPathTest, AcceptsGgufFilesInsideTheDirectory) {
  absl::StatusOr<std::string> abs = ResolveModelPath(dir_, dir_ + "/m.gguf");
  ASSERT_TRUE(abs.ok()) << abs.status();
  absl::StatusOr<std::string> rel = ResolveModelPath(dir_ + "/", "m.gguf");
  ASSERT_TRUE(rel.ok()) << rel.status();
  EXPECT_EQ(*abs, *rel);
}

TEST_F(ModelPathTest, RefusesEverythingElseWithoutProbing) {
  for (const std::string& path :
       {std::string("/etc/passwd"), std::string("/no/such/file"), root_ + "/outside.gguf",
        std::string("../outside.gguf"), dir_ + "/../outside.gguf", std::string("./m.gguf")}) {
    absl::Status s = ResolveModelPath(dir_, path).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << path << ": " << s;
    EXPECT_THAT(s.message(), HasSubstr("--model-dir")) << path;
  }
  // A link inside that leads out: refused like the target itself.
  EXPECT_EQ(ResolveModelPath(dir_, "escape.gguf").status().code(),
            absl::StatusCode::kInvalidArgument);
  // Inside but not a GGUF file: the answer does not quote its contents.
  absl::Status s = ResolveModelPath(dir_, "notes.txt").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), AllOf(HasSubstr("not a GGUF"), Not(HasSubstr("root")),
                                 Not(HasSubstr("magic")), Not(HasSubstr("0x"))));
  EXPECT_EQ(ResolveModelPath(dir_, "missing.gguf").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(ResolveModelPath(dir_, dir_).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ResolveModelPath(dir_, "").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ResolveModelPath(dir_, std::string(5000, 'a')).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ResolveModelPath("", "m.gguf").status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(ResolveModelPath(root_ + "/nope", "m.gguf").status().code(),
            absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace xkv
