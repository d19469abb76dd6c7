#include "model/kv_cache.h"

#include <algorithm>
#include <cstring>

#include "absl/base/internal/raw_logging.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace xkv {

KvCache::KvCache(int layer_begin, int layer_end, int n_kv_heads, int head_dim)
    : layer_begin_(layer_begin),
      layer_end_(layer_end),
      n_kv_heads_(n_kv_heads),
      head_dim_(head_dim) {
  ABSL_RAW_CHECK(layer_begin >= 0 && layer_end >= layer_begin && n_kv_heads > 0 && head_dim > 0,
                 "kv_cache: bad shape");
  layers_.assign(layer_end - layer_begin, EmptyLayer());
}

KvCache::Layer KvCache::EmptyLayer() const {
  Layer l;
  l.length.assign(n_kv_heads_, 0);
  l.capacity.assign(n_kv_heads_, 0);
  l.offset.assign(n_kv_heads_, 0);
  return l;
}

absl::Status KvCache::CheckLayer(int layer) const {
  if (layer < layer_begin_ || layer >= layer_end_) {
    return absl::InvalidArgumentError(
        absl::StrCat("kv_cache: layer ", layer, " outside [", layer_begin_, ", ", layer_end_, ")"));
  }
  return absl::OkStatus();
}

int64_t KvCache::head_rows(int layer) const {
  int64_t rows = 0;
  for (int64_t n : L(layer).length) rows += n;
  return rows;
}

void KvCache::Reallocate(Layer& l, const std::vector<int64_t>& capacity) {
  const int64_t hd = head_dim_;
  std::vector<int64_t> offset(n_kv_heads_, 0);
  int64_t rows = 0;
  for (int h = 0; h < n_kv_heads_; ++h) offset[h] = rows, rows += capacity[h];
  std::vector<float> k(rows * hd), v(k.size());
  for (int h = 0; h < n_kv_heads_; ++h) {
    const int64_t keep = l.length[h];
    if (keep == 0) continue;
    std::memcpy(k.data() + offset[h] * hd, l.k.data() + l.offset[h] * hd,
                keep * hd * sizeof(float));
    std::memcpy(v.data() + offset[h] * hd, l.v.data() + l.offset[h] * hd,
                keep * hd * sizeof(float));
  }
  l.k = std::move(k);  // the old buffers are freed here
  l.v = std::move(v);
  l.capacity = capacity;
  l.offset = std::move(offset);
  l.uniform =
      std::all_of(l.length.begin(), l.length.end(), [&](int64_t n) { return n == l.length[0]; }) &&
      std::all_of(l.capacity.begin(), l.capacity.end(),
                  [&](int64_t c) { return c == l.capacity[0]; });
}

absl::Status KvCache::Reserve(int layer, int64_t capacity) {
  RETURN_IF_ERROR(CheckLayer(layer));
  Layer& l = L(layer);
  if (capacity > *std::min_element(l.capacity.begin(), l.capacity.end())) {
    std::vector<int64_t> caps = l.capacity;
    for (int64_t& c : caps) c = std::max(c, capacity);
    Reallocate(l, caps);
  }
  return absl::OkStatus();
}

