#include "tools/suite_text.h"

#include <utility>

#include "absl/strings/str_split.h"
#include "base/status_macros.h"

namespace xkv {

absl::StatusOr<std::vector<TaskRecord>> BuildRecords(const SuiteChoice& choice,
                                                     const ModelText& text, TextCorpus* corpus) {
  ASSIGN_OR_RETURN(SuiteOptions suite, SuiteByName(choice.suite));
  ASSIGN_OR_RETURN(const Split split, ParseSplit(choice.split));
  suite.seed = static_cast<uint64_t>(choice.seed);
  if (!choice.tasks.empty()) {
    suite.tasks.clear();
    for (absl::string_view name : absl::StrSplit(choice.tasks, ',', absl::SkipEmpty())) {
      ASSIGN_OR_RETURN(TaskKind kind, ParseTaskKind(name));
      suite.tasks.push_back(kind);
    }
  }
  ASSIGN_OR_RETURN(*corpus, LoadCorpus(CorpusPaths(split)));
  return BuildSuite(*corpus, suite, split, text.encode, text.render);
}

void Limit(int64_t limit, std::vector<TaskRecord>* records) {
  if (limit <= 0 || static_cast<int64_t>(records->size()) <= limit) return;
  std::vector<TaskRecord> picked;
  for (int64_t i = 0; i < limit; ++i) {
    picked.push_back(std::move((*records)[i * records->size() / limit]));
  }
  *records = std::move(picked);
}

}  // namespace xkv
