// The Worker edge under random input: seeded streams of steps, compactions and releases, drawn
// from a grammar that mixes valid and invalid values of every StepSequence / CompactSpec field
// (ids that are live or not, positions off by one, tokens outside the vocabulary, unknown modes and
// policies, NaN and extreme sampling values, budgets for layers the stage lacks, int64 extremes),
// against one real CPU stage with a small pool. Whatever comes:
//   - the answer is OK or a caller's error (INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION,
//     RESOURCE_EXHAUSTED, OUT_OF_RANGE), never INTERNAL or UNKNOWN, and never a crash;
//   - a refused step or compaction changes nothing: the pool's used blocks and every live
//     sequence's cache length in every layer are as before;
//   - releasing every id at the end leaves the pool idle.
// Both outcomes must be frequent, and compactions and steps of several sequences must be among the
// accepted calls, so the checks are exercised. Found: a step whose compaction did not fit the
// cache it left was refused after it had run, dropping a live sequence; the compaction's check
// now runs with the step's validation (StageExecutor::CheckBudgetsFit). Built under
// scripts/host-sanitize, it is also an ASan / UBSan run of the edge.
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/common/random_draw.h"
#include "tests/unit/worker/worker_test_util.h"
#include "worker/stage_executor.h"
#include "worker/stage_options.h"

namespace xkv {
namespace {

constexpr int kLayers = 4;  // the test model's
constexpr int64_t kContext = 2048;
constexpr int kIds = 10;        // ids 1..kIds: live, released and never seen ones all recur
constexpr int64_t kWindow = 8;  // the stage's default observation window

// Draws the values of one field: mostly plausible, sometimes one of the edge cases.
class Draw : public testing::RandomDraw {
 public:
  using RandomDraw::RandomDraw;
  // `usual` most of the time, else an edge value of the type.
  int64_t Int64Or(int64_t usual) {
    if (!Chance(0.15)) return usual;
    return Pick<int64_t>({-1, 0, kContext, kContext + 1, std::numeric_limits<int64_t>::max(),
                          std::numeric_limits<int64_t>::min(), int64_t{1} << 40});
  }
  float FloatOr(float usual) {
    if (!Chance(0.1)) return usual;
    return Pick<float>({std::nanf(""), std::numeric_limits<float>::infinity(), -1e30f, -3.f, 3.f,
                        0.f, std::numeric_limits<float>::denorm_min()});
  }
};

class RandomStepsTest : public ::testing::TestWithParam<uint64_t> {
 protected:
  void SetUp() override {
    StageOptions o;
    o.max_step_tokens = 256;
    // 48 blocks of 16 tokens per layer: a few prompts fit, so RESOURCE_EXHAUSTED comes too.
    stages_ = testing::MakePipeline({0, kLayers}, o, {48});
    ASSERT_EQ(stages_.size(), 1u);
  }
  StageExecutor& stage() { return *stages_[0]; }

  // What a refusal must leave as it was: the pool's usage and each id's length per layer.
  struct Snapshot {
    int64_t blocks_used = 0;
    std::map<uint64_t, std::vector<int64_t>> lengths;
    bool operator==(const Snapshot& o) const {
      return blocks_used == o.blocks_used && lengths == o.lengths;
    }
  };
  Snapshot Take() {
    Snapshot s;
    s.blocks_used = stage().status().usage().blocks_used();
    for (uint64_t id = 1; id <= kIds; ++id) {
      if (stage().CacheLength(id, 0) < 0) continue;
      for (int l = 0; l < kLayers; ++l) s.lengths[id].push_back(stage().CacheLength(id, l));
    }
    return s;
  }
  static std::string Describe(const Snapshot& s) {
    std::string out = absl::StrCat("blocks_used ", s.blocks_used, ";");
    for (const auto& [id, lengths] : s.lengths) {
      absl::StrAppend(&out, " id ", id, ":");
      for (int64_t n : lengths) absl::StrAppend(&out, " ", n);
    }
    return out;
  }