absl::Status KvCache::Append(int layer, const float* k, const float* v, int64_t n,
                             int64_t row_stride) {
  RETURN_IF_ERROR(CheckLayer(layer));
  const int64_t hd = head_dim_;
  if (n < 0 || row_stride < n_kv_heads_ * hd || (n > 0 && (k == nullptr || v == nullptr))) {
    return absl::InvalidArgumentError(
        absl::StrCat("kv_cache: bad append n=", n, " row_stride=", row_stride));
  }
  Layer& l = L(layer);
  bool full = false;
  for (int h = 0; h < n_kv_heads_; ++h) full = full || l.length[h] + n > l.capacity[h];
  if (full) {
    // Every head grows by the same room, so a uniform layer stays uniform.
    const int64_t cap = *std::max_element(l.capacity.begin(), l.capacity.end());
    const int64_t room = std::max(n, cap / 4 + 16);
    std::vector<int64_t> caps(n_kv_heads_);
    for (int h = 0; h < n_kv_heads_; ++h) {
      caps[h] = l.uniform ? std::max(l.length[h] + n, cap + cap / 4 + 16) : l.length[h] + room;
    }
    Reallocate(l, caps);
  }
  for (int64_t t = 0; t < n; ++t) {
    for (int h = 0; h < n_kv_heads_; ++h) {
      const int64_t dst = (l.offset[h] + l.length[h] + t) * hd;
      std::memcpy(l.k.data() + dst, k + t * row_stride + h * hd, hd * sizeof(float));
      std::memcpy(l.v.data() + dst, v + t * row_stride + h * hd, hd * sizeof(float));
    }
  }
  for (int64_t& len : l.length) len += n;
  l.max_length += n;
  return absl::OkStatus();
}

absl::Status KvCache::Compact(int layer, absl::Span<const std::vector<int32_t>> kept) {
  RETURN_IF_ERROR(CheckLayer(layer));
  Layer& l = L(layer);
  if (static_cast<int>(kept.size()) != n_kv_heads_) {
    return absl::InvalidArgumentError(
        absl::StrCat("kv_cache: compact got ", kept.size(), " head lists, want ", n_kv_heads_));
  }
  for (int h = 0; h < n_kv_heads_; ++h) {
    for (size_t i = 0; i < kept[h].size(); ++i) {
      const int32_t s = kept[h][i];
      if (s < 0 || s >= l.length[h] || (i > 0 && s <= kept[h][i - 1])) {
        return absl::InvalidArgumentError(absl::StrCat("kv_cache: compact slot ", s, " of head ", h,
                                                       " not increasing or outside [0, ",
                                                       l.length[h], ")"));
      }
    }
  }
  const int64_t hd = head_dim_;
  Layer out = EmptyLayer();
  int64_t rows = 0;
  for (int h = 0; h < n_kv_heads_; ++h) {
    out.offset[h] = rows;
    out.length[h] = out.capacity[h] = static_cast<int64_t>(kept[h].size());
    out.max_length = std::max(out.max_length, out.length[h]);
    out.uniform = out.uniform && out.length[h] == out.length[0];
    rows += out.length[h];
  }
  out.k.resize(rows * hd);
  out.v.resize(out.k.size());
  for (int h = 0; h < n_kv_heads_; ++h) {
    for (size_t i = 0; i < kept[h].size(); ++i) {
      const int64_t src = (l.offset[h] + kept[h][i]) * hd, dst = (out.offset[h] + i) * hd;
      std::memcpy(out.k.data() + dst, l.k.data() + src, hd * sizeof(float));
      std::memcpy(out.v.data() + dst, l.v.data() + src, hd * sizeof(float));
    }
  }
  l = std::move(out);  // the old buffers are freed here
  return absl::OkStatus();
}

absl::Status KvCache::DropNewest(int layer, int64_t n) {
  RETURN_IF_ERROR(CheckLayer(layer));
  Layer& l = L(layer);
  for (int h = 0; h < n_kv_heads_; ++h) {
    if (n < 0 || l.length[h] < n) {
      return absl::InvalidArgumentError(
          absl::StrCat("kv_cache: drop ", n, " slots of head ", h, " holding ", l.length[h]));
    }
  }
  for (int64_t& len : l.length) len -= n;
  l.max_length -= n;
  return absl::OkStatus();
}

void KvCache::Clear() {
  for (Layer& l : layers_) l = EmptyLayer();
}

int64_t KvCache::BytesHeld(int layer) const {
  if (!CheckLayer(layer).ok()) return 0;
  const Layer& l = L(layer);
  return static_cast<int64_t>(sizeof(float)) * (l.k.capacity() + l.v.capacity());
}

int64_t KvCache::BytesHeld() const {
  int64_t total = 0;
  for (int layer = layer_begin_; layer < layer_end_; ++layer) total += BytesHeld(layer);
  return total;
}

}  // namespace xkv
