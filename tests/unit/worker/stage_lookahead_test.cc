// Async decode in one stage (StageOptions::lookahead, worker/stage_lookahead.cc) without a GPU:
// two StageExecutors over the same model, the option on and off, driven through the same script
// (a batched prefill, decodes, a release while a step is queued ahead, an admission next to a
// decode, greedy, seeded and penalised sampling, two batches taking turns, which the stage stops
// queueing for after a few misses) answer every step alike (tokens, layer sizes,
// block usage) and report the same pool after every call. Twice: on the host Sampler path (the
// CPU engine), and on a "device" sampling path (an engine that samples in SampleResident, as the
// CUDA engine does) whose queued steps are chained: each fed from the engine's own last sample
// (EmbedResidentSampled) before the host saw it. Every queued step is adopted or undone and the
// pools end empty.
#include <map>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "model/sampler.h"
#include "tests/unit/worker/forwarding_engine.h"
#include "tests/unit/worker/worker_test_util.h"
#include "worker/stage_engine_factory.h"

namespace xkv {
namespace {

// The CPU engine with sampling "on the device": SampleResident draws from the resident rows'
// logits (penalties applied; seeded draws a function of the seed and the draw's offset only, as
// the CUDA sampler's), and the base class's Start / Finish / EmbedResidentSampled run on it.
class DeviceSamplingEngine final : public testing::ForwardingEngine {
 public:
  using ForwardingEngine::ForwardingEngine;

  int sampled_embeds = 0;  // steps fed from the last sample

