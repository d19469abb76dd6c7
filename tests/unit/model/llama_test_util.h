// Test helpers: a tiny random Llama built in memory and a plain whole-model reference forward
// (loops in double, no cache) with an optional attention mask.
#ifndef XKV_TESTS_UNIT_MODEL_LLAMA_TEST_UTIL_H_
#define XKV_TESTS_UNIT_MODEL_LLAMA_TEST_UTIL_H_

#include <cmath>
#include <functional>
#include <memory>
#include <random>
#include <vector>

#include "model/llama_weights.h"

namespace xkv::testing {

inline ModelConfig TinyConfig() {
  ModelConfig c;
  c.architecture = "llama";
  c.n_layers = 3;
  c.hidden = 32;
  c.ffn = 40;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.head_dim = 8;
  c.rope_dims = 8;
  c.rope_base = 10000.f;
  c.norm_eps = 1e-5f;
  c.context_length = 512;
  c.vocab_size = 64;
  c.eos_token = 2;
  return c;
}

inline std::shared_ptr<LlamaWeights> RandomWeights(const ModelConfig& c, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  auto fill = [&](std::vector<float>& v, size_t n, float scale, float offset = 0.f) {
    v.resize(n);
    for (float& x : v) x = offset + scale * u(rng);
  };
  auto w = std::make_shared<LlamaWeights>();
  w->config = c;
  w->layer_begin = 0;
  w->layer_end = c.n_layers;
  const size_t h = c.hidden, q = c.n_heads * c.head_dim, kv = c.n_kv_heads * c.head_dim;
  for (int l = 0; l < c.n_layers; ++l) {
    LlamaLayerWeights lw;
    fill(lw.attn_norm, h, 0.2f, 1.f);
    fill(lw.wqkv, (q + 2 * kv) * h, 1.5f / std::sqrt(float(h)));
    fill(lw.wo, h * q, 1.f / std::sqrt(float(q)));
    fill(lw.ffn_norm, h, 0.2f, 1.f);
    fill(lw.w_gate_up, 2 * c.ffn * h, 1.f / std::sqrt(float(h)));
    fill(lw.w_down, h * c.ffn, 1.f / std::sqrt(float(c.ffn)));
    w->layers.push_back(std::move(lw));
  }
  std::vector<float> e;
  fill(e, c.vocab_size * h, 1.f);
  w->embedding = std::make_shared<const std::vector<float>>(std::move(e));
  w->lm_head = w->embedding;  // tied
  fill(w->output_norm, h, 0.2f, 1.f);
  return w;
}

// allowed(layer, kv_head, query_index, key_index) for key_index <= query_index.
using AttentionMask = std::function<bool(int, int, int64_t, int64_t)>;

// Logits fp64 [n, vocab] for every token; positions[i] is token i's RoPE position.
inline std::vector<double> NaiveForward(const LlamaWeights& w, const std::vector<int32_t>& tokens,
                                        const std::vector<int64_t>& positions,
                                        const AttentionMask& mask = nullptr) {
  const ModelConfig& c = w.config;
  const int64_t n = tokens.size(), H = c.hidden, hd = c.head_dim;
  const int64_t qd = c.n_heads * hd, kvd = c.n_kv_heads * hd;
  auto rms = [&](const std::vector<double>& x, const std::vector<float>& g) {
    std::vector<double> y(H);
    double ss = 0;
    for (double v : x) ss += v * v;
    const double s = 1.0 / std::sqrt(ss / H + c.norm_eps);
    for (int64_t i = 0; i < H; ++i) y[i] = x[i] * s * g[i];
    return y;
  };
  auto matvec = [&](const std::vector<float>& m, int64_t row0, int64_t rows, int64_t cols,
                    const std::vector<double>& x) {
    std::vector<double> y(rows, 0.0);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t k = 0; k < cols; ++k) y[r] += double(m[(row0 + r) * cols + k]) * x[k];
    }
    return y;
  };
  auto rope = [&](std::vector<double>& v, int heads, int64_t pos) {
    for (int h = 0; h < heads; ++h) {
      for (int i = 0; i < c.rope_dims / 2; ++i) {
        const double th = pos * std::pow(double(c.rope_base), -2.0 * i / c.rope_dims);
        double& a = v[h * hd + 2 * i];
        double& b = v[h * hd + 2 * i + 1];
        const double a0 = a, b0 = b;
        a = a0 * std::cos(th) - b0 * std::sin(th);
        b = a0 * std::sin(th) + b0 * std::cos(th);
      }
    }
  };
  std::vector<std::vector<double>> x(n, std::vector<double>(H));
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t i = 0; i < H; ++i) x[t][i] = (*w.embedding)[tokens[t] * H + i];
  }
  for (int l = 0; l < c.n_layers; ++l) {
    const LlamaLayerWeights& lw = w.layer(l);
    std::vector<std::vector<double>> q(n), k(n), v(n);
    for (int64_t t = 0; t < n; ++t) {
      const std::vector<double> xn = rms(x[t], lw.attn_norm);
      q[t] = matvec(lw.wqkv, 0, qd, H, xn);
      k[t] = matvec(lw.wqkv, qd, kvd, H, xn);
      v[t] = matvec(lw.wqkv, qd + kvd, kvd, H, xn);
      rope(q[t], c.n_heads, positions[t]);
      rope(k[t], c.n_kv_heads, positions[t]);
    }
    for (int64_t t = 0; t < n; ++t) {
      std::vector<double> attn(qd, 0.0);
      for (int h = 0; h < c.n_heads; ++h) {
        const int g = h / (c.n_heads / c.n_kv_heads);
        std::vector<double> s;
        std::vector<int64_t> keys;
        for (int64_t j = 0; j <= t; ++j) {
          if (mask && !mask(l, g, t, j)) continue;
          double d = 0;
          for (int64_t e = 0; e < hd; ++e) d += q[t][h * hd + e] * k[j][g * hd + e];
          s.push_back(d / std::sqrt(double(hd)));
          keys.push_back(j);
        }
        double mx = -1e300, sum = 0;
        for (double z : s) mx = std::max(mx, z);
        for (double& z : s) sum += (z = std::exp(z - mx));
        for (size_t m = 0; m < keys.size(); ++m) {
          for (int64_t e = 0; e < hd; ++e) attn[h * hd + e] += s[m] / sum * v[keys[m]][g * hd + e];
        }
      }
      const std::vector<double> o = matvec(lw.wo, 0, H, qd, attn);
      for (int64_t i = 0; i < H; ++i) x[t][i] += o[i];
    }
    for (int64_t t = 0; t < n; ++t) {
      const std::vector<double> xn = rms(x[t], lw.ffn_norm);
      const std::vector<double> gate = matvec(lw.w_gate_up, 0, c.ffn, H, xn);
      const std::vector<double> up = matvec(lw.w_gate_up, c.ffn, c.ffn, H, xn);
      std::vector<double> act(c.ffn);
      for (int i = 0; i < c.ffn; ++i) act[i] = gate[i] / (1 + std::exp(-gate[i])) * up[i];
      const std::vector<double> d = matvec(lw.w_down, 0, H, c.ffn, act);
      for (int64_t i = 0; i < H; ++i) x[t][i] += d[i];
    }
  }
  std::vector<double> logits;
  for (int64_t t = 0; t < n; ++t) {
    const std::vector<double> y = matvec(*w.lm_head, 0, c.vocab_size, H, rms(x[t], w.output_norm));
    logits.insert(logits.end(), y.begin(), y.end());
  }
  return logits;
}

}  // namespace xkv::testing

#endif  // XKV_TESTS_UNIT_MODEL_LLAMA_TEST_UTIL_H_
