// `xkv bench gpu`: floors, options and report formatting (plain C++; the measuring is in
// bench/cuda/).
#include "bench/gpu_bench.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace xkv {
namespace {

std::string MetOrMissed(bool met) { return met ? "**met**" : "**missed**"; }

// Parameters of one layer's four matrices (fused QKV, O, gate + up, down).
double LayerMatrixParams(const ModelConfig& c) {
  const double h = c.hidden, q = static_cast<double>(c.n_heads) * c.head_dim;
  const double kv = static_cast<double>(c.n_kv_heads) * c.head_dim, f = c.ffn;
  return (q + 2 * kv) * h + h * q + 3 * f * h;
}

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (char ch : s) {
    if (ch == '"' || ch == '\\') {
      out += '\\';
      out += ch;
    } else if (static_cast<unsigned char>(ch) < 0x20) {
      absl::StrAppendFormat(&out, "\\u%04x", static_cast<int>(ch));
    } else {
      out += ch;
    }
  }
  return out + "\"";
}

// `"key": value` pairs joined into one JSON object.
std::string JsonObject(const std::vector<std::pair<std::string, std::string>>& fields) {
  std::vector<std::string> parts;
  for (const auto& [k, v] : fields) parts.push_back(absl::StrCat(JsonString(k), ": ", v));
  return absl::StrCat("{", absl::StrJoin(parts, ", "), "}");
}

std::string Num(double v) { return std::isfinite(v) ? absl::StrFormat("%.6g", v) : "null"; }

std::string JsonArray(const std::vector<std::string>& items) {
  return absl::StrCat("[", absl::StrJoin(items, ", "), "]");
}

std::string CeilingsJson(const GpuCeilings& c) {
  return JsonObject({{"copy_gbs", Num(c.copy_gbs)},
                     {"copy_bytes", Num(c.copy_bytes)},
                     {"gemm_n", Num(c.gemm_n)},
                     {"gemm_tflops", Num(c.gemm_tflops)},
                     {"gemm_fp32_out_tflops", Num(c.gemm_fp32_out_tflops)}});
}

std::string DecodeJson(const DecodeRow& d) {
  return JsonObject({{"kernels", JsonString(d.kernels)},
                     {"batch", Num(d.batch)},
                     {"context", Num(d.context)},
                     {"steps", Num(d.steps)},
                     {"step_ms", Num(d.step_ms)},
                     {"mean_ms", Num(d.mean_ms)},
                     {"weight_bytes", Num(d.weight_bytes)},
                     {"kv_bytes", Num(d.kv_bytes)},
                     {"floor_ms", Num(d.floor_ms)}});
}

std::string PrefillJson(const PrefillRow& p) {
  return JsonObject({{"tokens", Num(p.tokens)},
                     {"ms", Num(p.ms)},
                     {"matmul_flops", Num(p.matmul_flops)},
                     {"attention_flops", Num(p.attention_flops)},
                     {"floor_ms", Num(p.floor_ms)}});
}

std::string ProfileJson(const ProfileRow& p) {
  return JsonObject({{"mode", JsonString(p.mode)},
                     {"tokens", Num(p.tokens)},
                     {"prefill_ms", Num(p.prefill_ms)},
                     {"profile_ms", Num(p.profile_ms)},
                     {"solve_ms", Num(p.solve_ms)},
                     {"percent", Num(p.percent)},
                     {"note", JsonString(p.note)}});
}

std::string ConcurrencyJson(const ConcurrencyResult& c) {
  return JsonObject({{"seq_len", Num(c.seq_len)},
                     {"block_bytes", Num(c.block_bytes)},
                     {"pool_blocks", Num(c.pool_blocks)},
                     {"budget_fraction", Num(c.budget_fraction)},
                     {"full_blocks_per_seq", Num(c.full_blocks_per_seq)},
                     {"xkv_blocks_per_seq", Num(c.xkv_blocks_per_seq)},
                     {"kept_tokens", Num(c.kept_tokens)},
                     {"retention", Num(c.retention)},
                     {"full_fit", Num(c.full_fit)},
                     {"xkv_fit", Num(c.xkv_fit)},
                     {"xkv_fit_transient", Num(c.xkv_fit_transient)},
                     {"full_filled", Num(c.full_filled)},
                     {"xkv_filled", Num(c.xkv_filled)},
                     {"fill_note", JsonString(c.fill_note)},
                     {"prefill_ms", Num(c.prefill_ms)},
                     {"observed_prefill_ms", Num(c.observed_prefill_ms)},
                     {"score_ms", Num(c.score_ms)},
                     {"solve_ms", Num(c.solve_ms)},
                     {"select_ms", Num(c.select_ms)},
                     {"compact_ms", Num(c.compact_ms)},
                     {"per_request_ms", Num(c.per_request_ms)}});
}

