// For the eval tests that build prompts as `xkv eval` does: the real model's tokenizer
// ($XKV_MODEL, set by tests/CMakeLists.txt) and the test split's Debian text.
#ifndef XKV_TESTS_UNIT_BENCH_REAL_TEXT_H_
#define XKV_TESTS_UNIT_BENCH_REAL_TEXT_H_

#include <cstdlib>
#include <filesystem>

#include "absl/status/statusor.h"
#include "base/status_macros.h"
#include "bench/eval_tasks.h"
#include "bench/model_text.h"

namespace xkv {

// The model's text functions (as `xkv eval` opens them) and the test split's corpus.
struct RealText : ModelText {
  TextCorpus corpus;
};

// NOT_FOUND when the model or the texts are not installed (the caller skips); any other error
// is a failure.
inline absl::StatusOr<RealText> LoadRealText() {
  const char* path = std::getenv("XKV_MODEL");
  if (path == nullptr || !std::filesystem::exists(path)) {
    return absl::NotFoundError("XKV_MODEL missing");
  }
  RealText t;
  ASSIGN_OR_RETURN(t.corpus, LoadCorpus(CorpusPaths(Split::kTest)));  // NOT_FOUND when absent
  ASSIGN_OR_RETURN(static_cast<ModelText&>(t), OpenModelText(path));
  return t;
}

}  // namespace xkv

#endif  // XKV_TESTS_UNIT_BENCH_REAL_TEXT_H_
