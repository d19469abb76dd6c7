#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "worker/hidden_mailbox.h"
#include "worker/in_process_stage_link.h"

namespace xkv {
namespace {

TEST(HiddenMailboxTest, DeliversByStepId) {
  HiddenMailbox box;
  ASSERT_TRUE(box.Put(2, std::vector<float>{2.f}).ok());
  ASSERT_TRUE(box.Put(1, std::vector<float>{1.f, 1.5f}).ok());
  absl::StatusOr<std::vector<float>> one = box.Take(1, absl::InfiniteFuture());
  ASSERT_TRUE(one.ok());
  EXPECT_EQ(*one, (std::vector<float>{1.f, 1.5f}));
  EXPECT_EQ(box.pending(), 1u);
}

TEST(HiddenMailboxTest, MissingRowsHitTheDeadline) {
  HiddenMailbox box;
  // A deadline in the past: no wait at all.
  EXPECT_EQ(box.Take(5, absl::InfinitePast()).status().code(), absl::StatusCode::kDeadlineExceeded);
}

TEST(HiddenMailboxTest, ErrorsAndDiscards) {
  HiddenMailbox box;
  ASSERT_TRUE(box.Put(3, absl::ResourceExhaustedError("full")).ok());
  EXPECT_EQ(box.Take(3, absl::InfinitePast()).status().code(),
            absl::StatusCode::kResourceExhausted);
  box.Discard(4);
  ASSERT_TRUE(box.Put(4, std::vector<float>{1.f}).ok());  // after the receiver gave up: dropped
  EXPECT_EQ(box.pending(), 0u);
}

// Deliveries for steps nobody takes cannot grow the mailbox: a bounded number wait (the oldest is
// pushed out), each bounded in size, and they expire.
TEST(HiddenMailboxTest, PendingDeliveriesAreBoundedAndExpire) {
  absl::Time now = absl::UnixEpoch();
  HiddenMailboxOptions o;
  o.max_pending = 4;
  o.max_delivery_bytes = 8 * sizeof(float);
  o.ttl = absl::Seconds(10);
  o.now = [&now] { return now; };
  HiddenMailbox box(o);
  EXPECT_EQ(box.Put(1, std::vector<float>(9)).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(box.pending(), 0u);
  for (uint64_t step = 100; step < 200; ++step) {
    ASSERT_TRUE(box.Put(step, std::vector<float>(8, static_cast<float>(step))).ok());
    now += absl::Milliseconds(1);
  }
  EXPECT_EQ(box.pending(), 4u);
  EXPECT_EQ(box.pending_bytes(), 4 * 8 * static_cast<int64_t>(sizeof(float)));
  EXPECT_EQ(box.dropped(), 96);
  // The newest survive: step 199 is still there, step 100 was pushed out.
  EXPECT_EQ(box.Take(199, absl::InfinitePast())->at(0), 199.f);
  EXPECT_EQ(box.Take(100, absl::InfinitePast()).status().code(),
            absl::StatusCode::kDeadlineExceeded);
  // Nobody takes the rest: after the ttl they are gone (and their bytes freed) at the next Put.
  now += absl::Seconds(11);
  EXPECT_EQ(box.pending(), 0u);
  ASSERT_TRUE(box.Put(500, std::vector<float>(1)).ok());
  EXPECT_EQ(box.pending_bytes(), static_cast<int64_t>(sizeof(float)));
  EXPECT_EQ(box.dropped(), 99);
  // A repeated delivery for one step replaces the first (no growth).
  ASSERT_TRUE(box.Put(500, std::vector<float>(2)).ok());
  EXPECT_EQ(box.pending(), 1u);
  EXPECT_EQ(box.pending_bytes(), 2 * static_cast<int64_t>(sizeof(float)));
}

TEST(HiddenMailboxTest, PendingBytesAreBounded) {
  HiddenMailboxOptions o;
  o.max_pending_bytes = 10 * sizeof(float);
  HiddenMailbox box(o);
  EXPECT_EQ(box.Put(1, std::vector<float>(11)).code(), absl::StatusCode::kResourceExhausted);
  ASSERT_TRUE(box.Put(1, std::vector<float>(6)).ok());
  ASSERT_TRUE(box.Put(2, std::vector<float>(3)).ok());
  ASSERT_TRUE(box.Put(3, std::vector<float>(4)).ok());  // pushes step 1 out
  EXPECT_EQ(box.pending(), 2u);
  EXPECT_EQ(box.pending_bytes(), 7 * static_cast<int64_t>(sizeof(float)));
  EXPECT_EQ(box.Take(1, absl::InfinitePast()).status().code(), absl::StatusCode::kDeadlineExceeded);
}

TEST(HiddenMailboxTest, CloseWakesWaiters) {
  HiddenMailbox box;
  std::thread closer([&box] { box.Close(); });
  EXPECT_EQ(box.Take(9, absl::InfiniteFuture()).status().code(), absl::StatusCode::kUnavailable);
  closer.join();
}

TEST(InProcessStageLinkTest, ChainsStages) {
  std::vector<std::unique_ptr<StageLink>> links = MakeInProcessLinks(3);
  ASSERT_EQ(links.size(), 3u);
  std::thread sender([&] {
    ASSERT_TRUE(links[0]->Send(11, std::vector<float>{1.f, 2.f}).ok());
    ASSERT_TRUE(links[1]->SendError(12, absl::UnavailableError("stage 1 down")).ok());
  });
  absl::StatusOr<std::vector<float>> rows = links[1]->Receive(11, absl::InfiniteFuture());
  ASSERT_TRUE(rows.ok()) << rows.status();
  EXPECT_EQ(*rows, (std::vector<float>{1.f, 2.f}));
  EXPECT_EQ(links[2]->Receive(12, absl::InfiniteFuture()).status().code(),
            absl::StatusCode::kUnavailable);
  sender.join();
  EXPECT_EQ(links[0]->Receive(1, absl::InfinitePast()).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(links[2]->Send(1, {}).code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace xkv