std::string RealJson(const RealModelResult& m) {
  return JsonObject({{"model", JsonString(m.model)},
                     {"prompt_tokens", Num(m.prompt_tokens)},
                     {"decode_tokens", Num(m.decode_tokens)},
                     {"xkv_tps", Num(m.xkv_tps)},
                     {"xkv_prefill_ms", Num(m.xkv_prefill_ms)},
                     {"hf_tps", Num(m.hf_tps)},
                     {"hf_note", JsonString(m.hf_note)},
                     {"agree", Num(m.agree)}});
}

double Percent(double part, double whole) { return whole > 0 ? 100.0 * part / whole : 0.0; }

std::string FormatCeilings(const GpuCeilings& c) {
  return absl::StrFormat(
      "| ceiling | value | note |\n|---|---|---|\n"
      "| device-to-device copy | %.0f GB/s | %.2f GiB copied; (bytes read + bytes written) / time, "
      "median of 20 |\n"
      "| cuBLAS bf16 GEMM %d^3 | %.0f TFLOP/s | bf16 in and out, fp32 accumulate, random data, "
      "median of 20; with fp32 output (the engine's GEMMs): %.0f TFLOP/s |\n",
      c.copy_gbs, c.copy_bytes / (1 << 30), c.gemm_n, c.gemm_tflops, c.gemm_fp32_out_tflops);
}

std::string FormatDecode(const GpuBenchReport& r) {
  const double gbs = r.ceilings ? r.ceilings->copy_gbs : 0;
  std::string out = absl::StrFormat(
      "Decode steps (Forward: all layers + head + greedy sampling on the device, the layers "
      "replayed from a CUDA graph, host bookkeeping included). Floor = (weights read + K/V read) / "
      "%.0f GB/s, the measured copy rate counted as read + write bytes.\n\n"
      "| batch | kernels | context | step ms (median) | weights GB | K/V GB | floor ms | "
      "%% of floor | tokens/s |\n|---|---|---|---|---|---|---|---|---|\n",
      gbs);
  for (const DecodeRow& d : r.decode) {
    absl::StrAppendFormat(&out, "| %d | %s | %d | %.2f | %.2f | %.2f | %.2f | %.0f%% | %.0f |\n",
                          d.batch, d.kernels, d.context, d.step_ms, d.weight_bytes / 1e9,
                          d.kv_bytes / 1e9, d.floor_ms, Percent(d.floor_ms, d.step_ms),
                          d.batch * 1e3 / d.step_ms);
  }
  for (const DecodeRow& d : r.decode) {
    if (d.batch != 1 || d.kernels != kDefaultDecodeKernels) continue;
    const double p = Percent(d.floor_ms, d.step_ms);
    absl::StrAppendFormat(&out,
                          "\nTarget: batch 1 at least 80%% of the bytes-moved floor: %.0f%%, %s.\n",
                          p, MetOrMissed(p >= 80));
  }
  return out;
}