  // `prefix`: the prompt's prefix when the caller knows it (budgets mostly within it), else -1.
  xkv::v1::CompactSpec RandomCompact(Draw& d, int64_t prefix = -1) {
    xkv::v1::CompactSpec spec;
    spec.mutable_selection()->set_policy(
        d.Pick<std::string>({"", "xkv", "snapkv", "pyramidkv", "streaming", "full", "bogus"}));
    if (d.Chance(0.2)) spec.mutable_selection()->set_sink_tokens(d.Int(-2, 40));
    const int n = static_cast<int>(d.Int(0, kLayers + 1));
    for (int i = 0; i < n; ++i) {
      xkv::v1::LayerBudget* b = spec.add_budgets();
      b->set_layer(static_cast<int32_t>(d.Chance(0.9) ? i : d.Int(-1, kLayers + 1)));
      b->set_kept_prefix(d.Int64Or(d.Int(0, prefix >= 0 ? prefix : 64)));
      if (d.Chance(0.1)) {
        for (int h = 0, heads = static_cast<int>(d.Int(0, 3)); h < heads; ++h) {
          b->add_head_kept_prefix(d.Int64Or(d.Int(0, 64)));
        }
      }
    }
    return spec;
  }

  xkv::v1::StepSequence RandomSequence(Draw& d) {
    xkv::v1::StepSequence s;
    const uint64_t id = static_cast<uint64_t>(d.Int(1, kIds));
    s.set_seq_id(d.Chance(0.03) ? std::numeric_limits<uint64_t>::max() : id);
    const int64_t length = stage().CacheLength(id, 0);
    const bool live = length >= 0;
    s.set_new_sequence(d.Chance(0.05) ? live : !live);
    const int64_t n_new = s.new_sequence() ? d.Int(1, 96) : (d.Chance(0.8) ? 1 : d.Int(1, 24));
    s.set_n_new(d.Int64Or(n_new));
    // A live sequence's next position is its logical length, which compaction does not change;
    // positions are drawn near it (and exactly at it for the usual case via `next_`).
    const int64_t next = next_.count(id) ? next_[id] : 0;
    s.set_position(d.Int64Or(s.new_sequence() ? 0 : (d.Chance(0.85) ? next : next + d.Int(-2, 2))));
    const int64_t n_tokens = d.Chance(0.9) ? n_new : d.Int(0, n_new + 2);
    for (int64_t i = 0; i < n_tokens; ++i) s.add_tokens(static_cast<int32_t>(d.Int(3, 250)));
    if (n_tokens > 0 && d.Chance(0.05)) {  // one token outside the vocabulary (320 ids)
      s.set_tokens(static_cast<int>(d.Int(0, n_tokens - 1)),
                   d.Pick<int32_t>({-1, 320, std::numeric_limits<int32_t>::max()}));
    }
    if (d.Chance(0.15)) {
      s.set_mode(static_cast<xkv::v1::SequenceMode>(d.Pick<int>({1, 2, 2, 3, 9})));
    }
    if (s.mode() == xkv::v1::SEQUENCE_MODE_REREAD || d.Chance(0.03)) {
      s.mutable_reread()->set_chunk_begin(d.Int64Or(d.Int(0, 32)));
      s.mutable_reread()->set_chunk_end(d.Int64Or(d.Int(0, 64)));
      s.mutable_reread()->set_last(d.Chance(0.5));
    }
    if (d.Chance(0.3)) {
      xkv::v1::WorkerSampling* w = s.mutable_sampling();
      w->set_temperature(d.FloatOr(d.Chance(0.5) ? 0.f : 0.8f));
      w->set_top_k(static_cast<int32_t>(d.Chance(0.9) ? d.Int(0, 50) : d.Int(-5, 1 << 30)));
      w->set_top_p(d.FloatOr(0.9f));
      w->set_seed(static_cast<uint64_t>(d.Int(0, 1 << 20)));
      w->set_min_p(d.FloatOr(0.f));
      w->set_presence_penalty(d.FloatOr(0.f));
      w->set_frequency_penalty(d.FloatOr(0.f));
      if (d.Chance(0.2)) w->set_logprobs(static_cast<int32_t>(d.Int(-1, 1 << 20)));
      if (d.Chance(0.2)) w->set_repetition_penalty(d.FloatOr(1.1f));
    }
    s.set_skip_sampling(d.Chance(0.2));
    s.set_return_logits(d.Chance(0.2));
    s.set_return_scores(d.Chance(0.1));
    s.set_per_head(d.Chance(0.05));
    if (d.Chance(0.2)) {
      s.mutable_scoring()->set_reduce(static_cast<xkv::v1::ScoreReduce>(d.Int(0, 3)));
      s.mutable_scoring()->set_pool(static_cast<xkv::v1::ScorePool>(d.Int(0, 3)));
      s.mutable_scoring()->set_pool_kernel(static_cast<int32_t>(d.Int(-1, 65)));
    }
    if (d.Chance(0.05)) s.set_replayed_decodes(d.Int64Or(d.Int(0, 4)));
    const int64_t prefix = s.new_sequence() ? n_new - kWindow : -1;
    if (d.Chance(prefix > 0 ? 0.4 : 0.1)) {
      *s.mutable_compact() = RandomCompact(d, prefix);
      // Top-score policies need this step's window scores.
      if (d.Chance(0.6)) s.set_mode(xkv::v1::SEQUENCE_MODE_OBSERVE);
    }
    return s;
  }

