// Row bookkeeping shared by the two step types (BatchStep of the CPU model, EngineStep of the
// stage engines): a step's sequences each append n_new consecutive rows after the previous ones'.
#ifndef XKV_MODEL_STEP_ROWS_H_
#define XKV_MODEL_STEP_ROWS_H_

#include <cstdint>
#include <vector>

namespace xkv {

// Rows of the whole step (the sum of n_new).
template <typename Sequence>
int64_t StepRows(const std::vector<Sequence>& sequences) {
  int64_t n = 0;
  for (const Sequence& s : sequences) n += s.n_new;
  return n;
}

// Index of each sequence's last new row.
template <typename Sequence>
std::vector<int64_t> StepLastRows(const std::vector<Sequence>& sequences) {
  std::vector<int64_t> rows;
  rows.reserve(sequences.size());
  int64_t row = 0;
  for (const Sequence& s : sequences) {
    row += s.n_new;
    rows.push_back(row - 1);
  }
  return rows;
}

}  // namespace xkv

#endif  // XKV_MODEL_STEP_ROWS_H_