std::string FormatPrefill(const GpuBenchReport& r) {
  const double gemm = r.ceilings ? r.ceilings->gemm_tflops : 0;
  std::string out = absl::StrFormat(
      "Prefill of one sequence in one Forward step. FLOPs = 2 x layer matrix parameters x T + the "
      "head on the last token only + causal attention (2 matmuls x 2 FLOPs x T(T+1)/2 pairs x "
      "heads x head_dim x layers). Floor = FLOPs / %.0f TFLOP/s (the measured bf16 GEMM rate).\n\n"
      "| tokens | ms (median) | matmul TFLOP | attention TFLOP | TFLOP/s | floor ms | "
      "%% of GEMM rate |\n|---|---|---|---|---|---|---|\n",
      gemm);
  for (const PrefillRow& p : r.prefill) {
    const double tflops = (p.matmul_flops + p.attention_flops) / (p.ms * 1e-3) / 1e12;
    absl::StrAppendFormat(&out, "| %d | %.1f | %.1f | %.1f | %.0f | %.1f | %.0f%% |\n", p.tokens,
                          p.ms, p.matmul_flops / 1e12, p.attention_flops / 1e12, tflops, p.floor_ms,
                          Percent(tflops, gemm));
    absl::StrAppendFormat(&out, "\nTarget: prefill at least 50%% of the GEMM rate: %.0f%%, %s.\n",
                          Percent(tflops, gemm), MetOrMissed(Percent(tflops, gemm) >= 50));
  }
  return out;
}

std::string FormatProfile(const GpuBenchReport& r) {
  std::string out =
      "Profiling + solving cost per profile mode (architecture.md §3.5). profile = the scores-only "
      "mini-prefill's wall time (per_request) or the scoring kernels inside the observed prefill "
      "(one_pass, device time); solve = budgets (profiles + XKV solver) + kept-slot selection, "
      "host wall time (profiles and selection spread over the layers on up to 8 threads, as the "
      "worker runs them).\n\n"
      "| mode | prompt | prefill ms | profile ms | solve ms | (profile + solve) / prefill | note "
      "|\n"
      "|---|---|---|---|---|---|---|\n";
  for (const ProfileRow& p : r.profile) {
    absl::StrAppendFormat(&out, "| %s | %d | %.1f | %.2f | %.2f | %.1f%% | %s |\n", p.mode,
                          p.tokens, p.prefill_ms, p.profile_ms, p.solve_ms, p.percent, p.note);
  }
  double worst = -1;
  for (const ProfileRow& p : r.profile) {
    if (p.mode == "one_pass") worst = std::max(worst, p.percent);
  }
  if (worst >= 0) {
    absl::StrAppendFormat(&out,
                          "\nTarget: one_pass profiling + solving at most 5%% of prefill: worst "
                          "%.1f%%, %s.\n",
                          worst, MetOrMissed(worst <= 5));
  }
  return out;
}

std::string FormatConcurrency(const ConcurrencyResult& c) {
  const double gib = static_cast<double>(1 << 30);
  const double ratio = c.full_fit > 0 ? static_cast<double>(c.xkv_fit) / c.full_fit : 0;
  auto filled = [](int64_t n) { return n < 0 ? std::string("-") : absl::StrCat(n); };
  std::string out = absl::StrFormat(
      "Concurrent %d-token sequences in the shared KV pool (%d blocks of %d tokens, %.1f GiB, "
      "what is left after weights and scratch at the chosen memory fraction). XKV: one real "
      "prefill observed on its last chunk, budgets for %.0f%% of the evictable prefix from the "
      "XKV solver (average retention %.3f), every layer compacted; blocks read back from the "
      "pool.\n\n"
      "| cache | blocks per sequence | GiB per sequence | fit (pool / per sequence) | placed by "
      "filling the pool |\n|---|---|---|---|---|\n",
      c.seq_len, c.pool_blocks, c.block_tokens, c.pool_blocks * c.block_bytes / gib,
      100 * c.budget_fraction, c.retention);
  absl::StrAppendFormat(&out, "| full | %d | %.2f | %d | %s |\n", c.full_blocks_per_seq,
                        c.full_blocks_per_seq * c.block_bytes / gib, c.full_fit,
                        filled(c.full_filled));
  absl::StrAppendFormat(&out,
                        "| XKV %.0f%% | %d | %.2f | %d (%d with one full-size prefill in "
                        "flight) | %s |\n",
                        100 * c.budget_fraction, c.xkv_blocks_per_seq,
                        c.xkv_blocks_per_seq * c.block_bytes / gib, c.xkv_fit, c.xkv_fit_transient,
                        filled(c.xkv_filled));
  absl::StrAppendFormat(&out, "\nXKV / full: %.2fx. Target: at least 3x at a 25%% budget: %s.",
                        ratio, MetOrMissed(ratio >= 3 && c.budget_fraction <= 0.25 + 1e-9));
  if (!c.fill_note.empty()) absl::StrAppend(&out, " Filling: ", c.fill_note);
  absl::StrAppend(&out,
                  "\nRandom weights make attention nearly uniform, so the solver's per-layer "
                  "budgets are close to even here; on a real model the split is uneven but the "
                  "total (and so the count) is the same at the same budget fraction.\n");
  return out;
}

