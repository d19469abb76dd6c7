// A model's text functions for building prompts as `xkv eval` does: the GGUF's tokenizer (special
// tokens parsed, BOS at a text's start) and its chat template (generation prompt added). Used by
// `xkv eval` and `xkv calibrate` (tools/suite_text.h) and by the eval tests.
#ifndef XKV_BENCH_MODEL_TEXT_H_
#define XKV_BENCH_MODEL_TEXT_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "bench/eval_prompts.h"
#include "model/gguf.h"
#include "model/tokenizer.h"

namespace xkv {

struct ModelText {
  std::unique_ptr<GgufFile> file;
  std::unique_ptr<Tokenizer> tokenizer;
  TextEncoder encode;
  ChatRenderer render;
};

absl::StatusOr<ModelText> OpenModelText(const std::string& model);

}  // namespace xkv

#endif  // XKV_BENCH_MODEL_TEXT_H_
