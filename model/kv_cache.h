// Per-sequence fp32 KV cache for a contiguous layer range, each layer sized independently.
// Per layer, K and V are stored as fp32 post-RoPE keys and values, head after head: KV head h has
// its own length and capacity (rows [0, head_length(layer, h)) valid). Layers may hold different
// lengths (XKV compacts each layer to its own budget), and with per-(layer, head) budgets the
// heads of one layer too: Compact with different counts per head keeps exactly those rows and
// frees the rest, so the layer's bytes are sum_h capacity_h * head_dim * 2 * 4.
// A layer is `uniform` when every head holds the same rows in the same capacity; it is then laid
// out [n_kv_heads][capacity][head_dim] (k(), head_stride()), which the attention kernels read in
// one call. A slot's order is the token order; its position is not stored — RoPE was applied
// before caching, so kept keys keep their true positions.
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

  // The layer's slots: the largest head length (every head's length when uniform).
  int64_t length(int layer) const { return L(layer).max_length; }
  int64_t head_length(int layer, int head) const { return L(layer).length[head]; }
  // Every head holds the same count in the same capacity: the [heads][capacity][dim] layout.
  bool uniform(int layer) const { return L(layer).uniform; }
  // Uniform layers only: head 0's capacity, and the elements between consecutive KV heads in
  // k()/v() (capacity * head_dim).
  int64_t capacity(int layer) const { return L(layer).capacity[0]; }
  int64_t head_stride(int layer) const { return L(layer).capacity[0] * head_dim_; }
  // fp32 [n_kv_heads][capacity][head_dim] when uniform; rows [0, length) valid.
  const float* k(int layer) const { return L(layer).k.data(); }
  const float* v(int layer) const { return L(layer).v.data(); }
  // fp32 [head_length][head_dim] of one KV head (any layer).
  const float* k_head(int layer, int head) const {
    return L(layer).k.data() + L(layer).offset[head] * head_dim_;
  }
  const float* v_head(int layer, int head) const {
    return L(layer).v.data() + L(layer).offset[head] * head_dim_;
  }
  // Rows held summed over the layer's heads (n_kv_heads * length when uniform).
  int64_t head_rows(int layer) const;

  // Grows every head's capacity to at least `capacity` tokens (never shrinks).
  absl::Status Reserve(int layer, int64_t capacity);

  // Appends n tokens after each head's own rows. k, v: fp32 [n, n_kv_heads, head_dim], token rows
  // `row_stride` elements apart (>= n_kv_heads * head_dim) — e.g. straight out of a fused QKV
  // row. Grows geometrically (x1.25 of the largest head).
  absl::Status Append(int layer, const float* k, const float* v, int64_t n, int64_t row_stride);

  // Keeps, per KV head h, the slots kept[h] (strictly increasing, < head_length(h)) and drops the
  // rest; heads may keep different counts. Reallocates every head to exactly its count, releasing
  // the memory (the layer is uniform again when the counts are equal).
  absl::Status Compact(int layer, absl::Span<const std::vector<int32_t>> kept);

  // Drops the newest n slots of every head of the layer (the memory stays for the next Append):
  // INVALID_ARGUMENT when a head holds fewer, nothing changes.
  absl::Status DropNewest(int layer, int64_t n);

  // Drops every token of every layer and releases the memory.
  void Clear();

  // Bytes allocated for K and V of one layer (capacity, not length), and of all layers.
  int64_t BytesHeld(int layer) const;
  int64_t BytesHeld() const;

 private:
  struct Layer {
    std::vector<float> k;  // fp32, head h's rows at offset[h] * head_dim
    std::vector<float> v;
    std::vector<int64_t> length, capacity, offset;  // [n_kv_heads], in rows
    int64_t max_length = 0;
    bool uniform = true;
  };
  const Layer& L(int layer) const { return layers_[layer - layer_begin_]; }
  Layer& L(int layer) { return layers_[layer - layer_begin_]; }
  absl::Status CheckLayer(int layer) const;
  Layer EmptyLayer() const;
  // Moves every head's rows into a buffer of the given per-head capacities (>= their lengths).
  void Reallocate(Layer& l, const std::vector<int64_t>& capacity);

  int layer_begin_, layer_end_, n_kv_heads_, head_dim_;
  std::vector<Layer> layers_;
};

}  // namespace xkv

#endif  // XKV_MODEL_KV_CACHE_H_
