// NcclStageLink between two GPUs of this process (label gpu; skips with fewer than 2 devices):
// rank 0 on cuda:0 sends to rank 1 on cuda:1, one thread per rank (joining the communicator is
// collective, so both ranks are created concurrently). Checks bit-exact rows over several steps of
// different sizes, a forwarded error, Discard keeping the stream in order, an out-of-order step,
// and that a receive for a step that never comes returns DEADLINE_EXCEEDED (then UNAVAILABLE)
// instead of hanging.
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstring>
#include <future>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "worker/nccl/nccl_stage_link.h"

namespace xkv {
namespace {

constexpr int kHidden = 576;  // SmolLM2-135M's hidden size

int DeviceCount() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}

// fp32 [rows, kHidden], random, with the awkward values a bit-exact copy must keep.
std::vector<float> RandomRows(int rows, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(-4.f, 4.f);
  std::vector<float> v(static_cast<size_t>(rows) * kHidden);
  for (float& x : v) x = dist(rng);
  if (v.size() >= 4) {
    v[0] = -0.0f;
    v[1] = std::numeric_limits<float>::infinity();
    v[2] = std::numeric_limits<float>::denorm_min();
    v[3] = std::numeric_limits<float>::quiet_NaN();
  }
  return v;
}

bool BitEqual(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() &&
         (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

class NcclLinkTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (DeviceCount() < 2) GTEST_SKIP() << "needs 2 CUDA devices, found " << DeviceCount();
    absl::StatusOr<std::string> id = NcclStageLink::NewNcclUniqueId();
    ASSERT_TRUE(id.ok()) << id.status();
    auto make = [&](int rank) {
      NcclStageLinkOptions o;
      o.config = {*id, rank, /*world_size=*/2, /*device=*/rank};
      o.init_timeout = absl::Seconds(60);
      o.send_timeout = absl::Seconds(3);
      o.discard_timeout = absl::Seconds(20);
      return NcclStageLink::Create(o);
    };
    auto f0 = std::async(std::launch::async, make, 0);
    auto f1 = std::async(std::launch::async, make, 1);
    absl::StatusOr<std::unique_ptr<NcclStageLink>> l0 = f0.get(), l1 = f1.get();
    ASSERT_TRUE(l0.ok()) << l0.status();
    ASSERT_TRUE(l1.ok()) << l1.status();
    sender_ = *std::move(l0);
    receiver_ = *std::move(l1);
  }

  // Both ranks finalize together (a lone finalize waits for the other rank's).
  void TearDown() override {
    auto f = std::async(std::launch::async, [this] { sender_.reset(); });
    receiver_.reset();
    f.get();
  }

  // Step `step` sent by rank 0 while rank 1 receives it.
  absl::StatusOr<std::vector<float>> Exchange(uint64_t step, const std::vector<float>& rows) {
    auto sent = std::async(std::launch::async, [&] { return sender_->Send(step, rows); });
    absl::StatusOr<std::vector<float>> got =
        receiver_->Receive(step, absl::Now() + absl::Seconds(20));
    const absl::Status s = sent.get();
    if (!s.ok()) return s;
    return got;
  }

  std::unique_ptr<NcclStageLink> sender_;    // rank 0, cuda:0
  std::unique_ptr<NcclStageLink> receiver_;  // rank 1, cuda:1
};

TEST_F(NcclLinkTest, RowsArriveBitExactStepAfterStep) {
  EXPECT_EQ(sender_->rank(), 0);
  EXPECT_EQ(receiver_->world_size(), 2);
  const int rows[] = {1, 7, 0, 2048, 3, 513};  // grows the staging buffers, then reuses them
  for (int i = 0; i < 6; ++i) {
    const std::vector<float> sent = RandomRows(rows[i], 100 + i);
    absl::StatusOr<std::vector<float>> got = Exchange(10 + i, sent);
    ASSERT_TRUE(got.ok()) << "step " << 10 + i << ": " << got.status();
    EXPECT_TRUE(BitEqual(*got, sent)) << "step " << 10 + i << ", " << rows[i] << " rows";
  }
  EXPECT_TRUE(sender_->health().ok());
  EXPECT_TRUE(receiver_->health().ok());
}

TEST_F(NcclLinkTest, SendErrorReachesTheReceiver) {
  const std::string long_text(600, 'e');  // truncated to the header's message buffer
  auto sent = std::async(std::launch::async, [&] {
    absl::Status a = sender_->SendError(1, absl::ResourceExhaustedError("no KV blocks for seq 3"));
    absl::Status b = sender_->SendError(2, absl::InvalidArgumentError(long_text));
    return a.ok() ? b : a;
  });
  absl::StatusOr<std::vector<float>> first = receiver_->Receive(1, absl::Now() + absl::Seconds(20));
  absl::StatusOr<std::vector<float>> second =
      receiver_->Receive(2, absl::Now() + absl::Seconds(20));
  ASSERT_TRUE(sent.get().ok());
  EXPECT_EQ(first.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(first.status().message().find("no KV blocks for seq 3"), std::string::npos)
      << first.status();
  EXPECT_EQ(second.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(second.status().message().find(std::string(200, 'e')), std::string::npos);
  // An error step leaves the link usable.
  const std::vector<float> rows = RandomRows(5, 3);
  absl::StatusOr<std::vector<float>> got = Exchange(3, rows);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(BitEqual(*got, rows));
}

TEST_F(NcclLinkTest, DiscardDropsTheStepAndKeepsOrder) {
  const std::vector<float> dropped = RandomRows(64, 1), kept = RandomRows(9, 2);
  auto sent = std::async(std::launch::async, [&] {
    absl::Status a = sender_->Send(20, dropped);
    absl::Status b = sender_->SendError(21, absl::AbortedError("failed upstream"));
    absl::Status c = sender_->Send(22, kept);
    return !a.ok() ? a : !b.ok() ? b : c;
  });
  receiver_->Discard(20);  // rows dropped
  receiver_->Discard(21);  // an error dropped
  absl::StatusOr<std::vector<float>> got = receiver_->Receive(22, absl::Now() + absl::Seconds(20));
  ASSERT_TRUE(sent.get().ok());
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(BitEqual(*got, kept));
  EXPECT_TRUE(receiver_->health().ok());
}

TEST_F(NcclLinkTest, AStepOutOfOrderBreaksTheLink) {
  const std::vector<float> rows = RandomRows(4, 5);
  auto sent = std::async(std::launch::async, [&] { return sender_->Send(30, rows); });
  absl::StatusOr<std::vector<float>> got = receiver_->Receive(31, absl::Now() + absl::Seconds(20));
  EXPECT_TRUE(sent.get().ok());  // the receiver consumed the message, then saw the wrong id
  EXPECT_EQ(got.status().code(), absl::StatusCode::kInternal) << got.status();
  EXPECT_NE(got.status().message().find("step 30"), std::string::npos) << got.status();
  EXPECT_EQ(receiver_->health().code(), absl::StatusCode::kInternal);
  EXPECT_EQ(receiver_->Receive(31, absl::Now() + absl::Seconds(1)).status().code(),
            absl::StatusCode::kUnavailable);
}

TEST_F(NcclLinkTest, AMissingStepTimesOutThenTheLinkIsUnavailable) {
  const absl::Time start = absl::Now();
  absl::StatusOr<std::vector<float>> got = receiver_->Receive(40, start + absl::Seconds(2));
  const absl::Duration waited = absl::Now() - start;
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDeadlineExceeded) << got.status();
  EXPECT_GE(waited, absl::Seconds(2));
  EXPECT_LT(waited, absl::Seconds(30)) << "the wait must end near its deadline, not hang";
  EXPECT_FALSE(receiver_->health().ok());
  EXPECT_EQ(receiver_->Receive(41, absl::Now() + absl::Seconds(20)).status().code(),
            absl::StatusCode::kUnavailable);
  receiver_->Discard(41);  // a broken link does not wait
  // The peer aborted: the sender's next step fails within its send timeout, then stays failed.
  EXPECT_FALSE(sender_->Send(41, RandomRows(2, 9)).ok());
  EXPECT_EQ(sender_->Send(42, RandomRows(2, 9)).code(), absl::StatusCode::kUnavailable);
}

TEST(NcclLinkConfigGpuTest, RejectsABadConfigBeforeTouchingTheDevice) {
  NcclStageLinkOptions o;
  o.config = {std::string(5, 'x'), 0, 2, 0};
  EXPECT_EQ(NcclStageLink::Create(o).status().code(), absl::StatusCode::kInvalidArgument);
  o.config = {std::string(kNcclUniqueIdBytes, 'x'), 2, 2, 0};
  EXPECT_EQ(NcclStageLink::Create(o).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(NcclLinkConfigGpuTest, UniqueIdsAreFreshAnd128Bytes) {
  absl::StatusOr<std::string> a = NcclStageLink::NewNcclUniqueId();
  absl::StatusOr<std::string> b = NcclStageLink::NewNcclUniqueId();
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(a->size(), kNcclUniqueIdBytes);
  EXPECT_NE(*a, *b);
  EXPECT_STREQ(std::getenv("NCCL_NVLS_ENABLE"), "0");
}

}  // namespace
}  // namespace xkv
