// XKV end to end on `xkv generate`'s path (architecture.md §2-§3): an embedded Coordinator over one
// in-process CPU stage of the real model. Budget targets are met for every policy; per_request and
// one_pass give the same tokens and caches; sampled mode is reproducible for a seed and gives the
// requests it does not profile the running mean's budgets; a chunked prefill gives the whole
// prompt's result; policy full and prompts within the window keep everything; bad targets are
// clear errors that change nothing.
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "base/status_macros.h"
#include "coordinator/coordinator.h"
#include "embedded/in_process_stage_client.h"
#include "embedded/local_generation.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/gguf.h"
#include "model/model_config.h"

namespace xkv {
namespace {

using ::testing::HasSubstr;

constexpr int kWindow = 8;  // CoordinatorOptions::window

std::string ModelPath() {
  const char* env = std::getenv("XKV_MODEL");
  return env != nullptr ? env : "models/SmolLM2-135M-Instruct.Q4_1.gguf";
}

// One in-process CPU stage.
absl::StatusOr<std::unique_ptr<Coordinator>> Start(CoordinatorOptions o) {
  ASSIGN_OR_RETURN(std::vector<std::unique_ptr<StageClient>> stages,
                   MakeInProcessStages(1, {"cpu"}, InProcessStageSettings{}));
  o.model_path = ModelPath();
  o.health_interval = absl::ZeroDuration();
  o.shutdown_grace = absl::ZeroDuration();
  return Coordinator::Start(o, std::move(stages));
}

// The service's default policy is full: requests name theirs.
CoordinatorOptions FullByDefault() {
  CoordinatorOptions o;
  o.kv.policy = PolicyKind::kFull;
  return o;
}

// A prompt of T random token ids (ordinary vocabulary, no special tokens).
std::vector<int32_t> Prompt(int T, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> ids(T);
  for (int32_t& id : ids) id = static_cast<int32_t>(1000 + rng() % 20000);
  return ids;
}

GenerateParams Greedy(std::vector<int32_t> prompt, KvPolicyOverride kv, int max_tokens = 4) {
  GenerateParams p;
  p.prompt_ids = std::move(prompt);
  p.max_tokens = max_tokens;
  p.ignore_eos = true;
  p.kv = std::move(kv);
  return p;
}

KvPolicyOverride Kv(std::string policy, std::string profile = "") {
  KvPolicyOverride kv;
  kv.policy = std::move(policy);
  kv.profile_mode = std::move(profile);
  return kv;
}

// Every request's result; fails the test for a request that did not end OK.
std::vector<LocalResult> Generate(Coordinator& c, std::vector<GenerateParams> requests) {
  absl::StatusOr<std::vector<LocalResult>> r = GenerateLocally(c, std::move(requests));
  EXPECT_TRUE(r.ok()) << r.status();
  if (!r.ok()) return {};
  for (const LocalResult& x : *r) EXPECT_TRUE(x.status.ok()) << x.status;
  return *std::move(r);
}

// Kept prefix tokens b_l per layer: each layer holds b_l + w prompt tokens plus the generated
// tokens fed back (all but the last).
std::vector<int64_t> KeptPrefix(const LocalResult& r) {
  std::vector<int64_t> b;
  for (const xkv::v1::LayerCacheSize& l : r.usage.layers()) {
    b.push_back(l.kept_tokens() - kWindow - (r.usage.completion_tokens() - 1));
  }
  return b;
}

int64_t Sum(const std::vector<int64_t>& v) {
  int64_t s = 0;
  for (int64_t x : v) s += x;
  return s;
}

class XkvGenerationTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!std::filesystem::exists(ModelPath())) return;
    auto gguf = GgufFile::Open(ModelPath());
    ASSERT_TRUE(gguf.ok()) << gguf.status();
    auto config = ReadModelConfig(**gguf);
    ASSERT_TRUE(config.ok()) << config.status();
    config_ = *config;
    auto c = Start(FullByDefault());
    ASSERT_TRUE(c.ok()) << c.status();
    shared_ = c->release();
  }
  static void TearDownTestSuite() {
    delete shared_;
    shared_ = nullptr;
  }
  void SetUp() override {
    if (!std::filesystem::exists(ModelPath())) GTEST_SKIP() << "no model at " << ModelPath();
    ASSERT_NE(shared_, nullptr);
  }
  // Bytes of K and V per token per layer on the CPU stage (fp32).
  static int64_t Bpt() { return config_.KvBytesPerTokenPerLayer(sizeof(float)); }
  static int L() { return config_.n_layers; }

  static ModelConfig config_;
  static Coordinator* shared_;  // default options; every request names its KV spec
};
ModelConfig XkvGenerationTest::config_;
Coordinator* XkvGenerationTest::shared_ = nullptr;

