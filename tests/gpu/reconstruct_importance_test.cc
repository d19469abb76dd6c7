// Reconstruction scores on the device (kernels/cuda/reconstruct_importance.cuh) against
// cpu::LaunchReconstructScores, contiguous and paged keys; then the whole re-reading
// (ScoreByReconstruction, model/reconstruct_scorer.h) of a real-model prompt on the CUDA engine
// against the CPU engine.
// Kernel tolerance: atol 1e-6 + rtol 1e-4 (same keys; expf vs FastExp and the dot products'
// order differ; head_dim a multiple of 16 runs on tensor cores with the queries rounded to bf16,
// so the reference gets them rounded too). Engine tolerance: the GPU engine runs bf16 weights,
// activations and KV, so its probabilities differ by up to a few percent of their range; the test
// asserts that the tokens each (layer, KV head) would keep at a 20% budget are mostly the same (>=
// 70% overlap on average, where an unrelated ranking gives about 20%) and prints the agreement
// (docs/quality-reconstruct.md).
#include "kernels/cpu/reconstruct_importance.h"

#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <ostream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda/reconstruct_importance.cuh"
#include "model/chat_template.h"
#include "model/gguf.h"
#include "model/reconstruct_scorer.h"
#include "model/tokenizer.h"
#include "tests/gpu/gpu_test_util.h"
#include "tests/gpu/paged_fixture.h"
#include "worker/stage_engine_factory.h"

