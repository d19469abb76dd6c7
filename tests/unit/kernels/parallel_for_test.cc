#include "kernels/cpu/parallel_for.h"

#include <atomic>
#include <vector>

#include "gtest/gtest.h"

namespace xkv::cpu {
namespace {

TEST(ParallelForTest, RunsEveryItemOnceAcrossManyCalls) {
  ThreadPool pool(3);
  for (int call = 0; call < 200; ++call) {
    const int n = call % 17;
    std::vector<std::atomic<int>> hits(n);
    pool.ParallelFor(n, [&](int64_t i) { hits[i].fetch_add(1); });
    for (int i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << call << " " << i;
  }
}

TEST(ParallelForTest, InlineWithoutPool) {
  int sum = 0;
  ParallelFor(nullptr, 10, [&](int64_t i) { sum += static_cast<int>(i); });
  EXPECT_EQ(sum, 45);
}

}  // namespace
}  // namespace xkv::cpu
