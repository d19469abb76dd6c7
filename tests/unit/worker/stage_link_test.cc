#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "worker/hidden_mailbox.h"
#include "worker/in_process_stage_link.h"

namespace xkv {
namespace {

TEST(HiddenMailboxTest, DeliversByStepId) {
  HiddenMailbox box;
  box.Put(2, std::vector<float>{2.f});
  box.Put(1, std::vector<float>{1.f, 1.5f});
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
  box.Put(3, absl::ResourceExhaustedError("full"));
  EXPECT_EQ(box.Take(3, absl::InfinitePast()).status().code(),
            absl::StatusCode::kResourceExhausted);
  box.Discard(4);
  box.Put(4, std::vector<float>{1.f});  // arrives after the receiver gave up: dropped
  EXPECT_EQ(box.pending(), 0u);
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
