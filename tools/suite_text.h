// The built-in eval suite's prompts as `xkv eval` and `xkv calibrate` build them: the split's
// corpus and the suite's tasks, with the model's text functions (bench/model_text.h).
#ifndef XKV_TOOLS_SUITE_TEXT_H_
#define XKV_TOOLS_SUITE_TEXT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "bench/eval_prompts.h"
#include "bench/eval_tasks.h"
#include "bench/model_text.h"

namespace xkv {

struct SuiteChoice {
  std::string suite = "quick";
  std::string split = "test";
  int64_t seed = 1;
  std::string tasks;  // comma-separated; empty: the suite's
};

// The built-in suite's records, and the text it was built from.
absl::StatusOr<std::vector<TaskRecord>> BuildRecords(const SuiteChoice& choice,
                                                     const ModelText& text, TextCorpus* corpus);

// Keeps a spread of `limit` records over the list rather than its first entries.
void Limit(int64_t limit, std::vector<TaskRecord>* records);

}  // namespace xkv

#endif  // XKV_TOOLS_SUITE_TEXT_H_
