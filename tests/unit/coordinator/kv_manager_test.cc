#include "coordinator/kv_manager.h"

#include <algorithm>
#include <iterator>
#include <map>
#include <random>
#include <tuple>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace xkv {
namespace {

using ::testing::HasSubstr;

KvManager Make(const KvManagerOptions& o) {
  absl::StatusOr<KvManager> m = KvManager::Create(o);
  EXPECT_TRUE(m.ok()) << m.status();
  return *std::move(m);
}

std::vector<KvLayerHeld> Held(const std::vector<int64_t>& tokens, int block_tokens) {
  std::vector<KvLayerHeld> held;
  for (size_t l = 0; l < tokens.size(); ++l) {
    held.push_back({static_cast<int>(l), tokens[l], (tokens[l] + block_tokens - 1) / block_tokens});
  }
  return held;
}

TEST(KvManagerTest, PolicyNames) {
  EXPECT_EQ(*ParseKvAdmission("guaranteed_no_evict"), KvAdmission::kGuaranteedNoEvict);
  EXPECT_EQ(*ParseKvAdmission("max_utilization"), KvAdmission::kMaxUtilization);
  for (KvAdmission a : {KvAdmission::kGuaranteedNoEvict, KvAdmission::kMaxUtilization}) {
    EXPECT_EQ(*ParseKvAdmission(KvAdmissionName(a)), a);
  }
  absl::StatusOr<KvAdmission> bad = ParseKvAdmission("greedy");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(),
              testing::AllOf(HasSubstr("'greedy'"), HasSubstr("guaranteed_no_evict"),
                             HasSubstr("max_utilization")));
}

TEST(KvManagerTest, RejectsBadLayouts) {
  EXPECT_FALSE(KvManager::Create({0, {{0, 2, 10}}}).ok());              // block_tokens
  EXPECT_FALSE(KvManager::Create({16, {{1, 2, 10}}}).ok());             // not from layer 0
  EXPECT_FALSE(KvManager::Create({16, {{0, 2, 10}, {3, 4, 1}}}).ok());  // a gap
  EXPECT_FALSE(KvManager::Create({16, {{0, 2, -1}}}).ok());             // capacity
  EXPECT_FALSE(KvManager::Create({16, {{0, 0, 10}}}).ok());             // no layers
  KvManager none = Make({16, {}});
  EXPECT_FALSE(none.enabled());
}