  bool device_resident() const override { return true; }
  absl::Status EmbedResidentSampled() override {
    ++sampled_embeds;
    return StageEngine::EmbedResidentSampled();
  }
  absl::StatusOr<SampledRows> SampleResident(absl::Span<const RowSampling> rows) override {
    std::vector<int64_t> idx;
    for (const RowSampling& r : rows) idx.push_back(r.row);
    absl::StatusOr<std::vector<float>> logits = inner().LogitsResident(idx);
    if (!logits.ok()) return logits.status();
    const size_t V = config().vocab_size;
    SampledRows out;
    for (size_t i = 0; i < rows.size(); ++i) {
      std::vector<float> row(logits->begin() + i * V, logits->begin() + (i + 1) * V);
      if (rows[i].want_logits) out.logits.insert(out.logits.end(), row.begin(), row.end());
      if (!rows[i].sample) {
        out.tokens.push_back(-1);
        continue;
      }
      for (const auto& [id, delta] : rows[i].penalties) row[id] -= delta;
      const SamplingParams& p = rows[i].params;
      if (p.temperature <= 0.f) {
        out.tokens.push_back(Argmax(row));
        continue;
      }
      std::mt19937_64 rng(p.seed * 1000003u + rows[i].draws);
      const std::vector<Candidate> c = SamplingDistribution(row, p);
      double total = 0;
      for (const Candidate& x : c) total += x.p;
      double u = std::uniform_real_distribution<double>(0.0, total)(rng);
      int32_t token = c.back().id;
      for (const Candidate& x : c) {
        if ((u -= x.p) < 0) {
          token = x.id;
          break;
        }
      }
      out.tokens.push_back(token);
    }
    return out;
  }
};

struct Stage {
  std::unique_ptr<StageExecutor> executor;
  DeviceSamplingEngine* device = nullptr;  // null: the CPU engine, host sampling
};

Stage MakeStage(bool lookahead, bool device) {
  StageOptions o;
  o.model_path = testing::WorkerModelPath();
  o.numerics = Numerics::kExact;
  o.kv_capacity_blocks = 64;
  o.lookahead = lookahead;
  absl::StatusOr<std::unique_ptr<StageEngine>> engine = LoadStageEngine(o);
  EXPECT_TRUE(engine.ok()) << engine.status();
  if (!engine.ok()) return {};
  Stage s;
  if (device) {
    auto wrapped = std::make_unique<DeviceSamplingEngine>(*std::move(engine));
    s.device = wrapped.get();
    engine = std::unique_ptr<StageEngine>(std::move(wrapped));
  }
  absl::StatusOr<std::unique_ptr<StageExecutor>> e =
      StageExecutor::Create(*std::move(engine), o, nullptr);
  EXPECT_TRUE(e.ok()) << e.status();
  if (e.ok()) s.executor = *std::move(e);
  return s;
}

xkv::v1::StepSequence Sampled(xkv::v1::StepSequence s, float temperature, uint64_t seed,
                              float presence) {
  s.set_return_logits(false);
  s.mutable_sampling()->set_temperature(temperature);
  s.mutable_sampling()->set_seed(seed);
  s.mutable_sampling()->set_presence_penalty(presence);
  return s;
}

// Every answer (timings cleared) and the pool's blocks after every call, in order; `flagged`
// counts the answers whose timings say they came from the lookahead (adopted) or undid one.
std::vector<std::string> RunScript(StageExecutor& stage, LookaheadCounts* flagged = nullptr) {
  std::vector<std::string> out;
  uint64_t step_id = 0;
  std::map<uint64_t, std::pair<int32_t, int64_t>> next;  // id -> (token, position)
  std::map<uint64_t, std::tuple<float, uint64_t, float>> sampling;
  auto record = [&](absl::StatusOr<xkv::v1::StepResponse> r) {
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) return;
    if (flagged != nullptr) {
      flagged->adopted += r->timings().from_lookahead() ? 1 : 0;
      flagged->discarded += r->timings().lookahead_undone() ? 1 : 0;
    }
    r->clear_timings();
    out.push_back(r->SerializeAsString());
    for (const xkv::v1::SequenceResult& q : r->sequences()) {
      next[q.seq_id()] = {q.token(), next[q.seq_id()].second + 1};
    }
    out.push_back(std::to_string(stage.status().usage().blocks_used()));
  };
  auto prefill = [&](uint64_t id, int n, float t, uint64_t seed, float presence) {
    sampling[id] = {t, seed, presence};
    next[id] = {-1, n - 1};
    return Sampled(testing::PrefillSequence(id, testing::RandomTokens(n, id)), t, seed, presence);
  };
  auto decode = [&](std::vector<uint64_t> ids) {
    std::vector<xkv::v1::StepSequence> seqs;
    for (uint64_t id : ids) {
      const auto [t, seed, presence] = sampling[id];
      seqs.push_back(
          Sampled(testing::DecodeSequence(id, next[id].first, next[id].second), t, seed, presence));
    }
    record(stage.Step(testing::MakeStep(++step_id, seqs)));
  };
  auto release = [&](std::vector<uint64_t> ids) {
    stage.Release(testing::MakeRelease(ids));
    out.push_back("released " + std::to_string(stage.status().usage().blocks_used()));
  };
  record(stage.Step(
      testing::MakeStep(++step_id, {prefill(1, 12, 0.f, 0, 0.f), prefill(2, 7, 0.8f, 5, 0.f)})));
  for (int i = 0; i < 6; ++i) decode({1, 2});
  release({2});  // a step is queued for 1 and 2
  for (int i = 0; i < 3; ++i) decode({1});
  xkv::v1::StepSequence d1 = Sampled(testing::DecodeSequence(1, next[1].first, next[1].second), 0.f,
                                     0, 0.f);  // an admission next to a decode
  record(stage.Step(testing::MakeStep(++step_id, {d1, prefill(3, 5, 0.7f, 9, 0.5f)})));
  for (int i = 0; i < 5; ++i) decode({1, 3});
  release({3});
  for (int i = 0; i < 4; ++i) decode({1});
  record(stage.Step(testing::MakeStep(++step_id, {prefill(4, 6, 0.f, 0, 0.f)})));
  for (int i = 0; i < 12; ++i) {  // two batches taking turns: every queued step misses
    decode({1});
    decode({4});
  }
  release({1, 4});
  return out;
}

TEST(StageLookaheadTest, AnswersEveryStepAsWithoutIt) {
  for (bool device : {false, true}) {
    SCOPED_TRACE(device ? "device sampling" : "host sampling");
    Stage off = MakeStage(false, device), on = MakeStage(true, device);
    ASSERT_NE(off.executor, nullptr);
    ASSERT_NE(on.executor, nullptr);
    LookaheadCounts flagged_off, flagged_on;
    const std::vector<std::string> want = RunScript(*off.executor, &flagged_off);
    EXPECT_EQ(RunScript(*on.executor, &flagged_on), want);
    EXPECT_EQ(on.executor->status().usage().blocks_used(), 0);
    EXPECT_EQ(on.executor->status().sequences(), 0);
    const LookaheadCounts c = on.executor->lookahead_counts();
    EXPECT_EQ(c.queued, c.adopted + c.discarded);
    EXPECT_GE(c.adopted, 10);
    EXPECT_GE(c.discarded, 3) << "the releases and the admission undid queued steps";
    EXPECT_LE(c.discarded, 14) << "batches taking turns were not backed off from (24 turns)";
    EXPECT_EQ(off.executor->lookahead_counts().queued, 0);
    // The answers' timings tell the coordinator the same (--log-step-timing prints them); a queued
    // step undone by a release is counted by the executor, not by any answer.
    EXPECT_EQ(flagged_on.adopted, c.adopted);
    EXPECT_GT(flagged_on.discarded, 0);
    EXPECT_LE(flagged_on.discarded, c.discarded);
    EXPECT_EQ(flagged_off.adopted + flagged_off.discarded, 0);
    if (device) {
      EXPECT_GE(on.device->sampled_embeds, 5) << "queued steps were fed from the device's sample";
      EXPECT_EQ(off.device->sampled_embeds, 0);
    }
  }
}

// A burst of admissions, each undoing the step queued after a decode, does not switch async
// decode off for the decodes that follow (only plain decodes of other sequences count as misses):
// every decode after the last admission but the first is answered from the queued step.
TEST(StageLookaheadTest, AdmissionsDoNotBackOff) {
  Stage stage = MakeStage(true, false);
  ASSERT_NE(stage.executor, nullptr);
  StageExecutor& e = *stage.executor;
  uint64_t step_id = 0;
  std::map<uint64_t, std::pair<int32_t, int64_t>> next;  // id -> (token, position)
  auto step = [&](std::vector<xkv::v1::StepSequence> seqs) {
    absl::StatusOr<xkv::v1::StepResponse> r = e.Step(testing::MakeStep(++step_id, seqs));
    ASSERT_TRUE(r.ok()) << r.status();
    for (const xkv::v1::SequenceResult& q : r->sequences()) {
      next[q.seq_id()] = {q.token(), next[q.seq_id()].second + 1};
    }
  };
  auto decodes = [&] {
    std::vector<xkv::v1::StepSequence> seqs;
    for (const auto& [id, n] : next) {
      seqs.push_back(Sampled(testing::DecodeSequence(id, n.first, n.second), 0.f, 0, 0.f));
    }
    return seqs;
  };
  auto admit = [&](uint64_t id, std::vector<xkv::v1::StepSequence> seqs) {
    next[id] = {-1, 4};
    seqs.push_back(
        Sampled(testing::PrefillSequence(id, testing::RandomTokens(5, id)), 0.f, 0, 0.f));
    step(std::move(seqs));
  };
  admit(1, {});
  for (uint64_t id = 2; id <= 9; ++id) {
    step(decodes());       // queues the next decode
    admit(id, decodes());  // an admission beside the decodes: the queued step is undone
  }
  const LookaheadCounts before = e.lookahead_counts();
  EXPECT_GE(before.discarded, 8);
  for (int i = 0; i < 20; ++i) step(decodes());
  const LookaheadCounts after = e.lookahead_counts();
  EXPECT_EQ(after.adopted - before.adopted, 19) << "the first decode queues, the others adopt";
  e.Release(testing::MakeRelease({1, 2, 3, 4, 5, 6, 7, 8, 9}));
  EXPECT_EQ(e.status().usage().blocks_used(), 0);
}

}  // namespace
}  // namespace xkv