// Tokens: the kept prefix sums to N for every policy. Bytes: the largest N whose bytes fit M.
// Retention: met and reported.
TEST_F(XkvGenerationTest, BudgetTargetsAreMetForEveryPolicy) {
  const std::vector<std::vector<int32_t>> prompts = {Prompt(40, 1), Prompt(57, 2)};
  for (const char* policy : {"xkv", "snapkv", "pyramidkv", "streaming"}) {
    KvPolicyOverride kv = Kv(policy, "one_pass");
    kv.budget_tokens = 150;
    const std::vector<LocalResult> r =
        Generate(*shared_, {Greedy(prompts[0], kv), Greedy(prompts[1], kv)});
    ASSERT_EQ(r.size(), 2u);
    for (size_t i = 0; i < r.size(); ++i) {
      EXPECT_EQ(r[i].usage.policy(), policy);
      ASSERT_EQ(r[i].usage.layers_size(), L());
      const std::vector<int64_t> b = KeptPrefix(r[i]);
      EXPECT_EQ(Sum(b), 150) << policy << " prompt " << i;
      for (int64_t x : b) {
        EXPECT_GE(x, 0);
        EXPECT_LE(x, static_cast<int64_t>(prompts[i].size()) - kWindow);
      }
    }
  }
  const int64_t M = 37 * Bpt() + Bpt() / 2;
  for (const char* policy : {"xkv", "snapkv"}) {
    KvPolicyOverride kv = Kv(policy, "one_pass");
    kv.budget_bytes = M;
    const std::vector<LocalResult> r = Generate(*shared_, {Greedy(prompts[1], kv)});
    ASSERT_EQ(r.size(), 1u);
    EXPECT_EQ(Sum(KeptPrefix(r[0])), 37) << policy;
  }
  KvPolicyOverride kv = Kv("xkv", "one_pass");
  kv.retention = 0.9;
  const std::vector<LocalResult> r =
      Generate(*shared_, {Greedy(prompts[0], kv), Greedy(prompts[1], kv)});
  ASSERT_EQ(r.size(), 2u);
  for (const LocalResult& x : r) {
    ASSERT_TRUE(x.usage.has_retention());
    EXPECT_GE(x.usage.retention(), 0.9 - 1e-9);
    EXPECT_TRUE(x.usage.reachable());
    EXPECT_LT(x.usage.kv_bytes_held(), x.usage.kv_bytes_full());
  }
}

// per_request (a scores-only profile pass, then the prefill compacting with the solved budgets)
// and one_pass (an observed prefill, compacted after the solve) see the same Q and K: the same
// budgets, the same tokens, for a batch of different lengths.
TEST_F(XkvGenerationTest, PerRequestAndOnePassAreIdentical) {
  std::vector<GenerateParams> a, b;
  for (int T : {40, 29, 57}) {
    KvPolicyOverride kv = Kv("xkv", "per_request");
    kv.budget_tokens = 200;
    a.push_back(Greedy(Prompt(T, T), kv, 6));
    kv.profile_mode = "one_pass";
    b.push_back(Greedy(Prompt(T, T), kv, 6));
  }
  const std::vector<LocalResult> ra = Generate(*shared_, a), rb = Generate(*shared_, b);
  ASSERT_EQ(ra.size(), 3u);
  ASSERT_EQ(rb.size(), 3u);
  for (size_t i = 0; i < ra.size(); ++i) {
    EXPECT_EQ(ra[i].tokens, rb[i].tokens) << i;
    EXPECT_EQ(KeptPrefix(ra[i]), KeptPrefix(rb[i])) << i;
    EXPECT_EQ(Sum(KeptPrefix(ra[i])), 200) << i;
    EXPECT_EQ(ra[i].usage.retention(), rb[i].usage.retention()) << i;
    EXPECT_TRUE(ra[i].usage.profiled() && rb[i].usage.profiled()) << i;
    EXPECT_EQ(ra[i].usage.profile_mode(), "per_request");
    EXPECT_EQ(rb[i].usage.profile_mode(), "one_pass");
  }
}

