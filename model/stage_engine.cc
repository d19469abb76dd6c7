#include "model/stage_engine.h"

#include <utility>

#include "absl/algorithm/container.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "model/step_rows.h"

namespace xkv {

int64_t EngineStep::num_tokens() const { return StepRows(sequences); }

std::vector<int64_t> EngineStep::LastRows() const { return StepLastRows(sequences); }

int64_t StageEngine::HeadCacheLength(uint64_t id, int layer, int head) const {
  if (head < 0 || head >= config().n_kv_heads) return -1;
  return CacheLength(id, layer);
}

absl::Status StageEngine::EmbedResident(absl::Span<const int32_t> tokens) {
  resident_.clear();
  ASSIGN_OR_RETURN(resident_, Embed(tokens));
  return absl::OkStatus();
}

absl::Status StageEngine::RunLayersResident(const EngineStep& step,
                                            const ImportanceOptions& importance,
                                            std::vector<EngineObservation>* observations) {
  const int64_t want = step.num_tokens() * config().hidden;
  if (static_cast<int64_t>(resident_.size()) != want) {
    return absl::FailedPreconditionError(absl::StrCat("stage engine: ", resident_.size(),
                                                      " resident hidden floats, the step needs ",
                                                      want, " (EmbedResident first)"));
  }
  return RunLayers(step, importance, absl::MakeSpan(resident_), observations);
}

absl::StatusOr<std::vector<float>> StageEngine::LogitsResident(absl::Span<const int64_t> rows) {
  return Logits(resident_, rows);
}

absl::Status StageEngine::LoadResident(std::vector<float> rows) {
  if (rows.size() % config().hidden != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "stage engine: ", rows.size(), " hidden floats, not rows of ", config().hidden));
  }
  resident_ = std::move(rows);
  return absl::OkStatus();
}

absl::StatusOr<absl::Span<const float>> StageEngine::ResidentHost() {
  return absl::Span<const float>(resident_);
}

absl::StatusOr<DeviceRows> StageEngine::ExportResident(RowDtype) {
  return absl::UnimplementedError(absl::StrCat("stage engine on ", device(), ": no device rows"));
}

absl::Status StageEngine::LoadResidentDevice(const DeviceRows&) {
  return absl::UnimplementedError(
      absl::StrCat("stage engine on ", device(), ": cannot take device rows"));
}

absl::StatusOr<SampledRows> StageEngine::SampleResident(absl::Span<const RowSampling>) {
  return absl::UnimplementedError(
      absl::StrCat("stage engine on ", device(), ": no device sampling"));
}

absl::Status StageEngine::StartSampleResident(absl::Span<const RowSampling> rows) {
  if (pending_samples_.size() >= 2) {
    return absl::FailedPreconditionError("stage engine: two samples are outstanding already");
  }
  pending_samples_.push_back(SampleResident(rows));
  return absl::OkStatus();
}

absl::StatusOr<SampledRows> StageEngine::FinishSampleResident() {
  if (pending_samples_.empty()) {
    return absl::FailedPreconditionError("stage engine: no sample outstanding");
  }
  absl::StatusOr<SampledRows> out = std::move(pending_samples_.front());
  pending_samples_.pop_front();
  return out;
}

absl::Status StageEngine::EmbedResidentSampled() {
  if (pending_samples_.empty() || !pending_samples_.back().ok()) {
    return absl::FailedPreconditionError("stage engine: no sampled tokens to embed");
  }
  const std::vector<int32_t>& tokens = pending_samples_.back()->tokens;
  if (absl::c_linear_search(tokens, -1)) {
    return absl::FailedPreconditionError("stage engine: the last sample left a row without token");
  }
  return EmbedResident(tokens);
}

absl::Status StageEngine::UndoDecode(absl::Span<const uint64_t>) {
  return absl::UnimplementedError(
      absl::StrCat("stage engine on ", device(), ": cannot undo a decode step"));
}

}  // namespace xkv