namespace xkv::gpu_test {
namespace {

struct Case {
  int heads, kv_heads, head_dim;
  int64_t C, b, e, R;
  int sinks;
};

// Names the case in test lists (ctest discovers tests by these names).
void PrintTo(const Case& c, std::ostream* os) {
  *os << c.heads << "h" << c.kv_heads << "kv" << c.head_dim << "d_C" << c.C << "_b" << c.b << "_e"
      << c.e << "_R" << c.R << "_s" << c.sinks;
}

class ReconstructKernelTest : public ::testing::TestWithParam<Case> {};

TEST_P(ReconstructKernelTest, MatchesCpu) {
  XKV_SKIP_WITHOUT_GPU();
  const Case c = GetParam();
  const ReconstructShape shape{c.heads, c.kv_heads, c.head_dim, c.R, c.C, c.b, c.e, c.sinks};
  const int64_t nc = c.e - c.b, len = c.C + c.R;
  const HostPagedLayer host = MakePagedLayer(c.kv_heads, c.head_dim, {len}, 41);
  const std::vector<float> k = host.Gather(host.k, 0);  // [kv_heads, len, head_dim]
  const std::vector<float> q = RandomVector(c.R * c.heads * c.head_dim, 42, -3, 3);
  // Non-zero start values: the launchers max-accumulate.
  std::vector<float> want = RandomVector(c.kv_heads * nc, 43, 0, 0.05f);
  const std::vector<float> start = want;
  const std::vector<float> q_ref = c.head_dim % 16 == 0 ? RoundBf16(q) : q;
  XKV_ASSERT_OK(
      cpu::LaunchReconstructScores(q_ref.data(), k.data(), len * c.head_dim, shape, want.data()));
  DeviceBuffer<float> d_q(q), d_k(k), d_scores(start);
  XKV_ASSERT_OK(cuda::LaunchReconstructScores(d_q.get(), d_k.get(), len * c.head_dim, shape,
                                              d_scores.get(), nullptr));
  XKV_ASSERT_CUDA(cudaDeviceSynchronize());
  EXPECT_TRUE(AllClose(d_scores.Download(), want, 1e-6f, 1e-4f)) << "contiguous";

  DevicePagedLayer dev(host);
  DeviceBuffer<int32_t> table(host.tables[0]);
  DeviceBuffer<float> d_paged(start);
  XKV_ASSERT_OK(cuda::LaunchReconstructScoresPaged(d_q.get(), dev.view, table.get(), shape,
                                                   d_paged.get(), nullptr));
  XKV_ASSERT_CUDA(cudaDeviceSynchronize());
  EXPECT_TRUE(AllClose(d_paged.Download(), want, 1e-6f, 1e-4f)) << "paged";
  // The scores are probabilities: some chunk key must have received real attention.
  EXPECT_GT(*std::max_element(want.begin(), want.end()), 0.05f);
}

INSTANTIATE_TEST_SUITE_P(Shapes, ReconstructKernelTest,
                         ::testing::Values(Case{4, 2, 64, 40, 0, 40, 45, 4},       // first chunk
                                           Case{9, 3, 64, 300, 100, 228, 150, 4},  // SmolLM2
                                           Case{8, 8, 128, 70, 2, 33, 1, 4},       // MHA, one query
                                           Case{8, 2, 64, 600, 64, 600, 560, 0},
                                           // many 64-row and 64-key tiles, partial last ones
                                           Case{9, 3, 64, 2100, 1000, 2048, 1100, 4},
                                           Case{32, 8, 128, 700, 100, 613, 130, 4},
                                           // head_dim 40: the CUDA-core kernel
                                           Case{4, 2, 40, 300, 10, 200, 150, 4}));

TEST(ReconstructKernel, RejectsBadShapes) {
  XKV_SKIP_WITHOUT_GPU();
  DeviceBuffer<float> q(64), k(64 * 64), s(64);
  ReconstructShape bad{2, 1, 8, 2, 6, 4, 8, 4};  // chunk passes the context
  EXPECT_EQ(cuda::LaunchReconstructScores(q.get(), k.get(), 8 * 8, bad, s.get(), nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  bad = {2, 1, 8, 2, 6, 0, 6, 4};
  EXPECT_EQ(cuda::LaunchReconstructScores(q.get(), k.get(), 7 * 8, bad, s.get(), nullptr).code(),
            absl::StatusCode::kInvalidArgument);  // stride below C + R keys
  bad.n_heads = 3;                                // not a multiple of the KV heads
  bad.n_kv_heads = 2;
  EXPECT_EQ(cuda::LaunchReconstructScores(q.get(), k.get(), 8 * 8, bad, s.get(), nullptr).code(),
            absl::StatusCode::kInvalidArgument);
}

bool FileExists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

// Fraction of the top-n indices of `a` that are among the top-n of `b`.
double TopOverlap(const float* a, const float* b, int64_t len, int64_t n) {
  std::vector<int64_t> ia(len), ib(len);
  std::iota(ia.begin(), ia.end(), 0);
  std::iota(ib.begin(), ib.end(), 0);
  auto by = [](const float* s) { return [s](int64_t x, int64_t y) { return s[x] > s[y]; }; };
  std::partial_sort(ia.begin(), ia.begin() + n, ia.end(), by(a));
  std::partial_sort(ib.begin(), ib.begin() + n, ib.end(), by(b));
  std::sort(ia.begin(), ia.begin() + n);
  std::sort(ib.begin(), ib.begin() + n);
  std::vector<int64_t> both;
  std::set_intersection(ia.begin(), ia.begin() + n, ib.begin(), ib.begin() + n,
                        std::back_inserter(both));
  return static_cast<double>(both.size()) / n;
}

TEST(ReconstructEngine, CudaEngineScoresMatchTheCpuEngine) {
  XKV_SKIP_WITHOUT_GPU();
  const std::string path = RealModelPath();
  if (!FileExists(path)) GTEST_SKIP() << "no model at " << path << " (set XKV_MODEL)";
  auto file = GgufFile::Open(path);
  XKV_ASSERT_OK(file.status());
  auto tok = Tokenizer::FromGguf(**file);
  XKV_ASSERT_OK(tok.status());
  auto repeat = MakeRepeatPrompt(**tok, ChatTemplate::SmolLm2());
  XKV_ASSERT_OK(repeat.status());
  std::string text;
  for (int i = 0; i < 12; ++i) {
    text += "Record " + std::to_string(i) + ": the code of room " + std::to_string(100 + 7 * i) +
            " is " + std::to_string(4711 * (i + 3) % 9973) + ", kept in the blue ledger. ";
  }
  auto prompt = (*tok)->Encode(text, /*parse_special=*/false);
  XKV_ASSERT_OK(prompt.status());
  const int64_t T = static_cast<int64_t>(prompt->size());
  ReconstructOptions options;
  options.chunk_tokens = 96;  // several chunks, as long prompts have
  std::vector<ReconstructScores> scores;
  for (const char* device : {"cpu", "cuda:0"}) {
    StageOptions so;
    so.model_path = path;
    so.device = device;
    so.num_threads = 4;
    so.numerics = Numerics::kExact;
    so.kv_capacity_blocks = 256;
    auto engine = LoadStageEngine(so);
    XKV_ASSERT_OK(engine.status());
    EngineStep step;
    step.sequences.push_back({1, T, 0, false});
    XKV_ASSERT_OK((*engine)->EmbedResident(*prompt));
    XKV_ASSERT_OK((*engine)->RunLayersResident(step, {}, nullptr));
    auto s = ScoreByReconstruction(engine->get(), 1, *prompt, *repeat, options);
    XKV_ASSERT_OK(s.status());
    for (int l = 0; l < (*engine)->config().n_layers; ++l) {
      EXPECT_EQ((*engine)->CacheLength(1, l), T) << device << ": the cache is unchanged";
    }
    scores.push_back(*std::move(s));
  }
  const ReconstructScores& cpu = scores[0];
  const ReconstructScores& gpu = scores[1];
  ASSERT_EQ(cpu.layers.size(), gpu.layers.size());
  const int64_t keep = std::max<int64_t>(1, T / 5);
  double overlap = 0, max_diff = 0, sum_diff = 0, min_overlap = 1;
  int rows = 0;
  for (size_t l = 0; l < cpu.layers.size(); ++l) {
    ASSERT_EQ(cpu.layers[l].size(), gpu.layers[l].size());
    for (int g = 0; g < cpu.n_kv_heads; ++g) {
      const float* a = cpu.layers[l].data() + g * T;
      const float* b = gpu.layers[l].data() + g * T;
      for (int64_t j = 0; j < T; ++j) {
        const double diff = std::fabs(a[j] - b[j]);
        max_diff = std::max(max_diff, diff);
        sum_diff += diff;
      }
      const double o = TopOverlap(a, b, T, keep);
      overlap += o;
      min_overlap = std::min(min_overlap, o);
      ++rows;
    }
  }
  overlap /= rows;
  const double mean_diff = sum_diff / (static_cast<double>(rows) * T);
  std::printf(
      "[reconstruct] %lld-token prompt, chunks of %lld, %d (layer, KV head) rows: top-20%% "
      "overlap CPU vs GPU mean %.3f min %.3f; |score diff| mean %.5f max %.4f\n",
      static_cast<long long>(T), static_cast<long long>(options.chunk_tokens), rows, overlap,
      min_overlap, mean_diff, max_diff);
  EXPECT_GE(overlap, 0.7);  // a ranking unrelated to the CPU's overlaps by about 0.2
  EXPECT_LE(mean_diff, 0.02);
}

}  // namespace
}  // namespace xkv::gpu_test