// Sampled mode: two services with the same seed make the same decisions and keep the same
// tokens; the first request is profiled (no mean yet); a request that is not profiled gets
// budgets from the running mean of the profiled ones' b_l / P (checked by hand), scaled to its
// own target, across prompt lengths.
TEST_F(XkvGenerationTest, SampledModeIsReproducibleAndUsesTheRunningMean) {
  CoordinatorOptions o;
  o.kv.policy = PolicyKind::kXkv;
  o.kv.target = KvTarget::Tokens(200);
  o.kv.profile = {ProfileModeKind::kSampled, 0.5};
  o.seed = 1234;
  auto a = Start(o);
  auto b = Start(o);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  std::vector<std::vector<double>> fractions;  // b_l / P of every profiled request so far
  int profiled = 0;
  const int n = 10;
  for (int i = 0; i <= n; ++i) {
    const std::vector<int32_t> prompt = Prompt(36 + (i * 7) % 22, 500 + i);
    const int64_t P = static_cast<int64_t>(prompt.size()) - kWindow;
    const std::vector<LocalResult> ra = Generate(**a, {Greedy(prompt, {}, 2)});
    const std::vector<LocalResult> rb = Generate(**b, {Greedy(prompt, {}, 2)});
    ASSERT_EQ(ra.size(), 1u);
    ASSERT_EQ(rb.size(), 1u);
    EXPECT_EQ(ra[0].usage.profiled(), rb[0].usage.profiled()) << i;
    EXPECT_EQ(ra[0].tokens, rb[0].tokens) << i;
    const std::vector<int64_t> kept = KeptPrefix(ra[0]);
    EXPECT_EQ(kept, KeptPrefix(rb[0])) << i;
    EXPECT_EQ(Sum(kept), 200) << i;
    if (i == 0) {
      EXPECT_TRUE(ra[0].usage.profiled());
    }
    if (ra[0].usage.profiled()) {
      profiled += i > 0;
      std::vector<double> f;
      for (int64_t x : kept) f.push_back(static_cast<double>(x) / P);
      fractions.push_back(std::move(f));
      continue;
    }
    std::vector<double> mean(L(), 0.0);
    double total = 0;
    for (const std::vector<double>& f : fractions) {
      for (int l = 0; l < L(); ++l) mean[l] += f[l] / fractions.size();
    }
    for (double m : mean) total += m;
    for (int l = 0; l < L(); ++l) {
      EXPECT_LE(std::abs(kept[l] - mean[l] / total * 200), 1.0)
          << "request " << i << " layer " << l;
    }
  }
  EXPECT_GT(profiled, 0);  // with seed 1234 and rho = 0.5 both kinds occur
  EXPECT_LT(profiled, n);
}

// A prefill in chunks of 16 (the final chunk widened to hold the window) gives the whole prompt's
// budgets and tokens.
TEST_F(XkvGenerationTest, ChunkedPrefillMatchesWholePrompt) {
  CoordinatorOptions o = FullByDefault();
  o.scheduler.prefill_chunk = 16;
  auto chunked = Start(o);
  ASSERT_TRUE(chunked.ok()) << chunked.status();
  std::vector<GenerateParams> requests;
  for (int T : {50, 40}) {
    KvPolicyOverride kv = Kv("xkv", "one_pass");
    kv.budget_tokens = 200;
    requests.push_back(Greedy(Prompt(T, 900 + T), kv, 6));
  }
  const std::vector<LocalResult> whole = Generate(*shared_, requests);
  const std::vector<LocalResult> parts = Generate(**chunked, requests);
  ASSERT_EQ(whole.size(), 2u);
  ASSERT_EQ(parts.size(), 2u);
  for (size_t i = 0; i < whole.size(); ++i) {
    EXPECT_EQ(parts[i].tokens, whole[i].tokens) << i;
    EXPECT_EQ(KeptPrefix(parts[i]), KeptPrefix(whole[i])) << i;
    EXPECT_EQ(Sum(KeptPrefix(parts[i])), 200) << i;
  }
}

