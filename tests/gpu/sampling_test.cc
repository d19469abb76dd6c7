// Device sampling: greedy bit-exact vs xkv::Argmax; top-k / top-p samples always inside the CPU
// sampler's kept set; seeded reproducibility; and the empirical distribution over many Philox
// offsets vs SamplingDistribution's probabilities (within 5 standard errors).
#include "kernels/cuda/sampling.cuh"

#include <cmath>
#include <set>
#include <vector>

#include "gtest/gtest.h"
#include "model/sampler.h"
#include "tests/gpu/gpu_test_util.h"

namespace xkv::gpu_test {
namespace {

std::vector<int32_t> Sample(const std::vector<float>& logits, int64_t batch, int64_t vocab,
                            const std::vector<cuda::DeviceSamplingParams>& params) {
  DeviceBuffer<float> d_logits(logits);
  DeviceBuffer<cuda::DeviceSamplingParams> d_params(params);
  DeviceBuffer<int32_t> d_out(batch);
  const absl::Status st =
      cuda::LaunchSample(d_logits.get(), vocab, batch, vocab, d_params.get(), d_out.get(), nullptr);
  EXPECT_TRUE(st.ok()) << st;
  return d_out.Download();
}

TEST(SamplingTest, GreedyMatchesArgmaxExactly) {
  XKV_SKIP_WITHOUT_GPU();
  for (int64_t vocab : {49152, 128256, 7}) {
    const int64_t batch = 6;
    std::vector<float> logits = RandomVector(batch * vocab, 61, -10.f, 10.f);
    // Row 1: a tie for the maximum at two ids; row 2: all equal; row 3: max at the last id.
    logits[1 * vocab + 3] = logits[1 * vocab + vocab - 2] = 50.f;
    for (int64_t i = 0; i < vocab; ++i) logits[2 * vocab + i] = 1.5f;
    logits[3 * vocab + vocab - 1] = 60.f;
    std::vector<cuda::DeviceSamplingParams> params(batch);
    params[4].temperature = -1.f;
    params[5].temperature = std::nanf("");
    const std::vector<int32_t> got = Sample(logits, batch, vocab, params);
    for (int64_t b = 0; b < batch; ++b) {
      EXPECT_EQ(got[b], Argmax(absl::MakeConstSpan(logits.data() + b * vocab, vocab)))
          << "row " << b << " vocab " << vocab;
    }
  }
}

TEST(SamplingTest, TruncatedSamplesStayInCpuKeptSet) {
  XKV_SKIP_WITHOUT_GPU();
  const int64_t vocab = 49152, batch = 64;
  std::vector<float> logits = RandomVector(batch * vocab, 62, -4.f, 4.f);
  for (int64_t i = 0; i < vocab; i += 97) logits[i] = 3.5f;  // ties in row 0 at the top-k cut
  struct P {
    float t;
    int k;
    float p;
  };
  for (const P cfg :
       {P{1.f, 40, 1.f}, P{0.7f, 0, 0.9f}, P{1.3f, 50, 0.5f}, P{1.f, 1, 1.f}, P{2.f, 0, 0.05f}}) {
    std::vector<cuda::DeviceSamplingParams> params(batch);
    for (int64_t b = 0; b < batch; ++b) {
      params[b] = {cfg.t, cfg.k, cfg.p, 0, 1234, static_cast<uint64_t>(b)};
    }
    const std::vector<int32_t> got = Sample(logits, batch, vocab, params);
    for (int64_t b = 0; b < batch; ++b) {
      const auto row = absl::MakeConstSpan(logits.data() + b * vocab, vocab);
      std::set<int32_t> allowed;
      for (const Candidate& c : SamplingDistribution(row, {cfg.t, cfg.k, cfg.p, 0})) {
        allowed.insert(c.id);
      }
      EXPECT_TRUE(allowed.count(got[b]))
          << "row " << b << " id " << got[b] << " k " << cfg.k << " p " << cfg.p;
      if (cfg.k == 1) {
        EXPECT_EQ(got[b], Argmax(row));
      }
    }
    EXPECT_EQ(Sample(logits, batch, vocab, params), got) << "seeded runs must repeat";
  }
}

// 16384 draws of one small distribution (rows differ only in their Philox offset).
TEST(SamplingTest, EmpiricalDistributionMatchesCpu) {
  XKV_SKIP_WITHOUT_GPU();
  const int64_t vocab = 10, batch = 16384;
  const std::vector<float> base = {2.0f, 1.0f, 0.5f, 0.5f, -1.f, 3.f, 0.1f, -2.f, 1.5f, 0.9f};
  struct P {
    float t;
    int k;
    float p;
  };
  for (const P cfg : {P{1.f, 0, 1.f}, P{0.8f, 5, 1.f}, P{1.2f, 0, 0.8f}, P{1.f, 6, 0.7f}}) {
    std::vector<float> logits(batch * vocab);
    std::vector<cuda::DeviceSamplingParams> params(batch);
    for (int64_t b = 0; b < batch; ++b) {
      std::copy(base.begin(), base.end(), logits.begin() + b * vocab);
      params[b] = {cfg.t, cfg.k, cfg.p, 0, 99, static_cast<uint64_t>(b)};
    }
    const std::vector<int32_t> got = Sample(logits, batch, vocab, params);
    std::vector<double> freq(vocab, 0.0), prob(vocab, 0.0);
    for (int32_t id : got) {
      ASSERT_GE(id, 0);
      ASSERT_LT(id, vocab);
      freq[id] += 1.0 / batch;
    }
    for (const Candidate& c : SamplingDistribution(base, {cfg.t, cfg.k, cfg.p, 0})) {
      prob[c.id] = c.p;
    }
    for (int64_t i = 0; i < vocab; ++i) {
      const double se = std::sqrt(std::max(prob[i] * (1 - prob[i]), 1e-12) / batch);
      EXPECT_NEAR(freq[i], prob[i], 5 * se + 1e-9)
          << "id " << i << " k " << cfg.k << " p " << cfg.p << " t " << cfg.t;
    }
  }
}

}  // namespace
}  // namespace xkv::gpu_test