std::string FormatReal(const RealModelResult& r) {
  std::string out = absl::StrFormat(
      "Real model %s, batch 1, %d prompt ids (fixed pseudo-random, identical for both), %d greedy "
      "decode tokens timed after the prompt; median of runs. Both in bf16 on the same GPU.\n\n"
      "| engine | decode tokens/s | note |\n|---|---|---|\n"
      "| xkv (CUDA engine, decode CUDA graphs) | %.0f | prompt prefill %.1f ms |\n",
      r.model, r.prompt_tokens, r.decode_tokens, r.xkv_tps, r.xkv_prefill_ms);
  if (r.hf_tps > 0) {
    absl::StrAppendFormat(
        &out, "| Hugging Face transformers (GGUF loaded by transformers) | %.0f | %s |\n", r.hf_tps,
        r.hf_note);
    absl::StrAppendFormat(&out, "\nxkv / transformers: %.2fx.", r.xkv_tps / r.hf_tps);
    if (r.agree >= 0) {
      absl::StrAppendFormat(&out,
                            " Greedy tokens identical for the first %d of %d (the prompt's next "
                            "token + the decode tokens).",
                            r.agree, r.decode_tokens + 1);
    }
    out += "\n";
  } else {
    absl::StrAppendFormat(&out, "| Hugging Face transformers | - | %s |\n", r.hf_note);
  }
  return out;
}

std::string BatchedJson(const BatchedDecodeRow& b) {
  return JsonObject({{"batch", Num(b.batch)},
                     {"prompt_tokens", Num(b.prompt_tokens)},
                     {"gen_tokens", Num(b.gen_tokens)},
                     {"prefill_ms", Num(b.prefill_ms)},
                     {"decode_ms", Num(b.decode_ms)},
                     {"prefill_tps", Num(b.prefill_tps)},
                     {"decode_tps", Num(b.decode_tps)},
                     {"total_tps", Num(b.total_tps)},
                     {"kernels", JsonString(b.kernels)}});
}

std::string FormatBatched(const GpuBenchReport& r) {
  std::string out = absl::StrFormat(
      "Batched decode of the real model %s (llama-batched-bench's quantities): B sequences of PP "
      "prompt tokens prefilled one after the other (T_PP), then TG decode steps of B tokens each "
      "(T_TG), greedy on the device, the host round trip of each step included; the second of two "
      "runs per B.\n\n"
      "| PP | TG | B | T_PP s | S_PP t/s | T_TG s | S_TG t/s | T s | S t/s | kernels |\n"
      "|---|---|---|---|---|---|---|---|---|---|\n",
      r.batched_model);
  for (const BatchedDecodeRow& b : r.batched) {
    absl::StrAppendFormat(&out, "| %d | %d | %d | %.3f | %.0f | %.3f | %.0f | %.3f | %.0f | %s |\n",
                          b.prompt_tokens, b.gen_tokens, b.batch, b.prefill_ms / 1e3, b.prefill_tps,
                          b.decode_ms / 1e3, b.decode_tps, (b.prefill_ms + b.decode_ms) / 1e3,
                          b.total_tps, b.kernels);
  }
  return out;
}

}  // namespace

void ApplyQuick(GpuBenchOptions& o) {
  o.quick = true;
  o.context = 1024;
  o.decode_batches = {1, 4};
  o.decode_steps = 8;
  o.prefill_tokens = 2048;
  o.step_tokens = 2048;
  o.long_context = 4096;
  o.verify_seconds = 10;
  o.real_decode_tokens = 32;
  o.repeats = 1;
  o.batched_prompt_tokens = 256;
  o.batched_gen_tokens = 16;
  o.batched_batches = {2, 4};
}

