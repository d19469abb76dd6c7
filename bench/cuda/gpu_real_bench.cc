// `xkv bench gpu` real-model section: batch-1 greedy decode tokens/s of the CUDA engine on a GGUF,
// then Hugging Face transformers on the same file, GPU and prompt ids (bench/hf_decode_speed.py).
#include <array>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "base/status_macros.h"
#include "bench/cpu_bench.h"
#include "bench/cuda/gpu_bench_util.h"
#include "bench/cuda/gpu_sections.h"
#include "model/gguf.h"

namespace xkv {
namespace {

struct XkvRun {
  double prefill_ms = 0;
  double decode_tps = 0;
  std::vector<int32_t> tokens;  // greedy: the prompt's next token, then one per decode step
};

// Prompt in one step, then options.real_decode_tokens timed decode steps (batch 1).
absl::StatusOr<XkvRun> DecodeOnce(CudaLlamaModel& m, const GpuBenchOptions& o, uint64_t id,
                                  const std::vector<int32_t>& prompt) {
  XkvRun run;
  int32_t cur = 0;
  BenchClock::time_point t0 = BenchClock::now();
  RETURN_IF_ERROR(PrefillForward(m, id, prompt, o.step_tokens, &cur));
  run.prefill_ms = MsSince(t0);
  run.tokens.push_back(cur);
  std::vector<int32_t> next;
  t0 = BenchClock::now();
  for (int64_t i = 0; i < o.real_decode_tokens; ++i) {
    const CudaTokenStep step{id, {&cur, 1}};
    RETURN_IF_ERROR(m.Forward({&step, 1}, &next));
    cur = next[0];
    run.tokens.push_back(cur);
  }
  run.decode_tps = o.real_decode_tokens / (MsSince(t0) * 1e-3);
  return run;
}

// Runs hf_decode_speed.py; reads "decode_tps X", "tokens a,b,...", "note TEXT" lines.
absl::Status MeasureHf(const GpuBenchOptions& o, const std::vector<int32_t>& prompt,
                       RealModelResult& r, std::vector<int32_t>& hf_tokens) {
  const std::string command =
      absl::StrFormat("'%s' '%s' '%s' %s %d %d", o.hf_python, o.hf_script, o.model_path,
                      absl::StrJoin(prompt, ","), o.real_decode_tokens, o.repeats);
  std::fprintf(stderr, "hf: %s\n", command.c_str());
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return absl::InternalError("could not start " + command);
  std::array<char, 1 << 16> line;
  std::vector<std::string> notes;
  while (std::fgets(line.data(), line.size(), pipe) != nullptr) {
    absl::string_view text = absl::StripTrailingAsciiWhitespace(line.data());
    if (absl::ConsumePrefix(&text, "decode_tps ")) {
      if (!absl::SimpleAtod(text, &r.hf_tps)) r.hf_tps = 0;
    } else if (absl::ConsumePrefix(&text, "tokens ")) {
      for (absl::string_view t : absl::StrSplit(text, ',', absl::SkipEmpty())) {
        int32_t v;
        if (absl::SimpleAtoi(t, &v)) hf_tokens.push_back(v);
      }
    } else if (absl::ConsumePrefix(&text, "note ")) {
      notes.emplace_back(text);
    }
  }
  const int rc = pclose(pipe);
  r.hf_note = absl::StrJoin(notes, "; ");
  if (rc != 0 || r.hf_tps <= 0) {
    r.hf_tps = 0;
    return absl::UnavailableError(
        absl::StrCat("transformers measurement failed (", r.hf_note, "): ", command));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status RunRealModelSection(const GpuBenchOptions& o, GpuBenchReport& report) {
  RealModelResult r;
  r.model = o.model_path;
  r.decode_tokens = o.real_decode_tokens;
  r.prompt_tokens = o.real_prompt_tokens;
  std::vector<int32_t> prompt, xkv_tokens;
  {
    ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> file, GgufFile::Open(o.model_path));
    CudaEngineOptions e;
    e.device = o.device;
    e.max_batch = 1;
    e.max_step_tokens = std::max<int64_t>(o.real_prompt_tokens, 16);
    e.max_seq_len = o.real_prompt_tokens + o.real_decode_tokens + 16;
    e.kv_memory_fraction = 0.05;  // a few GiB: one short sequence
    ASSIGN_OR_RETURN(std::unique_ptr<CudaLlamaModel> m, CudaLlamaModel::Load(*file, e));
    prompt = BenchTokens(o.real_prompt_tokens, m->config().vocab_size);
    std::vector<double> tps, prefill;
    for (int run = 0; run <= o.repeats; ++run) {  // run 0 warms up (captures the graph)
      absl::StatusOr<XkvRun> x = DecodeOnce(*m, o, 10 + run, prompt);
      m->ReleaseSequence(10 + run);
      RETURN_IF_ERROR(x.status());
      if (run == 0) continue;
      tps.push_back(x->decode_tps);
      prefill.push_back(x->prefill_ms);
      xkv_tokens = x->tokens;
    }
    r.xkv_tps = Median(tps);
    r.xkv_prefill_ms = Median(prefill);
    std::fprintf(stderr, "real model: xkv decode %.0f tokens/s\n", r.xkv_tps);
  }  // the engine's memory is released before transformers loads
  absl::Status hf = absl::OkStatus();
  if (o.hf_python.empty()) {
    r.hf_note = "not measured (no --hf-python)";
  } else {
    std::vector<int32_t> hf_tokens;
    hf = MeasureHf(o, prompt, r, hf_tokens);
    if (hf.ok() && !hf_tokens.empty()) {
      r.agree = 0;
      while (r.agree < static_cast<int64_t>(std::min(hf_tokens.size(), xkv_tokens.size())) &&
             hf_tokens[r.agree] == xkv_tokens[r.agree]) {
        ++r.agree;
      }
    }
  }
  report.real = r;
  return hf;
}

}  // namespace xkv
