#include <string>

#include "bench/gpu_bench.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace xkv {
namespace {

using ::testing::HasSubstr;

TEST(GpuBenchBatchedTest, TableAndJsonCarryLlamaBatchedBenchQuantities) {
  GpuBenchReport r;
  r.date = "2026-12-06";
  r.device = "NVIDIA H100 80GB HBM3";
  r.batched_model = "smol.gguf";
  BatchedDecodeRow b;
  b.batch = 8;
  b.prompt_tokens = 2048;
  b.gen_tokens = 128;
  b.prefill_ms = 250;
  b.decode_ms = 200;
  b.prefill_tps = 8 * 2048 / 0.25;
  b.decode_tps = 8 * 128 / 0.2;
  b.total_tps = 8 * (2048 + 128) / 0.45;
  r.batched.push_back(b);
  const std::string md = FormatGpuBench(GpuBenchOptions{}, r);
  EXPECT_THAT(
      md,
      HasSubstr("| PP | TG | B | T_PP s | S_PP t/s | T_TG s | S_TG t/s | T s | S t/s | kernels |"));
  EXPECT_THAT(
      md, HasSubstr("| 2048 | 128 | 8 | 0.250 | 65536 | 0.200 | 5120 | 0.450 | 38684 | default |"));
  const std::string json = GpuBenchJson(r);
  EXPECT_THAT(json, HasSubstr("\"batched\": [{\"batch\": 8, \"prompt_tokens\": 2048"));
  EXPECT_THAT(json, HasSubstr("\"decode_tps\": 5120"));
  EXPECT_THAT(json, HasSubstr("\"kernels\": \"default\""));
  // Without the section: no table, an empty list.
  r.batched.clear();
  EXPECT_THAT(FormatGpuBench(GpuBenchOptions{}, r), testing::Not(HasSubstr("S_TG")));
  EXPECT_THAT(GpuBenchJson(r), HasSubstr("\"batched\": []"));
}

TEST(GpuBenchBatchedTest, QuickShrinksTheBatchedSizes) {
  GpuBenchOptions o;
  EXPECT_EQ(o.batched_prompt_tokens, 2048);
  EXPECT_EQ(o.batched_gen_tokens, 128);
  EXPECT_EQ(o.batched_batches, (std::vector<int64_t>{8, 32}));
  ApplyQuick(o);
  EXPECT_LT(o.batched_prompt_tokens, 2048);
  EXPECT_LT(o.batched_gen_tokens, 128);
  EXPECT_TRUE(SectionEnabled(o, "batched"));
}

}  // namespace
}  // namespace xkv
