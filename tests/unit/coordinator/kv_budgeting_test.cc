#include "coordinator/kv_budgeting.h"

#include <cstdint>
#include <limits>
#include <vector>

#include "gtest/gtest.h"

namespace xkv {
namespace {

xkv::v1::LayerGains Gains(int layer, std::vector<double> gains, double total_mass) {
  xkv::v1::LayerGains g;
  g.set_layer(layer);
  for (double x : gains) g.add_gains(x);
  g.set_total_mass(total_mass);
  g.set_heads(1);
  return g;
}

// The stages send gains divided by each layer's mass S_l; the global allocator multiplies S_l back
// (raw scores), the paper's does not.
TEST(KvBudgetingTest, GlobalAllocatorWeighsLayersByTheirMass) {
  const std::vector<xkv::v1::LayerGains> gains = {Gains(0, {0.5, 0.3, 0.1, 0.1}, 1.0),
                                                  Gains(1, {0.3, 0.3, 0.2, 0.2}, 10.0)};
  KvSettings spec;
  spec.target = KvTarget::Tokens(4);
  spec.allocator.floor = 0.0;
  absl::StatusOr<PolicyBudgets> global = SolveFromGains(gains, 4, 8, spec);
  ASSERT_TRUE(global.ok()) << global.status();
  EXPECT_EQ(global->budgets, (std::vector<int64_t>{0, 4}));
  spec.allocator.kind = AllocatorKind::kPaper;
  absl::StatusOr<PolicyBudgets> paper = SolveFromGains(gains, 4, 8, spec);
  ASSERT_TRUE(paper.ok());
  EXPECT_EQ(paper->budgets, (std::vector<int64_t>{2, 2}));
  // Retention: the paper's mean of per-layer retention; the global one weighs by mass.
  EXPECT_NEAR(RetentionOf(gains, paper->budgets), (0.8 + 0.6) / 2, 1e-12);
  EXPECT_NEAR(RetentionOf(gains, global->budgets, AllocatorKind::kGlobal), 10.0 / 11.0, 1e-12);
  EXPECT_NEAR(*global->average_retention, 10.0 / 11.0, 1e-12);
}

TEST(KvBudgetingTest, HugeTargetsFromTheNetworkAreClampedNotOverflowed) {
  KvSettings spec;
  spec.policy = PolicyKind::kSnapKv;
  spec.target = KvTarget::Bytes(std::numeric_limits<int64_t>::max());
  absl::StatusOr<PolicyBudgets> b = BudgetsUpFront(30, 1000, 2304, spec);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->budgets, std::vector<int64_t>(30, 1000));
  spec.target = KvTarget::Tokens(std::numeric_limits<int64_t>::max());
  b = BudgetsUpFront(30, 1000, 2304, spec);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->total_tokens, 30 * 1000);
  spec.policy = PolicyKind::kXkv;
  EXPECT_EQ(BudgetsUpFront(30, 1000, 2304, spec).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace xkv
