// For the eval tests that build prompts as `xkv eval` does: the real model's tokenizer
// ($XKV_MODEL, set by tests/CMakeLists.txt) and the test split's Debian text.
#ifndef XKV_TESTS_UNIT_BENCH_REAL_TEXT_H_
#define XKV_TESTS_UNIT_BENCH_REAL_TEXT_H_

#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string_view>

#include "absl/status/statusor.h"
#include "base/status_macros.h"
#include "bench/eval_prompts.h"
#include "bench/eval_tasks.h"
#include "model/gguf.h"
#include "model/tokenizer.h"

namespace xkv {

struct RealText {
  std::unique_ptr<GgufFile> file;
  std::unique_ptr<Tokenizer> tokenizer;
  TextCorpus corpus;
  TextEncoder encode;
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
  ASSIGN_OR_RETURN(t.file, GgufFile::Open(path));
  ASSIGN_OR_RETURN(t.tokenizer, Tokenizer::FromGguf(*t.file));
  const Tokenizer* tok = t.tokenizer.get();
  t.encode = [tok](absl::string_view s, bool at_start) {
    return tok->Encode(std::string_view(s.data(), s.size()), true, at_start);
  };
  return t;
}

}  // namespace xkv

#endif  // XKV_TESTS_UNIT_BENCH_REAL_TEXT_H_
