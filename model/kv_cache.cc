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
  layers_.resize(layer_end - layer_begin);
}

absl::Status KvCache::CheckLayer(int layer) const {
  if (layer < layer_begin_ || layer >= layer_end_) {
    return absl::InvalidArgumentError(
        absl::StrCat("kv_cache: layer ", layer, " outside [", layer_begin_, ", ", layer_end_, ")"));
  }
  return absl::OkStatus();
}

void KvCache::Reallocate(Layer& l, int64_t capacity) {
  const int64_t hd = head_dim_;
  std::vector<float> k(n_kv_heads_ * capacity * hd), v(k.size());
  const int64_t keep = std::min(l.length, capacity);
  for (int h = 0; h < n_kv_heads_; ++h) {
    if (keep == 0) break;
    std::memcpy(k.data() + h * capacity * hd, l.k.data() + h * l.capacity * hd,
                keep * hd * sizeof(float));
    std::memcpy(v.data() + h * capacity * hd, l.v.data() + h * l.capacity * hd,
                keep * hd * sizeof(float));
  }
  l.k = std::move(k);  // the old buffers are freed here
  l.v = std::move(v);
  l.capacity = capacity;
  l.length = keep;
}

absl::Status KvCache::Reserve(int layer, int64_t capacity) {
  RETURN_IF_ERROR(CheckLayer(layer));
  Layer& l = L(layer);
  if (capacity > l.capacity) Reallocate(l, capacity);
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
  if (l.length + n > l.capacity) {
    Reallocate(l, std::max(l.length + n, l.capacity + l.capacity / 4 + 16));
  }
  for (int64_t t = 0; t < n; ++t) {
    for (int h = 0; h < n_kv_heads_; ++h) {
      const int64_t dst = (h * l.capacity + l.length + t) * hd;
      std::memcpy(l.k.data() + dst, k + t * row_stride + h * hd, hd * sizeof(float));
      std::memcpy(l.v.data() + dst, v + t * row_stride + h * hd, hd * sizeof(float));
    }
  }
  l.length += n;
  return absl::OkStatus();
}

absl::Status KvCache::Compact(int layer, absl::Span<const std::vector<int32_t>> kept) {
  RETURN_IF_ERROR(CheckLayer(layer));
  Layer& l = L(layer);
  if (static_cast<int>(kept.size()) != n_kv_heads_) {
    return absl::InvalidArgumentError(
        absl::StrCat("kv_cache: compact got ", kept.size(), " head lists, want ", n_kv_heads_));
  }
  const int64_t count = kept[0].size();
  for (int h = 0; h < n_kv_heads_; ++h) {
    if (static_cast<int64_t>(kept[h].size()) != count) {
      return absl::InvalidArgumentError("kv_cache: compact heads keep different counts");
    }
    for (int64_t i = 0; i < count; ++i) {
      const int32_t s = kept[h][i];
      if (s < 0 || s >= l.length || (i > 0 && s <= kept[h][i - 1])) {
        return absl::InvalidArgumentError(absl::StrCat("kv_cache: compact slot ", s, " of head ", h,
                                                       " not increasing or outside [0, ", l.length,
                                                       ")"));
      }
    }
  }
  const int64_t hd = head_dim_;
  std::vector<float> k(n_kv_heads_ * count * hd), v(k.size());
  for (int h = 0; h < n_kv_heads_; ++h) {
    for (int64_t i = 0; i < count; ++i) {
      const int64_t src = (h * l.capacity + kept[h][i]) * hd, dst = (h * count + i) * hd;
      std::memcpy(k.data() + dst, l.k.data() + src, hd * sizeof(float));
      std::memcpy(v.data() + dst, l.v.data() + src, hd * sizeof(float));
    }
  }
  l.k = std::move(k);
  l.v = std::move(v);
  l.capacity = count;
  l.length = count;
  return absl::OkStatus();
}

void KvCache::Clear() {
  for (Layer& l : layers_) l = Layer{};
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