bool SectionEnabled(const GpuBenchOptions& o, const std::string& section) {
  return o.sections.empty() ||
         std::find(o.sections.begin(), o.sections.end(), section) != o.sections.end();
}

double DecodeWeightBytes(const ModelConfig& c, int64_t batch) {
  const double h = c.hidden;
  const double matrices = 2.0 * c.n_layers * LayerMatrixParams(c) + 2.0 * c.vocab_size * h;
  const double norms = 4.0 * h * (2.0 * c.n_layers + 1);
  return matrices + norms + 2.0 * h * batch;  // + the embedding rows looked up
}

double DecodeKvBytes(const ModelConfig& c, int64_t batch, int64_t context) {
  return static_cast<double>(batch) * context * c.n_layers * c.KvBytesPerTokenPerLayer(2);
}

double PrefillMatmulFlops(const ModelConfig& c, int64_t tokens) {
  return 2.0 * c.n_layers * LayerMatrixParams(c) * tokens + 2.0 * c.hidden * c.vocab_size;
}

double PrefillAttentionFlops(const ModelConfig& c, int64_t tokens) {
  const double pairs = static_cast<double>(tokens) * (tokens + 1) / 2;
  return 4.0 * pairs * c.n_heads * c.head_dim * c.n_layers;
}

std::string FormatGpuBench(const GpuBenchOptions& o, const GpuBenchReport& r) {
  std::string out = absl::StrFormat("%s, %s (%d SMs, %.1f GiB)%s", r.date, r.device, r.sms,
                                    r.memory_gib, o.quick ? ", --quick sizes" : "");
  if (r.weight_bytes > 0) {
    absl::StrAppendFormat(&out, "; %s, %.2f GB of bf16 weights", r.model_shape,
                          r.weight_bytes / 1e9);
  }
  out += ".\n";
  if (r.ceilings) absl::StrAppend(&out, "\n", FormatCeilings(*r.ceilings));
  if (!r.decode.empty()) absl::StrAppend(&out, "\n", FormatDecode(r));
  if (!r.prefill.empty()) absl::StrAppend(&out, "\n", FormatPrefill(r));
  if (!r.profile.empty()) absl::StrAppend(&out, "\n", FormatProfile(r));
  if (r.concurrency) absl::StrAppend(&out, "\n", FormatConcurrency(*r.concurrency));
  if (r.real) absl::StrAppend(&out, "\n", FormatReal(*r.real));
  if (!r.batched.empty()) absl::StrAppend(&out, "\n", FormatBatched(r));
  for (const std::string& e : r.errors) absl::StrAppend(&out, "\nFAILED: ", e, "\n");
  return out;
}

std::string GpuBenchJson(const GpuBenchReport& r) {
  std::vector<std::pair<std::string, std::string>> top = {
      {"date", JsonString(r.date)},
      {"device", JsonString(r.device)},
      {"sms", Num(r.sms)},
      {"memory_gib", Num(r.memory_gib)},
      {"model_shape", JsonString(r.model_shape)},
      {"weight_bytes", Num(r.weight_bytes)}};
  if (r.ceilings) top.push_back({"ceilings", CeilingsJson(*r.ceilings)});
  std::vector<std::string> rows;
  for (const DecodeRow& d : r.decode) rows.push_back(DecodeJson(d));
  top.push_back({"decode", JsonArray(rows)});
  rows.clear();
  for (const PrefillRow& p : r.prefill) rows.push_back(PrefillJson(p));
  top.push_back({"prefill", JsonArray(rows)});
  rows.clear();
  for (const ProfileRow& p : r.profile) rows.push_back(ProfileJson(p));
  top.push_back({"profile", JsonArray(rows)});
  if (r.concurrency) top.push_back({"concurrency", ConcurrencyJson(*r.concurrency)});
  if (r.real) top.push_back({"real", RealJson(*r.real)});
  rows.clear();
  for (const BatchedDecodeRow& b : r.batched) rows.push_back(BatchedJson(b));
  top.push_back({"batched", JsonArray(rows)});
  rows.clear();
  for (const std::string& e : r.errors) rows.push_back(JsonString(e));
  top.push_back({"errors", JsonArray(rows)});
  return JsonObject(top) + "\n";
}

}  // namespace xkv
