// Per-sequence fp32 KV cache for a contiguous layer range, each layer sized independently.
// Per layer, K and V are stored as fp32 [n_kv_heads][capacity][head_dim] of post-RoPE keys and
// values; rows [0, length(layer)) are valid. Layers may hold different lengths (XKV compacts each
// layer to its own budget). A slot's order is the token order; its position is not stored — RoPE
// was applied before caching, so kept keys keep their true positions.
#ifndef XKV_MODEL_KV_CACHE_H_
#define XKV_MODEL_KV_CACHE_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"

namespace xkv {

class KvCache {
 public:
  // Layers [layer_begin, layer_end) are addressed by their model layer index.
  KvCache(int layer_begin, int layer_end, int n_kv_heads, int head_dim);

  int layer_begin() const { return layer_begin_; }
  int layer_end() const { return layer_end_; }
  int n_kv_heads() const { return n_kv_heads_; }
  int head_dim() const { return head_dim_; }

  int64_t length(int layer) const { return L(layer).length; }
  int64_t capacity(int layer) const { return L(layer).capacity; }
  // Elements between consecutive KV heads in k()/v(): capacity * head_dim.
  int64_t head_stride(int layer) const { return L(layer).capacity * head_dim_; }
  // fp32 [n_kv_heads][capacity][head_dim]; rows [0, length) valid.
  const float* k(int layer) const { return L(layer).k.data(); }
  const float* v(int layer) const { return L(layer).v.data(); }

  // Grows capacity to at least `capacity` tokens (never shrinks).
  absl::Status Reserve(int layer, int64_t capacity);

  // Appends n tokens. k, v: fp32 [n, n_kv_heads, head_dim], token rows `row_stride` elements apart
  // (>= n_kv_heads * head_dim) — e.g. straight out of a fused QKV row. Grows geometrically (x1.25).
  absl::Status Append(int layer, const float* k, const float* v, int64_t n, int64_t row_stride);

  // Keeps, per KV head h, the slots kept[h] (strictly increasing, < length) and drops the rest;
  // every head keeps the same count. Reallocates to exactly that count, releasing the memory.
  absl::Status Compact(int layer, absl::Span<const std::vector<int32_t>> kept);

  // Drops every token of every layer and releases the memory.
  void Clear();

  // Bytes allocated for K and V of one layer (capacity, not length), and of all layers.
  int64_t BytesHeld(int layer) const;
  int64_t BytesHeld() const;

 private:
  struct Layer {
    std::vector<float> k;  // fp32 [n_kv_heads][capacity][head_dim]
    std::vector<float> v;
    int64_t length = 0;
    int64_t capacity = 0;
  };
  const Layer& L(int layer) const { return layers_[layer - layer_begin_]; }
  Layer& L(int layer) { return layers_[layer - layer_begin_]; }
  absl::Status CheckLayer(int layer) const;
  void Reallocate(Layer& l, int64_t capacity);

  int layer_begin_, layer_end_, n_kv_heads_, head_dim_;
  std::vector<Layer> layers_;
};

}  // namespace xkv

#endif  // XKV_MODEL_KV_CACHE_H_