  std::vector<std::unique_ptr<StageExecutor>> stages_;
  std::map<uint64_t, int64_t> next_;  // logical length of each live id, from accepted steps
};

TEST_P(RandomStepsTest, AnswersAreCleanAndRefusalsChangeNothing) {
  Draw d(GetParam());
  int accepted = 0, refused = 0, compactions = 0, batched = 0;
  for (int i = 0; i < 2000; ++i) {
    const Snapshot before = Take();
    absl::Status status;
    std::string what;
    const double kind = d.Int(0, 99);
    if (kind < 80) {
      xkv::v1::StepRequest r;
      r.set_step_id(static_cast<uint64_t>(i + 1));
      if (d.Chance(0.05)) r.set_link_timeout_ms(d.Int64Or(d.Int(0, 100)));
      for (int n = static_cast<int>(d.Chance(0.5) ? d.Int(0, 3) : 1); n > 0; --n) {
        *r.add_sequences() = RandomSequence(d);
      }
      what = r.ShortDebugString();
      status = stage().Step(r).status();
      if (status.ok()) {
        batched += r.sequences_size() > 1;
        for (const xkv::v1::StepSequence& s : r.sequences()) compactions += s.has_compact();
      }
      for (const xkv::v1::StepSequence& s : r.sequences()) {
        // Scores-only and re-reading steps keep no KV: the logical length stays.
        const bool keeps =
            s.mode() == xkv::v1::SEQUENCE_MODE_NORMAL || s.mode() == xkv::v1::SEQUENCE_MODE_OBSERVE;
        if (status.ok() && keeps) next_[s.seq_id()] = s.position() + s.n_new();
      }
    } else if (kind < 90) {
      xkv::v1::CompactRequest c;
      c.set_seq_id(static_cast<uint64_t>(d.Int(1, kIds)));
      *c.mutable_compact() = RandomCompact(d);
      what = c.ShortDebugString();
      status = stage().Compact(c).status();
      compactions += status.ok();
    } else {
      xkv::v1::ReleaseRequest r;
      for (int n = static_cast<int>(d.Int(1, 3)); n > 0; --n) r.add_seq_ids(d.Int(1, kIds + 2));
      what = r.ShortDebugString();
      stage().Release(r);
      for (uint64_t id : r.seq_ids()) next_.erase(id);
    }
    SCOPED_TRACE(absl::StrCat("call ", i, ": ", what.substr(0, 2000), " -> ", status.ToString()));
    switch (status.code()) {
      case absl::StatusCode::kOk:
        ++accepted;
        break;
      case absl::StatusCode::kInvalidArgument:
      case absl::StatusCode::kNotFound:
      case absl::StatusCode::kFailedPrecondition:
      case absl::StatusCode::kResourceExhausted:
      case absl::StatusCode::kOutOfRange: {
        ++refused;
        const Snapshot after = Take();
        EXPECT_TRUE(after == before)
            << "before: " << Describe(before) << "\nafter:  " << Describe(after);
        break;
      }
      default:
        ADD_FAILURE() << "not a caller's error";
    }
    if (::testing::Test::HasFailure()) break;
    // Ids the stage no longer knows have no logical length.
    for (auto it = next_.begin(); it != next_.end();) {
      it = stage().CacheLength(it->first, 0) < 0 ? next_.erase(it) : std::next(it);
    }
  }
  // The stream exercises both outcomes, compaction and batching (about 500 accepted, 20
  // compactions and 20 batched steps per seed).
  EXPECT_GT(accepted, 200);
  EXPECT_GT(refused, 200);
  EXPECT_GE(compactions, 5);
  EXPECT_GE(batched, 5);
  stage().Release(
      testing::MakeRelease({1, 2, 3, 4, 5, 6, 7, 8, 9, 10, std::numeric_limits<uint64_t>::max()}));
  EXPECT_EQ(stage().status().usage().blocks_used(), 0);
  EXPECT_EQ(stage().status().sequences(), 0);
}

INSTANTIATE_TEST_SUITE_P(Seeds, RandomStepsTest, ::testing::Range<uint64_t>(1, 17));

}  // namespace
}  // namespace xkv