// Policy full and prompts of T <= w tokens keep every token: the bytes held are a full cache's.
TEST_F(XkvGenerationTest, FullPolicyAndShortPromptsKeepEverything) {
  KvPolicyOverride xkv = Kv("xkv", "one_pass");
  xkv.budget_tokens = 20;
  const std::vector<LocalResult> r =
      Generate(*shared_, {Greedy(Prompt(5, 5), xkv), Greedy(Prompt(8, 8), xkv),
                          Greedy(Prompt(40, 40), Kv("full")), Greedy(Prompt(40, 40), xkv)});
  ASSERT_EQ(r.size(), 4u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(r[i].usage.kv_bytes_held(), r[i].usage.kv_bytes_full()) << i;
    EXPECT_EQ(r[i].usage.retention(), 1.0) << i;
    for (const xkv::v1::LayerCacheSize& l : r[i].usage.layers()) {
      EXPECT_EQ(l.kept_tokens(), r[i].usage.prompt_tokens() + r[i].usage.completion_tokens() - 1);
    }
  }
  EXPECT_LT(r[3].usage.kv_bytes_held(), r[3].usage.kv_bytes_full());  // the same prompt, evicted
  EXPECT_EQ(Sum(KeptPrefix(r[3])), 20);
}

// Bad targets are INVALID_ARGUMENT naming the request, the value and the allowed range; nothing
// changes (the service serves the next request). A prefill chunk that cannot hold the observation
// window is refused at start (it used to fail every request of the step that observed it).
TEST_F(XkvGenerationTest, RejectsBadTargetsWithClearErrors) {
  const std::vector<int32_t> prompt = Prompt(29, 29);
  auto refused = [&](const KvPolicyOverride& kv) {
    absl::StatusOr<std::vector<LocalResult>> r =
        GenerateLocally(*shared_, {Greedy(prompt, Kv("xkv")), Greedy(prompt, kv)});
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(r.status().message(), HasSubstr("request 1"));
    return std::string(r.status().message());
  };
  for (double r : {1.5, 0.0, -0.2}) {
    KvPolicyOverride kv = Kv("xkv");
    kv.retention = r;
    EXPECT_THAT(refused(kv), HasSubstr("(0, 1]"));
  }
  KvPolicyOverride kv = Kv("xkv");
  kv.retention = 1.5;
  EXPECT_THAT(refused(kv), HasSubstr("1.5"));
  kv = Kv("snapkv");
  kv.retention = 0.5;
  EXPECT_THAT(refused(kv), HasSubstr("needs policy xkv"));
  kv = Kv("xkv");
  kv.budget_bytes = -1;
  EXPECT_THAT(refused(kv), HasSubstr("budget_bytes is -1"));
  kv = Kv("xkv", "sampled:1.5");
  EXPECT_THAT(refused(kv), HasSubstr("(0, 1]"));
  CoordinatorOptions o = FullByDefault();
  o.scheduler.prefill_chunk = 4;  // below the observation window
  auto small_chunk = Start(o);
  EXPECT_EQ(small_chunk.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(small_chunk.status().message(), HasSubstr("prefill_chunk (4) must be >= the"));
  const std::vector<LocalResult> ok = Generate(*shared_, {Greedy(prompt, Kv("xkv"), 2)});
  ASSERT_EQ(ok.size(), 1u);
  EXPECT_EQ(ok[0].tokens.size(), 2u);
}

}  // namespace
}  // namespace xkv
