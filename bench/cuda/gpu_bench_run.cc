// RunGpuBench: the device, then each enabled section in order (bench/gpu_bench.h). The decode,
// prefill and profile sections share one random Llama-3-8B-shaped model; the concurrency section
// builds its own (32K sequences) after that one is gone; the real model (batch 1, then batched)
// comes last.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <ctime>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/status_macros.h"
#include "bench/cuda/gpu_bench_util.h"
#include "bench/cuda/gpu_ceilings.h"
#include "bench/cuda/gpu_sections.h"
#include "bench/gpu_bench.h"
#include "kernels/cuda/cuda_status.h"
#include "model/model_shapes.h"

namespace xkv {
namespace {

std::string TodayUtc() {
  char date[32];
  const std::time_t now = std::time(nullptr);
  std::strftime(date, sizeof(date), "%Y-%m-%d", std::gmtime(&now));
  return date;
}

absl::Status DescribeDevice(int device, GpuBenchReport& r) {
  int count = 0;
  CUDA_RETURN_IF_ERROR(cudaGetDeviceCount(&count));
  if (device < 0 || device >= count) {
    return absl::FailedPreconditionError(
        absl::StrCat("xkv bench gpu: device cuda:", device, " but ", count, " device(s) found"));
  }
  CUDA_RETURN_IF_ERROR(cudaSetDevice(device));
  cudaDeviceProp prop;
  CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, device));
  r.device = prop.name;
  r.sms = prop.multiProcessorCount;
  r.memory_gib = prop.totalGlobalMem / static_cast<double>(1 << 30);
  return absl::OkStatus();
}

void Record(GpuBenchReport& r, const std::string& section, const absl::Status& st) {
  if (st.ok()) return;
  r.errors.push_back(absl::StrCat(section, ": ", st.ToString()));
  std::fprintf(stderr, "xkv bench gpu: %s failed: %s\n", section.c_str(), st.ToString().c_str());
}

absl::Status RunCeilings(GpuBenchReport& r) {
  cudaStream_t stream = nullptr;
  CUDA_RETURN_IF_ERROR(cudaStreamCreate(&stream));
  absl::StatusOr<GpuCeilings> c = cuda::MeasureCeilings(stream);
  cudaStreamDestroy(stream);
  RETURN_IF_ERROR(c.status());
  r.ceilings = *c;
  std::fprintf(stderr, "ceilings: copy %.0f GB/s, GEMM %.0f TFLOP/s\n", c->copy_gbs,
               c->gemm_tflops);
  return absl::OkStatus();
}

// decode, prefill and profile on one model.
void RunEngineSections(const GpuBenchOptions& o, GpuBenchReport& r) {
  const bool decode = SectionEnabled(o, "decode"), prefill = SectionEnabled(o, "prefill");
  const bool profile = SectionEnabled(o, "profile");
  if (!decode && !prefill && !profile) return;
  const int64_t max_b = *std::max_element(o.decode_batches.begin(), o.decode_batches.end());
  const int64_t max_seq = std::max(
      // up to 3 kernel variants per batch size (RunDecodeSection), each warm + timed steps
      o.context + 3 * static_cast<int64_t>(o.decode_batches.size()) * (o.decode_steps + 3) + 16,
      o.prefill_tokens);
  const BenchClock::time_point t0 = BenchClock::now();
  absl::StatusOr<std::unique_ptr<CudaLlamaModel>> m =
      MakeRandomLlama3(o, max_seq, static_cast<int>(max_b));
  if (!m.ok()) {
    Record(r, "model", m.status());
    return;
  }
  r.weight_bytes = (*m)->weight_bytes();
  std::fprintf(stderr, "random model: %.2f GB of weights, %lld KV blocks, built in %.0f ms\n",
               r.weight_bytes / 1e9, static_cast<long long>((*m)->num_kv_blocks()), MsSince(t0));
  if (decode) Record(r, "decode", RunDecodeSection(**m, o, r));
  if (prefill) Record(r, "prefill", RunPrefillSection(**m, o, r));
  if (profile) Record(r, "profile", RunProfileSection(**m, o, r));
}

}  // namespace

absl::StatusOr<GpuBenchReport> RunGpuBench(const GpuBenchOptions& o) {
  GpuBenchReport r;
  r.date = TodayUtc();
  RETURN_IF_ERROR(DescribeDevice(o.device, r));
  ASSIGN_OR_RETURN(const ModelConfig c, ShapeByName(o.shape));
  r.model_shape = absl::StrFormat(
      "%s (%d layers, hidden %d, %d/%d heads x %d, FFN %d, vocab %d%s), random bf16 weights",
      c.name, c.n_layers, c.hidden, c.n_heads, c.n_kv_heads, c.head_dim, c.ffn, c.vocab_size,
      c.tied_embeddings ? ", tied head" : "");
  if (SectionEnabled(o, "ceilings")) Record(r, "ceilings", RunCeilings(r));
  RunEngineSections(o, r);
  if (SectionEnabled(o, "concurrency")) {
    Record(r, "concurrency", RunConcurrencySection(o, r));
  }
  if (SectionEnabled(o, "real") && !o.model_path.empty()) {
    Record(r, "real", RunRealModelSection(o, r));
  }
  if (SectionEnabled(o, "batched") && !o.model_path.empty()) {
    Record(r, "batched", RunBatchedDecodeSection(o, r));
  }
  return r;
}

}  // namespace xkv