TEST(KvManagerTest, AdmissionGrowthCompactionAndVerification) {
  KvManager m = Make({4, {{0, 2, 10}, {2, 3, 4}}});  // blocks of 4 tokens
  EXPECT_TRUE(m.CheckEverFits(1, 16).ok());          // 4 blocks a layer: 8 of 10 and 4 of 4
  absl::Status never = m.CheckEverFits(1, 17);
  EXPECT_EQ(never.code(), absl::StatusCode::kInvalidArgument);  // retrying cannot help
  EXPECT_THAT(never.message(), HasSubstr("stage 1"));
  ASSERT_TRUE(m.Allocate(1, 8).ok());  // 2 blocks in each of 3 layers
  EXPECT_EQ(m.free_blocks(), (std::vector<int64_t>{6, 2}));
  EXPECT_EQ(m.Allocate(1, 1).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_TRUE(m.CanAllocate(8));   // 4 of 6 and 2 of 2
  EXPECT_FALSE(m.CanAllocate(9));  // 3 blocks a layer: stage 1 has 2
  EXPECT_TRUE(m.CanAllocate(4));
  EXPECT_FALSE(m.CanAllocate(4, {0, 2}));  // leaving 2 free on stage 1 for decodes
  ASSERT_TRUE(m.Grow(1, 8).ok());          // the prompt, within the reservation
  EXPECT_EQ(m.free_blocks(), (std::vector<int64_t>{6, 2}));
  EXPECT_EQ(m.GrowthBlocks(1, 1), (std::vector<int64_t>{2, 1}));  // a 9th token: a block a layer
  ASSERT_TRUE(m.Grow(1, 1).ok());
  EXPECT_EQ(m.free_blocks(), (std::vector<int64_t>{4, 1}));
  EXPECT_TRUE(m.Verify(1, Held({9, 9, 9}, 4)).ok());
  absl::Status off = m.Verify(1, Held({9, 8, 9}, 4));
  EXPECT_EQ(off.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(off.message(),
              testing::AllOf(HasSubstr("sequence 1 layer 1"), HasSubstr("8 tokens in 2 blocks"),
                             HasSubstr("9 tokens in 3 blocks")));
  // Compaction to different sizes per layer; the freed blocks serve any layer of the stage.
  ASSERT_TRUE(m.Shrink(1, Held({2, 9, 5}, 4), /*headroom_tokens=*/0).ok());
  EXPECT_EQ(m.free_blocks(), (std::vector<int64_t>{6, 2}));
  EXPECT_EQ(m.reserved(1, 0), 1);
  EXPECT_EQ(m.reserved(1, 2), 2);
  EXPECT_EQ(m.Shrink(1, Held({3, 9, 5}, 4), 0).code(), absl::StatusCode::kInternal);  // grows
  EXPECT_EQ(m.Grow(1, 12).code(), absl::StatusCode::kResourceExhausted);  // stage 1: 3 > 2 free
  EXPECT_EQ(m.tokens(1, 0), 2) << "a refused growth changes nothing";
  EXPECT_TRUE(m.Free(1));
  EXPECT_FALSE(m.Free(1));
  EXPECT_EQ(m.free_blocks(), (std::vector<int64_t>{10, 4}));
}

// A seeded random sequence of admit / grow / compact / release / preempt operations against a
// plain reference of the pools: every answer matches the reference, blocks are conserved (free +
// reserved = capacity on every stage), no stage goes over capacity, and releasing everything
// restores the idle count.
TEST(KvManagerTest, RandomOperationsMatchAReferencePool) {
  constexpr int kBlockTokens = 4;
  const std::vector<KvStage> stages = {{0, 2, 40}, {2, 5, 50}, {5, 6, 12}};
  KvManager m = Make({kBlockTokens, stages});
  const int L = 6;
  auto blocks_for = [](int64_t t) { return (t + kBlockTokens - 1) / kBlockTokens; };
  auto stage_of = [&](int l) { return l < 2 ? 0 : l < 5 ? 1 : 2; };
  struct Ref {
    std::vector<int64_t> tokens, reserved;
  };
  std::map<uint64_t, Ref> ref;
  std::map<uint64_t, int64_t> preempted;  // id -> tokens to recompute
  auto ref_free = [&]() {
    std::vector<int64_t> free = {40, 50, 12};
    for (const auto& [id, r] : ref) {
      for (int l = 0; l < L; ++l) free[stage_of(l)] -= r.reserved[l];
    }
    return free;
  };
  auto fits = [&](const std::vector<int64_t>& need) {
    const std::vector<int64_t> free = ref_free();
    for (int s = 0; s < 3; ++s) {
      if (need[s] > free[s]) return false;
    }
    return true;
  };
  std::mt19937_64 rng(2024);
  uint64_t next_id = 1;
  int admitted = 0, refused = 0, grown = 0, grow_refused = 0, shrunk = 0, preemptions = 0;
  for (int iter = 0; iter < 4000; ++iter) {
    const int op = static_cast<int>(rng() % 10);
    const uint64_t pick = ref.empty() ? 0 : std::next(ref.begin(), rng() % ref.size())->first;
    if (op < 2 || ref.empty()) {  // admit a new request, or re-admit a preempted one
      uint64_t id = next_id;
      int64_t t = static_cast<int64_t>(1 + rng() % 40);
      if (!preempted.empty() && rng() % 2) std::tie(id, t) = *preempted.begin();
      std::vector<int64_t> need(3, 0);
      for (int l = 0; l < L; ++l) need[stage_of(l)] += blocks_for(t);
      const bool ok = fits(need);
      ASSERT_EQ(m.CanAllocate(t), ok) << iter;
      const absl::Status s = m.Allocate(id, t);
      ASSERT_EQ(s.ok(), ok) << iter << ": " << s;
      if (ok) {
        ref[id] = {std::vector<int64_t>(L, 0), std::vector<int64_t>(L, blocks_for(t))};
        preempted.erase(id);
        if (id == next_id) ++next_id;
        ++admitted;
      } else {
        EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
        ++refused;
      }
    } else if (op < 6) {  // a prefill chunk or decode tokens
      const int64_t n = static_cast<int64_t>(1 + rng() % (op == 2 ? 12 : 2));
      Ref& r = ref[pick];
      std::vector<int64_t> need(3, 0);
      for (int l = 0; l < L; ++l) {
        need[stage_of(l)] += std::max<int64_t>(0, blocks_for(r.tokens[l] + n) - r.reserved[l]);
      }
      ASSERT_EQ(m.GrowthBlocks(pick, n), need) << iter;
      const bool ok = fits(need);
      const absl::Status s = m.Grow(pick, n);
      ASSERT_EQ(s.ok(), ok) << iter << ": " << s;
      if (ok) {
        for (int l = 0; l < L; ++l) {
          r.tokens[l] += n;
          r.reserved[l] = std::max(r.reserved[l], blocks_for(r.tokens[l]));
        }
        ++grown;
      } else {
        EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
        ++grow_refused;
      }
    } else if (op < 8) {  // a compaction: each layer keeps its own share, plus headroom
      Ref& r = ref[pick];
      std::vector<int64_t> kept(L);
      for (int l = 0; l < L; ++l) kept[l] = r.tokens[l] == 0 ? 0 : rng() % (r.tokens[l] + 1);
      const int64_t headroom = static_cast<int64_t>(rng() % 10);
      ASSERT_TRUE(m.Shrink(pick, Held(kept, kBlockTokens), headroom).ok()) << iter;
      for (int l = 0; l < L; ++l) {
        r.tokens[l] = kept[l];
        r.reserved[l] = std::min(r.reserved[l], blocks_for(kept[l] + headroom));
      }
      ++shrunk;
    } else if (op == 8) {  // finish or cancel
      ASSERT_TRUE(m.Free(pick));
      ref.erase(pick);
    } else {  // preempt: freed now, recomputed later from what it held
      int64_t t = 0;
      for (int64_t x : ref[pick].tokens) t = std::max(t, x);
      ASSERT_TRUE(m.Free(pick));
      ref.erase(pick);
      preempted[pick] = std::max<int64_t>(t, 1);
      ++preemptions;
    }
    // Conservation and bounds on every stage; every sequence's layers as the reference has them.
    const std::vector<int64_t> free = ref_free();
    ASSERT_EQ(m.free_blocks(), free) << iter;
    for (int s = 0; s < 3; ++s) ASSERT_GE(free[s], 0) << "stage " << s << " over capacity";
    ASSERT_EQ(m.num_sequences(), static_cast<int>(ref.size()));
    for (const auto& [id, r] : ref) {
      for (int l = 0; l < L; ++l) {
        ASSERT_EQ(m.tokens(id, l), r.tokens[l]);
        ASSERT_EQ(m.reserved(id, l), r.reserved[l]);
        ASSERT_GE(r.reserved[l], blocks_for(r.tokens[l]));
      }
      ASSERT_TRUE(m.Verify(id, Held(r.tokens, kBlockTokens)).ok());
    }
  }
  EXPECT_GT(admitted, 100);
  EXPECT_GT(refused, 10);
  EXPECT_GT(grown, 500);
  EXPECT_GT(grow_refused, 10);
  EXPECT_GT(shrunk, 100);
  EXPECT_GT(preemptions, 50);
  for (const auto& [id, r] : ref) ASSERT_TRUE(m.Free(id));
  EXPECT_EQ(m.num_sequences(), 0);
  EXPECT_EQ(m.free_blocks(), (std::vector<int64_t>{40, 50, 12})) << "blocks leaked";
}

}  // namespace
}  // namespace xkv
